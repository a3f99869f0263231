"""Training-set accuracy of finished runs' final weights, beside their validation and test
accuracy: a model whose training accuracy is no higher than its held-out accuracy is limited by
its capacity and its steps, not by over-fitting, so regularisers and augmentations cannot help it
(docs/results.md §5, "Six seeds against the hand loop").

Reads each run directory's `recipe.yaml` and `checkpoint.pt` (the recipe's network after its
algorithms' surgery), rebuilds the data
split of the run's seed and evaluates the training split in eval mode; writes one JSON file:

    python benchmarks/fit_check.py results/matrices/fashion_mnist_baseline_seeds/cells/*/*/ \\
        --out benchmarks/results/fit_check-2026-12-01.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load_run, machine  # noqa: E402
from hand_loop import accuracy  # noqa: E402

from effrecipes.rundir import read_metrics  # noqa: E402


def fit_of(run_dir: Path) -> dict[str, Any]:
    """Train / validation / test accuracy of one run's saved weights; the test accuracy must equal
    the run's own (checked), so the weights and the data are the run's."""
    recipe, data, model = load_run(run_dir)
    model = model.to(memory_format=torch.channels_last)
    row = {"run": str(run_dir), "flops_cap": recipe.budget.flops, "seed": recipe.seed,
           "train_accuracy": accuracy(model, data.train),
           "val_accuracy": accuracy(model, data.val) if data.val is not None else None,
           "test_accuracy": accuracy(model, data.test)}
    metrics = read_metrics(run_dir)
    if metrics is not None and abs(row["test_accuracy"] - metrics.test_accuracy) > 0.011:
        raise SystemExit(f"{run_dir}: test accuracy {row['test_accuracy']:.2f} is not the run's "
                         f"{metrics.test_accuracy:.2f}: not the run's weights or data")
    return row


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="+", help="run directories (recipe.yaml + checkpoint.pt)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = a.out or RESULTS / f"fit_check-{datetime.date.today().isoformat()}.json"
    doc = {"command": "python benchmarks/fit_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": machine(), "runs": []}
    for run in a.runs:
        row = fit_of(run)
        doc["runs"].append(row)
        print(f"{run}: train {row['train_accuracy']:.2f} val {row['val_accuracy'] or 0:.2f} "
              f"test {row['test_accuracy']:.2f}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
