"""The plain hand-written training loop that a tuned effrecipes baseline must beat (issue #17).

Same data (the recipe's split, normalisation and batch order: `effrecipes.data.build_data`), same
model (the recipe's registry model, channels_last), same FLOP cap turned into a step count with
the same counter the budget uses (`effrecipes.budget.train_step_flops`); everything else is a
plain PyTorch loop: SGD with momentum, torch's `OneCycleLR` over exactly that many steps (it sets
the momentum itself, 0.95 -> 0.85 -> 0.95, as in effrecipes' one_cycle), cross entropy, no
augmentation, no Composer. It reports best-validation and final test accuracy.

Results are appended run by run to one JSON file (under a lock), so an interrupted sweep resumes
and sweeps over different seeds can run side by side:

    python benchmarks/hand_loop.py --caps 3e11 1e12 3e12 --seeds 0 1 2 --lrs 0.1 0.2
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, loadavg, machine  # noqa: E402

from effrecipes.budget import train_step_flops  # noqa: E402
from effrecipes.data import build_data  # noqa: E402
from effrecipes.models import build_model  # noqa: E402
from effrecipes.recipe import load_recipe  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist_baseline.yaml"


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: Any) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        out = model(x.contiguous(memory_format=torch.channels_last))
        right += int((out.argmax(1) == y).sum())
        total += len(y)
    model.train()
    return 100.0 * right / total


def train_steps(model: torch.nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                train: Any, opt: torch.optim.Optimizer, sched: Any, steps: int,
                after_epoch: Callable[[], Any]) -> torch.Tensor:
    """Exactly `steps` optimizer steps over the loader's batches, channels_last, `after_epoch`
    once per pass (and after the last, partial one, as the recipe's evaluation does); returns the
    last loss."""
    done = 0
    model.train()
    while done < steps:
        for x, y in train:
            loss = loss_fn(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
        after_epoch()
    return loss


# SGD's momentum before OneCycleLR takes it over (cycle_momentum, torch's default): no effect on training
MOMENTUM = 0.9


def train(recipe_path: Path, cap: float, seed: int, lr: float, nesterov: bool,
          weight_decay: float, pct_start: float) -> dict[str, Any]:
    """One run: seed, build data and model, train exactly floor(cap / step FLOPs) steps."""
    recipe = load_recipe(recipe_path, [f"seed={seed}"])
    torch.manual_seed(seed)
    data = build_data(recipe.data, seed)
    model = build_model(recipe.model.name, data.in_channels, data.num_classes, data.image_size,
                        **recipe.model.kwargs).to(memory_format=torch.channels_last)
    batch = next(iter(data.train))
    step_flops = train_step_flops(model, F.cross_entropy, batch)
    steps = int(cap // step_flops)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, nesterov=nesterov,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    vals: list[float] = []
    t0 = time.perf_counter()
    loss = train_steps(model, F.cross_entropy, data.train, opt, sched, steps,
                       lambda: vals.append(accuracy(model, data.val)) if data.val is not None else None)
    best_val = max(vals, default=0.0)
    wall = time.perf_counter() - t0
    return {"cap": cap, "seed": seed, "lr": lr, "momentum": "one-cycle 0.95-0.85-0.95", "nesterov": nesterov,
            "weight_decay": weight_decay, "pct_start": pct_start, "batch_size": len(batch[1]),
            "step_flops": step_flops, "steps": steps, "flops_used": steps * step_flops,
            "epochs": steps / len(data.train), "best_val_accuracy": best_val,
            "test_accuracy": accuracy(model, data.test), "final_loss": float(loss),
            "wall_s": round(wall, 1), "loadavg_end": loadavg()}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, default=RECIPE, help="data and model come from here")
    p.add_argument("--caps", type=float, nargs="+", default=[1e12])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.1], help="one-cycle peak lr")
    p.add_argument("--no-nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--pct-start", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (resumed when it exists); default results/hand_loop-DATE.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = a.out or RESULTS / f"hand_loop-{datetime.date.today().isoformat()}.json"
    header = {"command": "python benchmarks/" + Path(__file__).name + " "
              + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "threads": a.threads, "recipe": str(a.recipe.name), "runs": []}
    for cap in a.caps:
        for lr in a.lrs:
            for seed in a.seeds:
                key = (cap, lr, seed, a.weight_decay, a.pct_start, not a.no_nesterov)
                if any(_key(r) == key for r in _read(out, header)["runs"]):
                    continue  # done by an earlier or a parallel sweep writing the same file
                r = train(a.recipe, cap, seed, lr, not a.no_nesterov, a.weight_decay, a.pct_start)
                doc = append_run(out, header, r)
                print(f"cap {cap:.0e} lr {lr} seed {seed}: test {r['test_accuracy']:.2f}% "
                      f"val {r['best_val_accuracy']:.2f}% ({r['steps']} steps, {r['epochs']:.2f} epochs, "
                      f"{r['wall_s']:.0f}s)", flush=True)
    doc = _read(out, header)
    summarize(doc)
    return doc


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["cap"], r["lr"], r["seed"], r["weight_decay"], r["pct_start"], r["nesterov"])


def _read(out: Path, header: dict[str, Any]) -> dict[str, Any]:
    return json.loads(out.read_text()) if out.exists() else dict(header, runs=[])


def append_run(out: Path, header: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Add one run to the JSON file under a lock (sweeps over different seeds may share it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = _read(out, header)
        doc["runs"].append(run)
        tmp = out.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(out)
    return doc


def summarize(doc: dict[str, Any]) -> None:
    groups: dict[tuple[float, float], list[float]] = {}
    for r in doc["runs"]:
        groups.setdefault((r["cap"], r["lr"]), []).append(r["test_accuracy"])
    for (cap, lr), accs in sorted(groups.items()):
        m = sum(accs) / len(accs)
        sd = math.sqrt(sum((x - m) ** 2 for x in accs) / (len(accs) - 1)) if len(accs) > 1 else 0.0
        print(f"cap {cap:.0e} lr {lr}: {m:.2f} ± {sd:.2f} % test (n={len(accs)})")


if __name__ == "__main__":
    main()
