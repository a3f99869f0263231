"""Test-set accuracy, per-class scores, CPU latency and model size of a trained model."""
from __future__ import annotations

import io
import time
from typing import Any, Iterable

import torch
from torch import nn
from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_classes: int, per_class: bool = False) -> dict[str, Any]:
    model.eval()
    correct = total = 0
    preds, targets = [], []
    for x, y in loader:
        p = model(x).argmax(1)
        correct += int((p == y).sum())
        total += int(y.numel())
        if per_class:
            preds.append(p)
            targets.append(y)
    out: dict[str, Any] = {"accuracy": 100.0 * correct / max(total, 1), "samples": total}
    if per_class and preds:
        p, t = torch.cat(preds), torch.cat(targets)
        scores = {}
        for name, cls in (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                          ("f1", MulticlassF1Score)):
            scores[name] = cls(num_classes=num_classes, average=None)(p, t).tolist()
        out["per_class"] = [{"class": c, **{k: v[c] for k, v in scores.items()},
                             "support": int((t == c).sum())} for c in range(num_classes)]
    return out


@torch.no_grad()
def measure_latency(model: nn.Module, loader: Iterable, images: int, warmup: int = 10) -> float | None:
    """Median CPU milliseconds to classify one image (batch of 1), over `images` test images."""
    if images <= 0:
        return None
    model.eval()
    singles: list[torch.Tensor] = []
    for x, _ in loader:
        singles.extend(x.split(1))
        if len(singles) >= images + warmup:
            break
    times = []
    for i, x in enumerate(singles[: images + warmup]):
        t0 = time.perf_counter()
        model(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if not times:
        return None
    times.sort()
    return 1000.0 * times[len(times) // 2]


def model_size_bytes(model: nn.Module) -> int:
    """Size of the serialized state_dict (what a deployment would ship)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes
