"""Are the seeded validation images nearer to the training images than the test images are?

The <= 10K search (docs/results.md §4) selects on a seeded 10% of Fashion-MNIST's training set and
reports the official test set. If validation images had more near-duplicates among the training
images than test images do, validation would reward settings that memorise more, and selection
would disagree with test for that reason. This measures, for each recipe seed's split, the L2
distance (pixels scaled to [0, 1]) from every validation image, and from every test image, to its
nearest training image:

    python benchmarks/val_test_distance.py --seeds 0 1 2 \\
        --out benchmarks/results/val_test_distance-2026-12-01.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from effrecipes.data import load_raw  # noqa: E402
from effrecipes.data.split import split_indices  # noqa: E402
from effrecipes.recipe import load_recipe  # noqa: E402

THRESHOLDS = (0.5, 1.0, 2.0, 3.0)


def nearest_distance(queries: torch.Tensor, base: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """L2 distance from each row of `queries` to its nearest row of `base` (chunked matmuls)."""
    base_sq = (base * base).sum(1)
    out = []
    for i in range(0, len(queries), chunk):
        q = queries[i:i + chunk]
        d2 = (q * q).sum(1, keepdim=True) + base_sq[None] - 2 * q @ base.T
        out.append(d2.clamp_min(0).min(1).values.sqrt())
    return torch.cat(out)


def summary(d: torch.Tensor) -> dict[str, Any]:
    return {"median": round(float(d.median()), 3),
            "fraction_within": {str(t): round(float((d < t).float().mean()), 4) for t in THRESHOLDS}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "fashion_mnist_10k_learned_pool_silu_ema.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe)
    raw = load_raw(recipe.data)
    train = torch.as_tensor(raw.train_x).reshape(len(raw.train_x), -1).float() / 255
    test = torch.as_tensor(raw.test_x).reshape(len(raw.test_x), -1).float() / 255
    rows = []
    for seed in args.seeds:
        train_idx, val_idx = split_indices(len(train), recipe.data.val_fraction, seed)
        base = train[torch.as_tensor(train_idx)]
        row = {"seed": seed, "train_images": len(train_idx),
               "validation": summary(nearest_distance(train[torch.as_tensor(val_idx)], base)),
               "test": summary(nearest_distance(test, base))}
        rows.append(row)
        v, t = row["validation"], row["test"]
        print(f"seed {seed}: median nearest-training distance val {v['median']:.2f} test {t['median']:.2f}; "
              + " ".join(f"<{k}: val {100 * v['fraction_within'][k]:.1f}% test {100 * t['fraction_within'][k]:.1f}%"
                         for k in v["fraction_within"]))
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "recipe": str(args.recipe.resolve().relative_to(REPO)),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "seeds": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
