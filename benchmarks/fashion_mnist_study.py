"""The Fashion-MNIST study of docs/results.md: paper 004's Tables 3-4 at equal epochs and at an
equal FLOP cap, the best combination at 1e12 FLOPs, and the <= 10K-parameter search.

Every matrix is a spec in `recipes/ablations/` run by `composer-ablate` (resumable: re-running
continues where it stopped). This script runs them in order and rewrites the generated tables
of `docs/results.md` (between `<!-- BEGIN name -->` / `<!-- END name -->` markers) from the
matrices' `results.json`, so every number in the document comes from a run on this machine.

    apt-get install -y dataset-fashion-mnist
    .venv/bin/python benchmarks/fashion_mnist_study.py --run          # all matrices (~2 h on 2 cores)
    .venv/bin/python benchmarks/fashion_mnist_study.py                # tables only, from results
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from effrecipes.reference import lookup  # noqa: E402
from effrecipes.stats import (FINISHED, delta, fmt_flops, mean_std, md_table as table, pm,  # noqa: E402
                             signed_pm as signed)

# Run order: Table 4 at 1e12 first (the best combination builds on it), then the rest.
SPECS = ["fashion_mnist_table4", "fashion_mnist_10k_search", "fashion_mnist_10k_tune",
         "fashion_mnist_best", "fashion_mnist_10k_seeds", "fashion_mnist_table3",
         "fashion_mnist_table4_epochs", "fashion_mnist_baseline_caps", "fashion_mnist_baseline_3e12",
         "fashion_mnist_table4_tuned", "fashion_mnist_10k_caps", "fashion_mnist_10k_round3",
         "fashion_mnist_10k_round4", "fashion_mnist_baseline_bs", "fashion_mnist_baseline_wd",
         "fashion_mnist_10k_round5", "fashion_mnist_10k_round6", "fashion_mnist_10k_round5_seeds",
         "fashion_mnist_10k_round7", "fashion_mnist_10k_round8", "fashion_mnist_10k_round8_seeds",
         "fashion_mnist_10k_learned_pool_caps", "fashion_mnist_10k_round9", "fashion_mnist_10k_round10",
         "fashion_mnist_10k_learned_pool_silu_caps", "fashion_mnist_10k_full", "fashion_mnist_10k_round11",
         "fashion_mnist_10k_round12", "fashion_mnist_10k_round13", "fashion_mnist_10k_round14",
         "fashion_mnist_10k_round15", "fashion_mnist_10k_round16", "fashion_mnist_10k_round17",
         "fashion_mnist_10k_round18", "fashion_mnist_10k_round18_seeds", "fashion_mnist_10k_round19",
         "fashion_mnist_10k_round20", "fashion_mnist_10k_round21", "fashion_mnist_10k_round22",
         "fashion_mnist_10k_learned_pool_silu_ema_caps", "fashion_mnist_10k_round23",
         "fashion_mnist_10k_round24", "fashion_mnist_10k_round25",
         "fashion_mnist_10k_round26", "fashion_mnist_10k_round27", "fashion_mnist_10k_finalists",
         "fashion_mnist_10k_learned_pool_silu_ema50_caps", "fashion_mnist_table4_whiten",
         "fashion_mnist_baseline_seeds", "fashion_mnist_baseline_screen",
         "fashion_mnist_baseline_screen_3e12"]
TECHNIQUES = ["baseline", "blurpool", "squeeze_excite", "swa", "sam", "mixup", "cutout",
              "label_smoothing", "one_cycle"]
PAPER_SETTING = {"one_cycle": "one_cycle_lr"}  # our name -> seed_results.csv's


def load(results: Path, name: str) -> Optional[dict[str, Any]]:
    path = results / name / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def overrides(results: Path, name: str) -> dict[str, dict[str, str]]:
    """cell id -> {dotted key: value text} from the matrix's matrix.json."""
    path = results / name / "matrix.json"
    if not path.exists():
        return {}
    cells = json.loads(path.read_text())["cells"]
    return {c["cell_id"]: dict(o.split("=", 1) for o in c["overrides"]) for c in cells}


def noise_cell(within: Optional[bool]) -> str:
    """The "within noise" column: yes, **no** (a real difference, in bold), or - (no estimate)."""
    return "-" if within is None else ("yes" if within else "**no**")


def done(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cells if c["status"] == "done"]


def epochs_of(data: dict[str, Any], techniques: str) -> Optional[float]:
    eps = [c["epochs"] for c in done(data["cells"]) if c["techniques"] == techniques and c.get("epochs")]
    return sum(eps) / len(eps) if eps else None


def wall_of(data: dict[str, Any], techniques: str) -> Optional[float]:
    ws = [c["wall_seconds"] for c in done(data["cells"]) if c["techniques"] == techniques]
    return sum(ws) / len(ws) if ws else None


def paper_mnist(setting: str, table_no: str = "4") -> Optional[float]:
    return lookup(paper="004", table=table_no, dataset="mnist", model="gap_1p5k_dw",
                  metric="val_accuracy", setting=PAPER_SETTING.get(setting, setting))


# --------------------------------------------------------------------------- tables

def table4(results: Path) -> str:
    flops, epochs = load(results, "fashion_mnist_table4"), load(results, "fashion_mnist_table4_epochs")
    paper_base = paper_mnist("baseline")
    rows = []
    for t in TECHNIQUES:
        row: list[Any] = [t]
        for data in (flops, epochs):
            agg = next((a for a in data["aggregate"] if a["techniques"] == t), None) if data else None
            if not agg or not agg["n"]:
                row += ["-", "-", "-", "-"]
                continue
            row += [f"{pm(agg['test_accuracy_mean'], agg['test_accuracy_std'])} ({agg['n']})",
                    "(reference)" if t == "baseline" else signed(agg["delta_mean"], agg["delta_std"]),
                    noise_cell(agg["within_noise"]),
                    f"{epochs_of(data, t):.2f} ep, {wall_of(data, t):.0f} s" if data is flops
                    else f"{agg['flops_used_mean']:.3g}, {wall_of(data, t):.0f} s"]
        p = paper_mnist(t)
        row.append(f"{p:.2f}" + ("" if t == "baseline" or p is None or paper_base is None
                                  else f" ({p - paper_base:+.2f})") if p is not None else "-")
        rows.append(row)
    return table(["technique",
                  "1e12 FLOPs: test acc % (n)", "Δ", "within noise", "epochs bought, wall",
                  "4 epochs: test acc % (n)", "Δ", "within noise", "FLOPs spent, wall",
                  "paper 004, MNIST, equal epochs (Δ)"], rows)


def table3(results: Path) -> str:
    data = load(results, "fashion_mnist_table3")
    if not data:
        return "_not run yet_"
    ovr = overrides(results, "fashion_mnist_table3")
    rows = []
    for c in done(data["cells"]):
        model = ovr.get(c["cell_id"], {}).get("model.name", "?")
        p = lookup(paper="004", table="3", dataset="mnist", model=model, metric="val_accuracy")
        rows.append([model, f"{c['params']:,}", f"{c['model_size_bytes'] / 1024:.1f}",
                     f"{c['cpu_latency_ms_per_image']:.3f}", f"{c['test_accuracy']:.2f}",
                     f"{c['flops_used']:.3g}", f"{c['wall_seconds']:.0f}",
                     f"{p:.2f}" if p is not None else "-"])
    return table(["model", "params", "size KiB", "CPU latency ms/image (10,000 test images)",
                  "test acc %", "training FLOPs", "wall s", "paper 004, MNIST val acc %"], rows)


def aggregate_table(results: Path, name: str, extra: Callable[[str], str] = lambda _: "") -> str:
    data = load(results, name)
    if not data:
        return "_not run yet_"
    rows = []
    for a in data["aggregate"]:
        if not a["n"]:
            continue
        rows.append([a["techniques"], f"{a['n']}/{a['n_cells']}",
                     pm(a["test_accuracy_mean"], a["test_accuracy_std"]),
                     "(reference)" if a["delta_mean"] is None and a["techniques"] == a.get("reference")
                     else signed(a["delta_mean"], a["delta_std"]),
                     noise_cell(a["within_noise"]),
                     f"{epochs_of(data, a['techniques']) or 0:.2f}", f"{a['params']:,}"])
    return table(["techniques", "seeds", "test acc % (mean ± std)", "Δ vs baseline", "within noise",
                  "epochs bought", "params"], rows)


def search_table(results: Path) -> str:
    """Every <= 10K-parameter cell of both search rounds, best first."""
    rows = []
    for name in ("fashion_mnist_10k_search", "fashion_mnist_10k_tune"):
        data = load(results, name)
        if not data:
            continue
        for c in done(data["cells"]):
            r = yaml.safe_load((results / name / "cells" / c["cell_id"] / c["cell_id"]
                                / "recipe.yaml").read_text())  # what the cell really trained
            rows.append((c["test_accuracy"], [
                name.removeprefix("fashion_mnist_"),
                " ".join(r["model"]["kwargs"]["layers"]), r["optimizer"]["lr"], r["data"]["batch_size"],
                f"{c['params']:,}", f"{c['epochs']:.2f}", f"{c['test_accuracy']:.2f}",
                f"{c['best_val_accuracy']:.2f}", f"{c['flops_used']:.4g}"]))
    if not rows:
        return "_not run yet_"
    rows.sort(key=lambda r: -r[0])
    return table(["round", "layers", "peak lr", "batch", "params", "epochs bought", "test acc %",
                  "best val %", "training FLOPs"], [r for _, r in rows])


LATER_ROUNDS = ("fashion_mnist_10k_round3", "fashion_mnist_10k_round4", "fashion_mnist_10k_round5",
                "fashion_mnist_10k_round6", "fashion_mnist_10k_round7", "fashion_mnist_10k_round8")


def _change_label(results: Path, name: str, cell_id: str) -> str:
    """What a later-round cell changed, from the recipe it trained: the layer list, the training
    augmentations and a non-SGD optimizer; else the cell id (it names the change)."""
    r = yaml.safe_load((results / name / "cells" / cell_id / cell_id / "recipe.yaml").read_text())
    parts = []
    if "__layers=" in cell_id:
        parts.append("layers " + " ".join(r["model"]["kwargs"]["layers"]))
    if r["model"]["kwargs"].get("pool", "avg") != "avg":
        parts.append(f"{r['model']['kwargs']['pool']} pooling")
    if r["model"]["kwargs"].get("act", "relu") != "relu":
        parts.append(f"{r['model']['kwargs']['act']} activation")
    if r["data"].get("augment"):
        parts.append("augment " + ", ".join(r["data"]["augment"]))
    opt = r["optimizer"]
    if opt["name"] != "sgd":
        parts.append(f"{opt['name']} lr {opt['lr']}, weight decay {opt['weight_decay']}")
    return "; ".join(parts) or cell_id.removesuffix("__s0")


def later_rounds_table(results: Path) -> str:
    """<= 10K search rounds 3-8 (issue #17 point 5), each cell on seed 0, best validation first:
    what each changed against the shipped recipe, and what it bought."""
    rows = []
    for name in LATER_ROUNDS:
        data = load(results, name)
        for c in done((data or {}).get("cells", [])):
            record = json.loads((results / name / "cells" / c["cell_id"] / "cell.json").read_text())
            if record.get("reused_from"):  # the same run as a row already listed
                continue
            rows.append((c["best_val_accuracy"], [
                name.removeprefix("fashion_mnist_10k_"), _change_label(results, name, c["cell_id"]),
                f"{c['params']:,}", f"{c['epochs']:.2f}", f"{c['best_val_accuracy']:.2f}",
                f"{c['test_accuracy']:.2f}", f"{c['flops_used']:.4g}"]))
    if not rows:
        return "_not run yet_"
    rows.sort(key=lambda r: -r[0])
    return table(["round", "cell (changes against recipes/fashion_mnist_10k.yaml)", "params",
                  "epochs bought", "best val % (selects)", "test acc %", "training FLOPs"],
                 [r for _, r in rows])


# (label, matrix, the grid values of its group; {} when the matrix has one group)
SEED_CHECKS: list[tuple[str, str, dict[str, str]]] = [
    ("shipped: c16 m dw32 dw32 m dw64 dw60", "fashion_mnist_10k_seeds", {}),
    ("round 5's best: c16 m dw32 m dw64 dw64", "fashion_mnist_10k_round5_seeds", {}),
    ("round 8's best: c16 m dw32 m dw56 dw48, depthwise pooling", "fashion_mnist_10k_round8_seeds", {}),
    ("round 9: round 8's with SiLU (lr 0.2)", "fashion_mnist_10k_round9", {}),
    ("round 10: round 9's at lr 0.15", "fashion_mnist_10k_round10", {"optimizer.lr": "0.15"}),
    ("round 10: round 9's at lr 0.3", "fashion_mnist_10k_round10", {"optimizer.lr": "0.3"}),
    ("round 11: round 10's (lr 0.15) with GELU", "fashion_mnist_10k_round11", {"techniques": "gelu"}),
    ("round 11: round 10's without label smoothing", "fashion_mnist_10k_round11",
     {"techniques": "no_label_smoothing"}),
    ("round 11: round 10's with a 15% warm-up", "fashion_mnist_10k_round11", {"techniques": "warmup_15pct"}),
    ("round 11: round 10's with weight decay 5e-5", "fashion_mnist_10k_round11", {"techniques": "wd_5e-5"}),
    ("round 12: round 10's with label smoothing 0.2", "fashion_mnist_10k_round12",
     {"techniques": "label_smoothing_0.2"}),
    ("round 12: round 10's at batch 32, lr 0.1", "fashion_mnist_10k_round12", {"techniques": "batch_32"}),
    ("round 13: round 10's with BatchNorm before SiLU", "fashion_mnist_10k_round13",
     {"techniques": "bn_before_act"}),
    ("round 13: round 10's with MobileNet's separable block", "fashion_mnist_10k_round13",
     {"techniques": "dw_act"}),
    ("round 13: both", "fashion_mnist_10k_round13", {"techniques": "bn_before_act+dw_act"}),
    ("round 14: c12 m dw32 m dw56 dw52", "fashion_mnist_10k_round14", {"techniques": "stem_c12"}),
    ("round 14: c8 m dw32 m dw56 dw52", "fashion_mnist_10k_round14", {"techniques": "stem_c8"}),
    ("round 14: c8 m dw16 m dw64 dw56", "fashion_mnist_10k_round14", {"techniques": "stem_c8_dw16"}),
    ("round 15: c16 m dw24 m dw64 dw48", "fashion_mnist_10k_round15", {"techniques": "wide_7x7"}),
    ("round 15: round 10's without BlurPool", "fashion_mnist_10k_round15", {"techniques": "no_blurpool"}),
    ("round 16: c16/2 dw32 m dw56 dw48", "fashion_mnist_10k_round16", {"techniques": "strided_stem"}),
    ("round 16: c24/2 dw32 m dw56 dw48", "fashion_mnist_10k_round16", {"techniques": "strided_stem_c24"}),
    ("round 16: c16/2 dw40 m dw56 dw44", "fashion_mnist_10k_round16", {"techniques": "strided_stem_dw40"}),
    ("round 17: c8 dw16 m dw32 m dw56 dw48", "fashion_mnist_10k_round17", {"techniques": "deep_stem_dw16"}),
    ("round 17: c8 dw12 m dw32 m dw56 dw48", "fashion_mnist_10k_round17", {"techniques": "deep_stem_dw12"}),
    ("round 18: constant momentum 0.9 (no cycle)", "fashion_mnist_10k_round18",
     {"techniques": "constant_momentum"}),
    ("round 18: momentum cycle 0.9 -> 0.8 -> 0.9", "fashion_mnist_10k_round18", {"techniques": "momentum_0.8_0.9"}),
    ("5 seeds: round 10's selected setting (lr 0.15)", "fashion_mnist_10k_round18_seeds",
     {"techniques": "baseline"}),
    ("5 seeds: round 18's constant momentum", "fashion_mnist_10k_round18_seeds",
     {"techniques": "constant_momentum"}),
    ("round 19: constant momentum at lr 0.1", "fashion_mnist_10k_round19",
     {"techniques": "constant_momentum_lr_0.1"}),
    ("round 19: constant momentum at lr 0.2", "fashion_mnist_10k_round19",
     {"techniques": "constant_momentum_lr_0.2"}),
    ("round 20: layer freezing from 50% of training", "fashion_mnist_10k_round20",
     {"techniques": "freeze_from_0.5"}),
    ("round 20: layer freezing from 30% of training", "fashion_mnist_10k_round20",
     {"techniques": "freeze_from_0.3"}),
    ("round 20: half the layers frozen by the end, from 50%", "fashion_mnist_10k_round20",
     {"techniques": "freeze_half_from_0.5"}),
    ("round 21: selective backprop (keep 0.5, 50-90% of training)", "fashion_mnist_10k_round21",
     {"techniques": "selective_backprop"}),
    ("round 21: selective backprop keeping 0.7", "fashion_mnist_10k_round21",
     {"techniques": "selective_backprop_keep_0.7"}),
    ("round 21: selective backprop from 30% of training", "fashion_mnist_10k_round21",
     {"techniques": "selective_backprop_from_0.3"}),
    ("round 22: EMA, half-life 100 batches", "fashion_mnist_10k_round22", {"techniques": "ema_100ba"}),
    ("round 22: EMA, half-life 300 batches", "fashion_mnist_10k_round22", {"techniques": "ema_300ba"}),
    ("round 23: EMA 100ba with constant momentum 0.9", "fashion_mnist_10k_round23",
     {"techniques": "constant_momentum"}),
    ("round 23: EMA 100ba with a 15% warm-up", "fashion_mnist_10k_round23", {"techniques": "warmup_15pct"}),
    ("round 23: EMA, half-life 50 batches", "fashion_mnist_10k_round23", {"techniques": "ema_50ba"}),
    ("round 24: EMA 100ba at lr 0.2", "fashion_mnist_10k_round24", {"techniques": "lr_0.2"}),
    ("round 24: EMA 100ba at lr 0.3", "fashion_mnist_10k_round24", {"techniques": "lr_0.3"}),
    ("round 24: EMA 100ba with weight decay 2e-4", "fashion_mnist_10k_round24", {"techniques": "wd_2e-4"}),
    ("round 25: EMA 100ba with label smoothing 0.05", "fashion_mnist_10k_round25",
     {"techniques": "label_smoothing_0.05"}),
    ("round 25: EMA 100ba with a 45% warm-up", "fashion_mnist_10k_round25", {"techniques": "warmup_45pct"}),
    ("round 25: EMA 100ba with one-cycle div_factor 10", "fashion_mnist_10k_round25",
     {"techniques": "div_factor_10"}),
    ("round 26: EMA 100ba, 5x5 depthwise conv at 14x14 (dw32k5)", "fashion_mnist_10k_round26",
     {"techniques": "dw32k5"}),
    ("round 26: EMA 100ba, 5x5 depthwise conv at 7x7 (dw56k5)", "fashion_mnist_10k_round26",
     {"techniques": "dw56k5"}),
    ("round 27: EMA 100ba, whitened stem", "fashion_mnist_10k_round27", {"techniques": "whiten"}),
    ("round 27: EMA 100ba, whitened stem, frozen", "fashion_mnist_10k_round27",
     {"techniques": "whiten_frozen"})]


def _group(data: Optional[dict[str, Any]], where: dict[str, str]) -> Optional[dict[str, Any]]:
    """A matrix's first group with finished runs whose values (techniques, grid keys) match."""
    return next((a for a in (data or {}).get("aggregate", [])
                 if a["n"] and all(str(a.get(k)) == v for k, v in where.items())), None)


def seeds10k_best_table(results: Path) -> str:
    """The rounds' best networks on 3 seeds against the shipped <= 10K recipe's 3 seeds."""
    groups = []
    for label, name, where in SEED_CHECKS:
        data = load(results, name)
        group = _group(data, where)
        if group:
            groups.append((label, data, group))
    if len(groups) < 2:
        return "_not run yet_"
    ref = groups[0][2]
    rows = []
    for label, data, g in groups:
        d_mean, d_std, noise = (None, None, None) if g is ref else delta(g, ref)
        rows.append([label, f"{g['n']}/{g['n_cells']}", pm(g["test_accuracy_mean"], g["test_accuracy_std"]),
                     f"{g['best_val_accuracy_mean']:.2f}",
                     "(reference)" if g is ref else signed(d_mean, d_std),
                     noise_cell(noise),
                     f"{epochs_of(data, g['techniques']) or 0:.2f}", f"{g['params']:,}"])
    return table(["network", "seeds", "test acc % (mean ± std)", "best val % (mean)", "Δ vs shipped",
                  "within noise", "epochs bought", "params"], rows)


# (label, where its seeds 0-2 ran: matrix and group values, its group in fashion_mnist_10k_finalists)
FINALISTS: list[tuple[str, str, dict[str, str], str]] = [
    ("EMA 100ba (selected since round 22)", "fashion_mnist_10k_round22", {"techniques": "ema_100ba"},
     "ema_100ba"),
    ("EMA 100ba, whitened stem, frozen (round 27)", "fashion_mnist_10k_round27",
     {"techniques": "whiten_frozen"}, "ema_100ba_whiten_frozen"),
    ("EMA 50ba (round 23)", "fashion_mnist_10k_round23", {"techniques": "ema_50ba"}, "ema_50ba"),
    ("no EMA (round 10's selection, lr 0.15)", "fashion_mnist_10k_round10", {"optimizer.lr": "0.15"},
     "baseline")]


def _cells_of(results: Path, name: str, where: dict[str, str]) -> list[dict[str, Any]]:
    """The finished cells of one group (techniques and grid values as in `_group`)."""
    data = load(results, name)
    if not data:
        return []
    by_id = overrides(results, name)
    out = []
    for c in done(data["cells"]):
        values = {"techniques": c["techniques"], **by_id.get(c["cell_id"], {})}
        if all(str(values.get(k)) == v for k, v in where.items()):
            out.append(c)
    return out


def finalists_table(results: Path) -> str:
    """The finalists on the seeds that selected them (0-2) and on three fresh ones (3-5), where
    the selection is made again on validation alone."""
    rows = []
    for label, name, where, group in FINALISTS:
        first = _cells_of(results, name, where)
        fresh = sorted(_cells_of(results, "fashion_mnist_10k_finalists", {"techniques": group}),
                       key=lambda c: c["seed"])
        if not fresh:
            continue
        val0 = mean_std([c["best_val_accuracy"] for c in first])
        val = mean_std([c["best_val_accuracy"] for c in fresh])
        test = mean_std([c["test_accuracy"] for c in fresh])
        both = mean_std([c["test_accuracy"] for c in first + fresh])
        rows.append([label, f"{val0.mean:.2f}" if val0.mean is not None else "-",
                     " / ".join(f"{c['best_val_accuracy']:.2f}" for c in fresh),
                     f"{val.mean:.2f} (n={len(fresh)})",
                     pm(test.mean, test.std) + f" (n={len(fresh)})",
                     pm(both.mean, both.std) + f" (n={len(first) + len(fresh)})"])
    if not rows:
        return "_not run yet_"
    return table(["finalist", "val % seeds 0-2 (mean)", "val % seeds 3 / 4 / 5",
                  "val % seeds 3-5 (selects)", "test % seeds 3-5", "test % seeds 0-5"], rows)


# (network, its 3 seeds on the validation split: matrix and group; its final fit's group)
FULL_FITS: list[tuple[str, tuple[str, dict[str, str]], str]] = [
    ("shipped: c16 m dw32 dw32 m dw64 dw60", ("fashion_mnist_10k_seeds", {}), "baseline"),
    ("round 10's selection: c16 m dw32 m dw56 dw48, depthwise pooling, SiLU, lr 0.15",
     ("fashion_mnist_10k_round10", {"optimizer.lr": "0.15"}), "learned_pool_silu"),
    ("selected since round 22: the same with EMA of the weights (half-life 100 batches)",
     ("fashion_mnist_10k_round22", {"techniques": "ema_100ba"}), "learned_pool_silu+ema_100ba")]


def full_fit_table(results: Path) -> str:
    """Each network trained on the 54K images left by the validation split (what the rounds
    selected on) against its final fit on all 60K training images (fashion_mnist_10k_full)."""
    full = load(results, "fashion_mnist_10k_full")
    if not full:
        return "_not run yet_"
    rows = []
    for label, (name, where), techniques in FULL_FITS:
        split, fit = _group(load(results, name), where), _group(full, {"techniques": techniques})
        if not split or not fit:
            continue
        d_mean, d_std, noise = delta(fit, split)
        rows.append([label, pm(split["test_accuracy_mean"], split["test_accuracy_std"]),
                     pm(fit["test_accuracy_mean"], fit["test_accuracy_std"]), signed(d_mean, d_std),
                     noise_cell(noise), f"{epochs_of(full, techniques) or 0:.2f}", f"{fit['params']:,}"])
    return table(["network", "54K images (val split), test acc %", "all 60K (final fit), test acc %",
                  "Δ 60K − 54K", "within noise", "epochs bought (60K)", "params"], rows) if rows else "_not run yet_"


def best_table(results: Path) -> str:
    """Combinations at 1e12, against Table 4's baseline: the best spec's own baseline cells have
    the same recipe hash as Table 4's (run them with `composer-ablate ... --only 'baseline*'`)."""
    data, t4 = load(results, "fashion_mnist_best"), load(results, "fashion_mnist_table4")
    if not data or not t4:
        return "_not run yet_"
    ref = next(a for a in t4["aggregate"] if a["techniques"] == "baseline")
    rows = []
    for a in [ref] + [a for a in data["aggregate"] if a["n"] and a["techniques"] != "baseline"]:
        source = "table4" if a is ref else "best"
        mean, std = a["test_accuracy_mean"], a["test_accuracy_std"]
        delta = None if a is ref else mean - ref["test_accuracy_mean"]
        noise = None if a is ref or std is None or ref["test_accuracy_std"] is None else (
            (std ** 2 + ref["test_accuracy_std"] ** 2) ** 0.5)
        rows.append([a["techniques"], source, f"{a['n']}/{a['n_cells']}", pm(mean, std),
                     "(reference)" if a is ref else signed(delta, noise),
                     noise_cell(None if noise is None else abs(delta) <= noise),
                     f"{epochs_of(t4 if a is ref else data, a['techniques']) or 0:.2f}",
                     f"{a['params']:,}"])
    return table(["techniques", "matrix", "seeds", "test acc % (mean ± std)", "Δ vs baseline (± combined std)",
                  "within noise", "epochs bought", "params"], rows)


HAND_LOOP = REPO / "benchmarks" / "results" / "hand_loop-2026-11-30.json"
BASELINE_MATRICES = ["fashion_mnist_baseline_caps", "fashion_mnist_baseline_3e12"]
LRS = ["0.1", "0.15", "0.2", "0.3"]


def _hand_runs(cap: float, files: Optional[tuple[Path, ...]] = None, lr: float = 0.1) -> list[dict[str, Any]]:
    """The hand loop's runs at a cap and peak lr in `files` (default: HAND_LOOP, seeds 0-2), by seed."""
    runs = [r for f in (files or (HAND_LOOP,)) if f.exists()
            for r in json.loads(f.read_text())["runs"] if r["cap"] == cap and r["lr"] == lr]
    return sorted(runs, key=lambda r: r["seed"])


def _hand_loop(cap: float) -> dict[str, Any]:
    """seed_stats-shaped dict of the hand loop's test (and best validation) accuracy at a cap."""
    runs = _hand_runs(cap)
    test = mean_std([r["test_accuracy"] for r in runs])
    val = mean_std([r["best_val_accuracy"] for r in runs])
    return {"n": len(runs), "test_accuracy_mean": test.mean,
            "test_accuracy_std": test.std, "best_val_accuracy_mean": val.mean}


HAND_LOOP_SEEDS = REPO / "benchmarks" / "results" / "hand_loop-2026-12-01-seeds.json"  # seeds 3-5
SEEDS_MATRIX = "fashion_mnist_baseline_seeds"
BEATS_P = 0.05  # the rule written into recipes/ablations/fashion_mnist_baseline_seeds.yaml before its runs


def welch_greater(a: list[float], b: list[float]) -> Optional[float]:
    """One-sided Welch t-test p-value for mean(a) > mean(b) (scipy), None below 2 values a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind  # installed with scikit-learn

    return float(ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def paired_greater(pairs: list[tuple[float, float]]) -> Optional[float]:
    """One-sided paired t-test p-value for a > b over (a, b) pairs of the same seed (scipy)."""
    if len(pairs) < 2:
        return None
    from scipy.stats import ttest_rel  # installed with scikit-learn

    return float(ttest_rel([a for a, _ in pairs], [b for _, b in pairs], alternative="greater").pvalue)


def baseline_seeds_table(results: Path) -> str:
    """Issue #17 point 3 over seeds 0-5: the shipped baseline against the hand loop at each cap,
    with the noise rule and the one-sided Welch test the spec's rule uses; then every seed."""
    data = load(results, SEEDS_MATRIX)
    if not data:
        return "_not run yet_"
    tool = {cap: sorted((c for c in done(data["cells"]) if float(c["budget.flops"]) == cap),
                        key=lambda c: c["seed"]) for cap in CAPS}
    rows, seed_rows = [], []
    for cap in CAPS:
        hand_by_seed = {r["seed"]: r["test_accuracy"] for r in _hand_runs(cap, (HAND_LOOP, HAND_LOOP_SEEDS))}
        ours_by_seed = {c["seed"]: c["test_accuracy"] for c in tool[cap]}
        ours, hand = list(ours_by_seed.values()), list(hand_by_seed.values())
        if not ours or not hand:
            continue
        a, b = mean_std(ours), mean_std(hand)
        d_mean, d_std, noise = delta({"n": len(ours), "test_accuracy_mean": a.mean, "test_accuracy_std": a.std},
                                     {"n": len(hand), "test_accuracy_mean": b.mean, "test_accuracy_std": b.std})
        p = welch_greater(ours, hand)
        beats = "-" if p is None else ("**yes**" if d_mean > 0 and p < BEATS_P else "no")
        pairs = [(acc, hand_by_seed[s]) for s, acc in ours_by_seed.items() if s in hand_by_seed]
        diffs = mean_std([x - y for x, y in pairs])
        p_pair = paired_greater(pairs)
        rows.append([f"{cap:.0e}", f"{pm(b.mean, b.std)} (n={len(hand)})", f"{pm(a.mean, a.std)} (n={len(ours)})",
                     signed(d_mean, d_std), noise_cell(noise), "-" if p is None else f"{p:.3f}", beats,
                     f"{signed(diffs.mean, diffs.std)} (n={len(pairs)})",
                     "-" if p_pair is None else f"{p_pair:.3f}"])
        for label, by_seed in (("hand loop, lr 0.1", hand_by_seed), ("baseline, lr 0.2", ours_by_seed)):
            seed_rows.append([f"{cap:.0e}", label] + [f"{by_seed[s]:.2f}" if s in by_seed else "-"
                                                      for s in range(6)])
    return (table(["FLOP cap", "hand loop, lr 0.1: test acc %", "shipped baseline, lr 0.2: test acc %",
                   "baseline − hand loop (± combined std)", "within noise",
                   "Welch one-sided p", f"beats (p < {BEATS_P})", "same seed: Δ mean ± std",
                   "paired one-sided p"], rows)
            + "\n\n" + table(["FLOP cap", "loop"] + [f"seed {s}" for s in range(6)], seed_rows))


FIT_CHECK = REPO / "benchmarks" / "results" / "fit_check-2026-12-01.json"


def fit_table(results: Path) -> str:
    """Training vs held-out accuracy of the shipped baseline's runs per cap (benchmarks/fit_check.py)."""
    if not FIT_CHECK.exists():
        return "_not run yet_"
    runs = json.loads(FIT_CHECK.read_text())["runs"]
    rows = []
    for cap in CAPS:
        at = [r for r in runs if r["flops_cap"] == cap]
        if not at:
            continue
        cols = [mean_std([r[k] for r in at]) for k in ("train_accuracy", "val_accuracy", "test_accuracy")]
        gap = mean_std([r["train_accuracy"] - r["test_accuracy"] for r in at])
        rows.append([f"{cap:.0e}", str(len(at))] + [pm(c.mean, c.std) for c in cols] + [signed(gap.mean, gap.std)])
    return table(["FLOP cap", "runs", "train acc % (final weights)", "val acc %", "test acc %",
                  "train − test"], rows)


def screen_table(results: Path, name: str) -> str:
    """A screen of baseline changes at one cap: mean validation (what selects) beside test."""
    data = load(results, name)
    if not data:
        return "_not run yet_"
    rows = [[a["techniques"], f"{a['n']}/{a['n_cells']}", f"{a['best_val_accuracy_mean']:.2f}",
             pm(a["test_accuracy_mean"], a["test_accuracy_std"]),
             "(reference)" if a["techniques"] == a.get("reference") else signed(a["delta_mean"], a["delta_std"]),
             noise_cell(a["within_noise"]), f"{epochs_of(data, a['techniques']) or 0:.2f}"]
            for a in data["aggregate"] if a["n"]]
    return table(["change", "seeds", "best val % (mean)", "test acc % (mean ± std)", "Δ test vs shipped",
                  "within noise", "epochs bought"], rows)


def _baseline_groups(results: Path) -> dict[tuple[float, str], dict[str, Any]]:
    """(cap, lr text) -> the matrices' aggregate group of the one-cycle baseline."""
    out: dict[tuple[float, str], dict[str, Any]] = {}
    for name in BASELINE_MATRICES:
        data = load(results, name)
        for a in (data or {}).get("aggregate", []):
            if not a["n"]:
                continue
            ids = [c for c in data["cells"] if c["techniques"] == a["techniques"]
                   and all(str(c.get(k)) == str(a.get(k)) for k in ("budget.flops", "optimizer.lr")
                           if k in a)]
            over = overrides(results, name).get(ids[0]["cell_id"], {}) if ids else {}
            cap = float(a.get("budget.flops") or over.get("budget.flops") or 0)
            lr = str(a.get("optimizer.lr") or over.get("optimizer.lr"))
            out[(cap, lr)] = a
    return out


def baseline_table(results: Path) -> str:
    """Issue #17 point 3: the one-cycle baseline's lr search per cap against the hand loop."""
    groups = _baseline_groups(results)
    if not groups:
        return "_not run yet_"
    rows = []
    for cap in sorted({c for c, _ in groups}):
        hand = _hand_loop(cap)
        tried = {lr: g for (c, lr), g in groups.items() if c == cap}
        best_lr = max(tried, key=lambda lr: tried[lr]["best_val_accuracy_mean"] or 0.0)
        best = tried[best_lr]
        d_mean, d_std, noise = delta(best, hand) if hand["n"] else (None, None, None)
        rows.append([f"{cap:.0e}", pm(hand["test_accuracy_mean"], hand["test_accuracy_std"])
                     + f" (n={hand['n']})"]
                    + [pm(tried[lr]["test_accuracy_mean"], tried[lr]["test_accuracy_std"])
                       if lr in tried else "-" for lr in LRS]
                    + [best_lr, signed(d_mean, d_std),
                       noise_cell(noise)])
    return table(["FLOP cap", "hand loop, lr 0.1", *[f"one-cycle lr {lr}" for lr in LRS],
                  "selected on val", "selected − hand loop", "within noise"], rows)


def grid_search_table(results: Path, name: str, rows_key: str, cols_key: str, cols: list[str],
                      label: Callable[[str, str], str]) -> str:
    """Issue #17 point 3: a two-key search of the baseline at 1e12 (3 seeds per setting), one row
    per `rows_key` value and one column per `cols_key` value, then the setting selected on mean
    validation accuracy against the hand loop at the same cap (once every setting run has all its
    seeds).
    `label(row value, column value)` names a setting."""
    data = load(results, name)
    if not data:
        return "_not run yet_"
    groups = {(a[rows_key], a[cols_key]): a for a in data["aggregate"] if a["n"]}
    steps: dict[str, int] = {}  # row value -> optimizer steps the cap bought (from metrics.json)
    for c in done(data["cells"]):
        metrics = results / name / "cells" / c["cell_id"] / c["cell_id"] / "metrics.json"
        if c[rows_key] not in steps and metrics.exists():
            steps[c[rows_key]] = json.loads(metrics.read_text())["batches"]
    rows = []
    for rv in sorted({r for r, _ in groups}, key=float):
        cells = [groups.get((rv, cv)) for cv in cols]
        rows.append([rv, f"{steps.get(rv) or 0:,}"] + [
            "-" if g is None else f"{pm(g['test_accuracy_mean'], g['test_accuracy_std'])} "
                                  f"({g['best_val_accuracy_mean']:.2f}; n={g['n']})" for g in cells])
    out = table([rows_key, "optimizer steps", *[f"{cols_key} {cv}: test % (val %; n)" for cv in cols]],
                rows)
    tuned = next((t for t in data.get("tuned", []) if t.get("selected")), None)
    # every setting that ran (settings left out with --only have no group) has all its seeds
    if tuned and groups and all(g["n"] == g["n_cells"] for g in groups.values()):
        sel = tuned["selected"]
        best = groups[(sel[rows_key], sel[cols_key])]
        hand = _hand_loop(1e12)
        d_mean, d_std, noise = delta(best, hand)
        out += "\n\n" + table(
            ["selected on val", "test acc %", "hand loop, lr 0.1, batch 128", "selected − hand loop",
             "within noise", "FLOPs spent searching"],
            [[label(sel[rows_key], sel[cols_key]),
              pm(best["test_accuracy_mean"], best["test_accuracy_std"]),
              pm(hand["test_accuracy_mean"], hand["test_accuracy_std"]), signed(d_mean, d_std),
              noise_cell(noise),
              fmt_flops(tuned["tuning_flops"])]])
    return out


def verdict(d_mean: Optional[float], noise: Optional[bool]) -> str:
    """'pays' / 'hurts' (outside the noise rule), 'noise', or '-' (not run)."""
    if d_mean is None or noise is None:
        return "-"
    return "noise" if noise else ("pays" if d_mean > 0 else "hurts")


REVERSED = {"pays": "hurts", "hurts": "pays"}


def _old_verdict(old: Optional[dict[str, Any]], technique: str) -> tuple[str, str]:
    """(verdict, cell text) of the untuned Table 4 (cosine lr 0.05 base). Its schedule row was
    one-cycle against the cosine base; the tuned table's is cosine against a one-cycle base, so it
    reads reversed."""
    name = "one_cycle" if technique == "cosine" else technique
    agg = next((a for a in (old or {}).get("aggregate", []) if a["techniques"] == name), None)
    if not agg or agg["delta_mean"] is None:
        return "-", "-"
    v = verdict(agg["delta_mean"], agg["within_noise"])
    v = REVERSED.get(v, v) if technique == "cosine" else v
    return v, f"{v} ({signed(agg['delta_mean'], agg['delta_std'])}" + (
        ", one_cycle's row reversed)" if technique == "cosine" else ")")


def table4_tuned(results: Path) -> str:
    """Issue #17 point 4: Table 4 at 1e12 with every arm's peak lr tuned (selected on validation)
    against the untuned Table 4, with the compute each result and each arm's search took."""
    data = load(results, "fashion_mnist_table4_tuned")
    if not data:
        return "_not run yet_"
    old = load(results, "fashion_mnist_table4")
    rows = []
    for t in data["tuned"]:
        name = t["techniques"]
        sel = (t.get("selected") or {}).get("optimizer.lr")
        ref = name == data["reference"]
        cells = [c for c in data["cells"] if c["techniques"] == name]
        finished = sum(c["status"] in FINISHED for c in cells)
        complete = finished == len(cells)  # an arm whose search is not complete gets no verdict
        new = ("(reference)" if ref else verdict(t["tuned_delta_mean"], t["tuned_within_noise"])
               if complete else f"incomplete ({finished}/{len(cells)} runs)")
        old_v, was = ("(reference)", "(reference)") if ref else _old_verdict(old, name)
        changed = ("no" if old_v == new else "**yes**") if (
            not ref and complete and "-" not in (old_v, new)) else "-"
        rows.append([name, was,
                     f"{pm(t['untuned_test_mean'], t['untuned_test_std'])} ({t['untuned_n']})",
                     "(reference)" if ref else signed(t["untuned_delta_mean"], t["untuned_delta_std"]),
                     sel or "-", f"{pm(t['tuned_test_mean'], t['tuned_test_std'])} ({t['tuned_n']})",
                     "(reference)" if ref else signed(t["tuned_delta_mean"], t["tuned_delta_std"]),
                     new, changed, fmt_flops(t["flops_per_result"]), fmt_flops(t["tuning_flops"])])
    return table(["technique", "untuned Table 4 (§1): verdict (Δ)", "lr 0.2: test acc % (n)", "Δ",
                  "selected lr", "tuned: test acc % (n)", "Δ vs tuned baseline", "verdict",
                  "changed", "FLOPs per result", "FLOPs spent tuning"], rows)


CAPS = [3e11, 1e12, 3e12]
CURVE_IMAGE = "img/accuracy_vs_cap.png"  # relative to the document


def _by_cap(results: Path, name: str) -> dict[float, dict[str, Any]]:
    """A caps matrix's groups with finished runs, by their FLOP cap."""
    return {float(a["budget.flops"]): a for a in (load(results, name) or {}).get("aggregate", []) if a["n"]}


def _curve_points(results: Path) -> dict[str, dict[float, dict[str, Any]]]:
    """recipe label -> cap -> a seed_stats-shaped group (test accuracy mean, std, n)."""
    base = _baseline_groups(results)
    tenk = _by_cap(results, "fashion_mnist_10k_caps")
    seeds = _group(load(results, "fashion_mnist_10k_seeds"), {})
    if seeds:
        tenk[1e12] = seeds
    hand = {c: _hand_loop(c) for c in CAPS}  # one read of the hand loop's JSON per cap
    return {"hand loop, 1.5K-DW (one-cycle lr 0.1)": {c: h for c, h in hand.items() if h["n"]},
            "effrecipes baseline, 1.5K-DW (one-cycle lr 0.2)": {c: base[(c, "0.2")] for c in CAPS
                                                               if (c, "0.2") in base},
            "effrecipes <=10K recipe, 9.9K (fashion_mnist_10k.yaml)": tenk,
            "effrecipes <=10K, learned pooling, 9.3K (fashion_mnist_10k_learned_pool.yaml)":
                _by_cap(results, "fashion_mnist_10k_learned_pool_caps"),
            "effrecipes <=10K, learned pooling + SiLU, 9.3K (fashion_mnist_10k_learned_pool_silu.yaml)":
                _by_cap(results, "fashion_mnist_10k_learned_pool_silu_caps"),
            "effrecipes <=10K, learned pooling + SiLU + EMA, 9.3K (fashion_mnist_10k_learned_pool_silu_ema.yaml)":
                _by_cap(results, "fashion_mnist_10k_learned_pool_silu_ema_caps"),
            "effrecipes <=10K, learned pooling + SiLU + EMA 50ba, 9.3K (fashion_mnist_10k_learned_pool_silu_ema50.yaml)":
                _by_cap(results, "fashion_mnist_10k_learned_pool_silu_ema50_caps")}


def caps_curve(results: Path) -> str:
    """Issue #17 point 5: test accuracy of the best recipes at 3e11, 1e12 and 3e12 FLOPs."""
    points = _curve_points(results)
    rows = [[label] + [f"{pm(g[c]['test_accuracy_mean'], g[c]['test_accuracy_std'])} (n={g[c]['n']})"
                       if c in g else "-" for c in CAPS] for label, g in points.items()]
    return table(["recipe"] + [f"{c:.0e} FLOPs: test acc %" for c in CAPS], rows)


def plot_curve(results: Path, path: Path) -> None:
    """The curve as a PNG: test accuracy (mean, std bars over seeds) against the FLOP cap."""
    import matplotlib  # lazy: only when the document is rewritten
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.6), dpi=100)
    for label, g in _curve_points(results).items():
        caps = sorted(g)
        ax.errorbar(caps, [g[c]["test_accuracy_mean"] for c in caps],
                    yerr=[g[c]["test_accuracy_std"] or 0.0 for c in caps], marker="o", capsize=3,
                    label=label)
    ax.axhline(92.0, color="grey", linestyle="--", linewidth=1)
    ax.annotate("issue #17 target for <= 10K params at <= 1e12", (CAPS[0], 92.0),
                textcoords="offset points", xytext=(2, 3), fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.set_xticks(CAPS, [f"{c:.0e}" for c in CAPS])
    ax.minorticks_off()
    ax.set_xlabel("training FLOP cap")
    ax.set_ylabel("test accuracy % (mean ± std, 3 seeds)")
    ax.set_title("Fashion-MNIST: accuracy against the training FLOP cap", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: no point hidden
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None}, bbox_inches="tight")  # the legend whole
    plt.close(fig)


SECTIONS: dict[str, Callable[[Path], str]] = {
    "table4": table4,
    "table3": table3,
    "best": best_table,
    "search10k": search_table,
    "seeds10k": lambda r: aggregate_table(r, "fashion_mnist_10k_seeds"),
    "rounds10k": later_rounds_table,
    "seeds10k_best": seeds10k_best_table,
    "full10k": full_fit_table,
    "finalists10k": finalists_table,
    "baseline_caps": baseline_table,
    "baseline_bs": lambda r: grid_search_table(
        r, "fashion_mnist_baseline_bs", "data.batch_size", "optimizer.lr", ["0.1", "0.2", "0.3"],
        lambda bs, lr: f"batch {bs}, lr {lr}"),
    "baseline_wd": lambda r: grid_search_table(
        r, "fashion_mnist_baseline_wd", "scheduler.pct_start", "optimizer.weight_decay",
        ["0", "5e-05", "0.0001", "0.0002"], lambda pct, wd: f"weight decay {wd}, warm-up {pct}"),
    "table4_tuned": table4_tuned,
    "table4_whiten": lambda r: aggregate_table(r, "fashion_mnist_table4_whiten"),
    "caps_curve": caps_curve,
    "baseline_seeds": baseline_seeds_table,
    "baseline_fit": fit_table,
    "baseline_screen": lambda r: screen_table(r, "fashion_mnist_baseline_screen"),
    "baseline_screen_3e12": lambda r: screen_table(r, "fashion_mnist_baseline_screen_3e12"),
}


def rewrite(doc: Path, results: Path) -> list[str]:
    """Replace each `<!-- BEGIN x -->...<!-- END x -->` block; returns the sections written."""
    text = doc.read_text()
    written = []
    for key, build in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {key} -->\n).*?(<!-- END {key} -->)", re.S)
        if pattern.search(text):
            body = build(results)
            text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
            written.append(key)
    doc.write_text(text)
    return written


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="store_true", help="run (or resume) every matrix first")
    ap.add_argument("--specs", default=",".join(SPECS), help="matrices to run, in order")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--results", type=Path, default=REPO / "results" / "matrices")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "results.md")
    args = ap.parse_args(argv)
    if args.run:
        for spec in (s for s in args.specs.split(",") if s):
            cmd = [sys.executable, "-m", "effrecipes.matrix.cli",
                   str(REPO / "recipes" / "ablations" / f"{spec}.yaml"),
                   "--output", str(args.results), "--workers", str(args.workers)]
            if args.results.is_dir():  # cells shared between matrices train once
                cmd += ["--reuse-from", str(args.results)]
            print("$ " + " ".join(cmd), flush=True)
            code = subprocess.call(cmd)
            if code:
                print(f"{spec}: composer-ablate exited {code}; later matrices not started")
                return code
    written = rewrite(args.doc, args.results)
    if "caps_curve" in written:
        plot_curve(args.results, args.doc.parent / CURVE_IMAGE)
    print(f"{args.doc}: rewrote {', '.join(written) or 'no'} table sections")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
