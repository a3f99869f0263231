"""Would test-time augmentation lift the <= 10K recipe? Evaluates saved checkpoints, no training.

Averaging a model's softmax over shifted or flipped copies of each image (airbench's multi-crop
test-time augmentation) costs no training FLOPs, only k times the inference. This reloads the
weights that matrix cells saved (`checkpoint.pt`, the recipe's network after surgery) and measures
validation and test accuracy with each view set; validation decides, as for every other change of
docs/results.md §4:

    python benchmarks/tta_check.py \\
        results/matrices/fashion_mnist_10k_round22/cells/ema_100ba__s{0,1,2}/ema_100ba__s{0,1,2} \\
        --out benchmarks/results/tta_check-2026-12-01.json

Shifts move the image by one pixel and repeat the border row or column (Fashion-MNIST's border is
background).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import load_run  # noqa: E402

View = tuple[bool, int, int]  # (mirror left-right, shift right, shift down)
VIEWS: dict[str, list[View]] = {
    "none": [(False, 0, 0)],
    "flip": [(False, 0, 0), (True, 0, 0)],
    "shift_x": [(False, 0, 0), (False, 1, 0), (False, -1, 0)],
    "shift_4": [(False, 0, 0), (False, 1, 0), (False, -1, 0), (False, 0, 1), (False, 0, -1)],
    "shift_8": [(False, a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)],
}


def view(x: torch.Tensor, v: View) -> torch.Tensor:
    flip, dx, dy = v
    if flip:
        x = x.flip(3)
    if dx or dy:
        h, w = x.shape[2:]
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")[:, :, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
    return x


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable, views: list[View]) -> float:
    correct = total = 0
    for x, y in loader:
        probs = sum(model(view(x, v)).softmax(1) for v in views)
        correct += int((probs.argmax(1) == y).sum())
        total += len(y)
    return round(100.0 * correct / total, 3)


def check(cell: Path) -> dict[str, Any]:
    recipe, data, net = load_run(cell)
    return {"cell": str(cell.relative_to(REPO) if cell.is_relative_to(REPO) else cell),
            "seed": recipe.seed,
            "views": {name: {"val": accuracy(net, data.val, vs), "test": accuracy(net, data.test, vs)}
                      for name, vs in VIEWS.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cells", type=Path, nargs="+", help="run directories holding recipe.yaml and checkpoint.pt")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = []
    for cell in args.cells:
        rows.append(check(cell.resolve()))
        print(json.dumps(rows[-1]), flush=True)
    mean = {name: {split: round(sum(r["views"][name][split] for r in rows) / len(rows), 3)
                   for split in ("val", "test")} for name in VIEWS}
    for name, m in mean.items():
        print(f"{name:8s} views={len(VIEWS[name])}  val {m['val']:.2f}  test {m['test']:.2f}")
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python " + " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
            "machine": platform.platform(), "torch": torch.__version__,
            "views": {k: [list(v) for v in vs] for k, vs in VIEWS.items()},
            "cells": rows, "mean": mean, "seconds": round(time.time() - t0, 1)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
