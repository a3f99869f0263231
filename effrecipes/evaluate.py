"""Test-set accuracy, per-class scores, CPU and device latency and model size of a trained model."""
from __future__ import annotations

import io
import statistics
import time
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision,
                                         MulticlassRecall, MulticlassStatScores)

from effrecipes.data.shards import PAD_LABEL
from effrecipes.ranks import sum_tensor_over_ranks

AUTOCAST_DTYPES = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_classes: int, per_class: bool = False,
             device: "torch.device | str | None" = None) -> dict[str, Any]:
    """Accuracy (fp32) of `model` on `loader`'s batches, on `device` (default: where the model's
    parameters are). Batches already there (the in-memory loader on the training device) are
    used as they are; others are copied with `non_blocking=True`. The counts (and the per-class
    statistics) stay on the device until the end: one synchronisation for the whole set.

    Under data parallelism each rank's loader holds its share of the set (`effrecipes.data.shards`):
    the counts and per-class scores are summed over the ranks, and padding is ignored, so every
    rank returns the whole set's figures."""
    model.eval()
    dev = torch.device(device) if device is not None else _model_device(model)
    counts = torch.zeros(2, dtype=torch.int64, device=dev)  # correct, evaluated
    scores = _per_class_metrics(num_classes).to(dev) if per_class else None
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        p = model(x).argmax(1)
        real = y != PAD_LABEL
        counts[0] += (real & (p == y)).sum()
        counts[1] += real.sum()
        if scores is not None:
            scores.update(p, y)
    correct, total = (int(v) for v in sum_tensor_over_ranks(counts))
    out: dict[str, Any] = {"accuracy": 100.0 * correct / max(total, 1), "samples": total}
    if scores is not None and total:
        s = {k: v.cpu() for k, v in scores.compute().items()}  # torchmetrics sums over ranks
        out["per_class"] = [{"class": c, **{k: float(s[k][c]) for k in ("precision", "recall", "f1")},
                             "support": int(s["stats"][c, -1])} for c in range(num_classes)]
    return out


def _per_class_metrics(num_classes: int) -> MetricCollection:
    """Per-class precision, recall, F1 and support, updated on the device batch by batch.
    `validate_args=False`: the inputs are argmax predictions and the set's own labels, and the
    argument check (`torch.unique`) would wait for the device at every batch."""
    common = dict(num_classes=num_classes, average=None, ignore_index=PAD_LABEL, validate_args=False)
    return MetricCollection({"precision": MulticlassPrecision(**common),
                             "recall": MulticlassRecall(**common), "f1": MulticlassF1Score(**common),
                             "stats": MulticlassStatScores(**common)})  # tp, fp, tn, fn, support


class SampleMeanCrossEntropy(Metric):
    """Validation cross entropy averaged over images, padding ignored. Composer's `CrossEntropy`
    averages batch means (a short last batch weighs as much as a full one, and a batch holding
    only a rank's padding would be NaN)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum_loss", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self.sum_loss += F.cross_entropy(preds.float(), targets, ignore_index=PAD_LABEL, reduction="sum")
        self.count += (targets != PAD_LABEL).sum()

    def compute(self) -> torch.Tensor:
        return self.sum_loss / self.count.clamp_min(1)


def validation_metrics(num_classes: int) -> MetricCollection:
    """The Trainer's validation metrics: Composer's pair under Composer's names (W&B panels and
    `callbacks._val_accuracy` read them), both ignoring a rank's padding."""
    return MetricCollection({
        "CrossEntropy": SampleMeanCrossEntropy(),
        "MulticlassAccuracy": MulticlassAccuracy(num_classes=num_classes, average="micro",
                                                 ignore_index=PAD_LABEL)})


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def measure_latency(model: nn.Module, loader: Iterable, images: int, warmup: int = 10) -> float | None:
    """Median CPU milliseconds to classify one image (batch of 1), over `images` test images
    (cycled when the loader has fewer: a data-parallel rank holds a share of the test set, and
    a forward pass takes as long whatever its pixels).

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
    if not singles:
        return None
    times = []
    for i in range(images + warmup):
        x = singles[i % len(singles)]
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
    between `torch.cuda.synchronize()` calls. Returns {"batch_<b>_ms": ms}; a batch larger than
    the images the loader holds (a data-parallel rank's share, a small test set) repeats them."""
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
        if pool is None:
            out[f"batch_{b}_ms"] = None
            continue
        x = pool[:b] if pool.shape[0] >= b else pool.repeat(-(-b // pool.shape[0]), 1, 1, 1)[:b]
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
