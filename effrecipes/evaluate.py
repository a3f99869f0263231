"""Test-set accuracy, per-class scores, CPU and device latency and model size of a trained model."""
from __future__ import annotations

import io
import statistics
import time
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn
from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall

AUTOCAST_DTYPES = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_classes: int, per_class: bool = False,
             device: "torch.device | str | None" = None) -> dict[str, Any]:
    """Accuracy (fp32) of `model` on `loader`'s batches, on `device` (default: where the model's
    parameters are). Batches already there (the in-memory loader on the training device) are
    used as they are; others are copied with `non_blocking=True`. The counts stay on the device
    until the end: one synchronisation for the whole set."""
    model.eval()
    dev = torch.device(device) if device is not None else _model_device(model)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    total = 0
    preds, targets = [], []
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        p = model(x).argmax(1)
        correct += (p == y).sum()
        total += int(y.shape[0])
        if per_class:
            preds.append(p)
            targets.append(y)
    out: dict[str, Any] = {"accuracy": 100.0 * int(correct) / max(total, 1), "samples": total}
    if per_class and preds:
        p, t = torch.cat(preds).cpu(), torch.cat(targets).cpu()
        scores = {}
        for name, cls in (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                          ("f1", MulticlassF1Score)):
            scores[name] = cls(num_classes=num_classes, average=None)(p, t).tolist()
        out["per_class"] = [{"class": c, **{k: v[c] for k, v in scores.items()},
                             "support": int((t == c).sum())} for c in range(num_classes)]
    return out


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def measure_latency(model: nn.Module, loader: Iterable, images: int, warmup: int = 10) -> float | None:
    """Median CPU milliseconds to classify one image (batch of 1), over `images` test images.

    `model` must be on the CPU (when training on a GPU, pass a CPU copy); images from a loader on
    another device are copied to the CPU before the timing."""
    if images <= 0:
        return None
    model.eval()
    singles: list[torch.Tensor] = []
    for x, _ in loader:
        singles.extend(x.cpu().split(1))
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


@torch.no_grad()
def measure_device_latency(model: nn.Module, loader: Iterable, batch_sizes: Sequence[int], *,
                           precision: str = "fp32", iters: int = 50,
                           warmup: int = 10) -> dict[str, Optional[float]]:
    """Median milliseconds per forward pass of `model` (eval mode, on its device, autocast in the
    run's `precision`) for each batch size, on the first test images; every pass is timed
    between `torch.cuda.synchronize()` calls. Returns {"batch_<b>_ms": ms}; batch sizes larger
    than the test set are skipped (None)."""
    model.eval()
    dev = _model_device(model)
    need = max(batch_sizes)
    xs: list[torch.Tensor] = []
    have = 0
    for x, _ in loader:
        xs.append(x)
        have += int(x.shape[0])
        if have >= need:
            break
    pool = torch.cat(xs).to(dev) if xs else None
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dtype = AUTOCAST_DTYPES.get(precision)
    out: dict[str, Optional[float]] = {}
    for b in batch_sizes:
        if pool is None or pool.shape[0] < b:
            out[f"batch_{b}_ms"] = None
            continue
        x = pool[:b]
        times = []
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            for i in range(warmup + iters):
                sync()
                t0 = time.perf_counter()
                model(x)
                sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        out[f"batch_{b}_ms"] = 1000.0 * statistics.median(times)
    return out


def model_size_bytes(model: nn.Module) -> int:
    """Size of the serialized state_dict (what a deployment would ship)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes
