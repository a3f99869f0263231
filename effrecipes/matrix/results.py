"""results.csv / results.json / results.md of a matrix, rebuilt from the run directories only.

One row per cell of the spec (never more: rows are keyed by cell id), plus an aggregate table
grouped by everything but the seed: mean +/- std of test accuracy over seeds and the delta
against the reference group (the baseline with the same grid values).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Optional

from effrecipes.stats import mean_std, num as _num
from effrecipes.matrix.cells import Matrix, combo_label, fmt_value
from effrecipes.matrix.state import (DIVERGED, DONE, FAILED, FINISHED, INTERRUPTED, PENDING,
                                     RUNNING, atomic_write_json, atomic_write_text, failure,
                                     finished_metrics, metrics_status, now, resumable)

METRIC_COLUMNS = ["test_accuracy", "best_val_accuracy", "flops_used", "flops_cap", "stop_reason",
                  "epochs", "params", "model_size_bytes", "cpu_latency_ms_per_image",
                  "wall_seconds", "train_seconds", "samples_per_second"]

NOISE_RULE = ("within_noise = yes when |delta| <= sqrt(std_cell^2 + std_reference^2) (the sample "
              "standard deviations over seeds, ddof=1), or when either group has fewer than 2 "
              "finished seeds (no noise estimate: never call such a difference real)")

VIEW_TEXT = {
    "equal_flops": "every cell has the same training-FLOP cap; techniques that cost "
                   "more per step (e.g. SAM's two passes) get fewer steps",
    "equal_epochs": "every cell trains the same number of epochs (budget.flops "
                    "removed, as in the paper); FLOPs used differ per cell",
}


def cell_rows(matrix: Matrix, running: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    rows = []
    for cell in matrix.cells:
        row: dict[str, Any] = {"cell_id": cell.id, "techniques": cell.label}
        for k in matrix.grid_keys:
            row[k] = fmt_value(cell.grid[k])
        row["seed"] = cell.seed
        metrics = finished_metrics(matrix, cell)
        error = None
        if metrics is not None:
            status = metrics_status(metrics)
        elif cell.id in running:
            status = RUNNING
        elif (f := failure(matrix, cell)) is not None:
            status, error = FAILED, f.get("error")
        elif resumable(matrix, cell):
            status = INTERRUPTED
        else:
            status = PENDING
        row["status"] = status
        for col in METRIC_COLUMNS:
            row[col] = (metrics or {}).get(col)
        row["hash"] = cell.hash
        row["error"] = error
        rows.append(row)
    return rows


def aggregate(matrix: Matrix, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells = {c.id: c for c in matrix.cells}
    groups: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(cells[row["cell_id"]].group, []).append(row)
    ref_label = combo_label(matrix.reference) if matrix.reference is not None else None
    ref_values = (matrix.spec.reference.values if matrix.spec.reference else {})

    def stats(members: list[dict[str, Any]]) -> dict[str, Any]:
        fin = [r for r in members if r["status"] in FINISHED]
        acc = [x for r in fin if (x := _num(r["test_accuracy"])) is not None]
        val = [x for r in fin if (x := _num(r["best_val_accuracy"])) is not None]
        flops = [x for r in fin if (x := _num(r["flops_used"])) is not None]
        m, s = mean_std(acc)
        return {"n": len(acc), "n_cells": len(members),
                "n_failed": sum(r["status"] == FAILED for r in members),
                "n_diverged": sum(r["status"] == DIVERGED for r in members),
                "test_accuracy_mean": m, "test_accuracy_std": s,
                "best_val_accuracy_mean": mean_std(val)[0], "flops_used_mean": mean_std(flops)[0],
                "params": next((r["params"] for r in fin if r["params"] is not None), None)}

    out = []
    computed = {key: stats(members) for key, members in groups.items()}
    for (label, gvals), members in groups.items():
        st = computed[(label, gvals)]
        agg: dict[str, Any] = {"techniques": label}
        agg.update(dict(zip(matrix.grid_keys, gvals)))
        agg.update(st)
        ref = computed.get((ref_label, gvals)) if ref_label is not None else None
        agg["reference"] = ref_label
        agg["delta_mean"] = agg["delta_std"] = agg["within_noise"] = None
        if ref is not None and label != ref_label and st["test_accuracy_mean"] is not None \
                and ref["test_accuracy_mean"] is not None:
            agg["delta_mean"] = st["test_accuracy_mean"] - ref["test_accuracy_mean"]
            if st["n"] >= 2 and ref["n"] >= 2:
                agg["delta_std"] = math.sqrt(st["test_accuracy_std"] ** 2 + ref["test_accuracy_std"] ** 2)
                agg["within_noise"] = abs(agg["delta_mean"]) <= agg["delta_std"]
            else:
                agg["within_noise"] = True
        agg["published"] = ref_values.get(label)
        out.append(agg)
    return out


# --------------------------------------------------------------------------- formatting

def _pm(m: Optional[float], s: Optional[float], signed: bool = False) -> str:
    if m is None:
        return "-"
    text = f"{m:+.2f}" if signed else f"{m:.2f}"
    return f"{text} ± {s:.2f}" if s is not None else text


def _flops(x: Any) -> str:
    x = _num(x)
    if x is None:
        return "-"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale * 0.9995:  # 999.9G reads as 1T, not 1e+03G
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _f(x: Any, fmt: str) -> str:
    x = _num(x)
    return "-" if x is None else format(x, fmt)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in esc])


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    c = {s: 0 for s in (DONE, DIVERGED, FAILED, RUNNING, INTERRUPTED, PENDING)}
    for r in rows:
        c[r["status"]] = c.get(r["status"], 0) + 1
    return c


def render_md(matrix: Matrix, rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> str:
    spec = matrix.spec
    c = counts(rows)
    caps = {r["flops_cap"] for r in rows if r["flops_cap"] is not None}
    caps_known = {cl.recipe.budget.flops for cl in matrix.cells if cl.recipe}
    cap_text = ", ".join(_flops(x) for x in sorted(caps or {x for x in caps_known if x})) or "none"
    ref = combo_label(matrix.reference) if matrix.reference is not None else None
    lines = [f"# Ablation matrix `{spec.name}`", "",
             f"- view: **{spec.view}** — {VIEW_TEXT[spec.view]}",
             f"- spec: `{matrix.spec_path.resolve()}`; base recipe: `{matrix.base_path}`",
             f"- mode: {spec.algorithms.mode}; techniques: {', '.join(matrix.techniques)}; "
             f"seeds: {', '.join(map(str, spec.seeds))}"
             + (f"; grid: {', '.join(matrix.grid_keys)}" if matrix.grid_keys else ""),
             f"- FLOP cap: {cap_text}",
             f"- cells: {len(rows)} (done {c[DONE]}, diverged {c[DIVERGED]}, failed {c[FAILED]}, "
             f"running {c[RUNNING]}, interrupted {c[INTERRUPTED]}, pending {c[PENDING]})",
             f"- delta: test accuracy minus the `{ref}` group with the same grid values"
             if ref else "- delta: none (the matrix has no baseline combination)",
             f"- noise rule: {NOISE_RULE}",
             f"- updated: {now()}", ""]
    if spec.reference:
        lines.insert(-1, f"- published: {spec.reference.source} ({spec.reference.metric})")
    lines += ["## Aggregate over seeds (test accuracy, %)", ""]
    header = ["techniques"] + matrix.grid_keys + ["n", "test acc mean ± std", f"Δ vs {ref or '-'}",
                                                  "within noise", "best val mean", "FLOPs used",
                                                  "params"]
    if spec.reference:
        header.append("published")
    body = []
    for g in groups:
        wn = g["within_noise"]
        note = "" if not (g["n_failed"] or g["n_diverged"]) else \
            f" ({g['n_failed']} failed, {g['n_diverged']} diverged)"
        row = [g["techniques"]] + [str(g[k]) for k in matrix.grid_keys] + [
            f"{g['n']}/{g['n_cells']}{note}",
            _pm(g["test_accuracy_mean"], g["test_accuracy_std"]),
            "(reference)" if g["techniques"] == ref else _pm(g["delta_mean"], g["delta_std"], True),
            "-" if wn is None else ("yes" if wn else "no"),
            _f(g["best_val_accuracy_mean"], ".2f"), _flops(g["flops_used_mean"]),
            "-" if g["params"] is None else f"{int(g['params']):,}"]
        if spec.reference:
            row.append(_f(g["published"], ".2f"))
        body.append(row)
    lines += _md_table(header, body) + ["", "## Cells", ""]
    header = ["cell", "status", "test acc", "best val", "FLOPs used / cap", "stop", "epochs",
              "params", "size KiB", "latency ms", "wall s"]
    body = []
    for r in rows:
        body.append([r["cell_id"], r["status"], _f(r["test_accuracy"], ".2f"),
                     _f(r["best_val_accuracy"], ".2f"),
                     f"{_flops(r['flops_used'])} / {_flops(r['flops_cap'])}", str(r["stop_reason"] or "-"),
                     _f(r["epochs"], ".2f"),
                     "-" if r["params"] is None else f"{int(r['params']):,}",
                     _f(None if r["model_size_bytes"] is None else r["model_size_bytes"] / 1024, ".1f"),
                     _f(r["cpu_latency_ms_per_image"], ".3f"), _f(r["wall_seconds"], ".1f")])
    lines += _md_table(header, body)
    failed = [r for r in rows if r["status"] == FAILED]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [f"- `{r['cell_id']}`: {r['error']}" for r in failed]
        lines += ["", f"Details: `{matrix.matrix_dir / 'failed'}/<cell>.json`; re-run them with "
                  "`--retry-failed`."]
    return "\n".join(lines) + "\n"


def render_csv(matrix: Matrix, rows: list[dict[str, Any]]) -> str:
    cols = ["cell_id", "techniques"] + matrix.grid_keys + ["seed", "status"] + METRIC_COLUMNS + \
        ["hash", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return buf.getvalue()


def write_results(matrix: Matrix, running: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Rebuild and atomically write results.csv/json/md; returns the JSON object."""
    rows = cell_rows(matrix, running)
    groups = aggregate(matrix, rows)
    d = matrix.matrix_dir
    obj = {"matrix": matrix.spec.name, "spec": str(matrix.spec_path), "base": str(matrix.base_path),
           "view": matrix.spec.view, "mode": matrix.spec.algorithms.mode,
           "reference": combo_label(matrix.reference) if matrix.reference is not None else None,
           "noise_rule": NOISE_RULE, "updated": now(), "counts": counts(rows),
           "cells": rows, "aggregate": groups}
    atomic_write_text(d / "results.csv", render_csv(matrix, rows))
    atomic_write_json(d / "results.json", obj)
    atomic_write_text(d / "results.md", render_md(matrix, rows, groups))
    return obj


def summary_table(matrix: Matrix, groups: list[dict[str, Any]]) -> str:
    """A short plain-text aggregate for the terminal."""
    ref = combo_label(matrix.reference) if matrix.reference is not None else None
    out = []
    for g in groups:
        grid = " ".join(f"{k}={g[k]}" for k in matrix.grid_keys)
        delta = "ref" if g["techniques"] == ref else _pm(g["delta_mean"], g["delta_std"], True)
        noise = "" if g["within_noise"] is None else ("  (within noise)" if g["within_noise"] else "")
        out.append(f"  {g['techniques']:<32} {grid:<24} n={g['n']}  acc {_pm(g['test_accuracy_mean'], g['test_accuracy_std']):<16}"
                   f" Δ {delta}{noise}")
    return "\n".join(out)
