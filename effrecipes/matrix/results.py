"""results.csv / results.json / results.md of a matrix, rebuilt from the run directories only.

One row per cell of the spec (never more: rows are keyed by cell id), plus an aggregate table
grouped by everything but the seed: mean +/- std of test accuracy over seeds and the delta
against the reference group (the baseline with the same grid values).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

from effrecipes.recipe import read_recipe_data
from effrecipes.rundir import TABLE_FIELDS
from effrecipes.matrix.cells import Matrix, combo_label, fmt_value, is_cell_id
from effrecipes.files import read_dict
from effrecipes.matrix.state import (DIVERGED, DONE, FAILED, INTERRUPTED, PENDING, RUNNING,
                                     atomic_write_json, atomic_write_text, failure,
                                     finished_metrics, metrics_status, now, resumable)
from effrecipes.stats import (NOISE_RULE, TUNE_RULE, aggregate as aggregate_rows, fmt, fmt_count,
                              fmt_flops, md_table, pm, signed_pm, status_counts,
                              tuned as tuned_rows, yes_no)

RESULTS_JSON = "results.json"

METRIC_COLUMNS = list(TABLE_FIELDS)  # the run contract's columns of results.csv

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


def reference_label(matrix: Matrix) -> Optional[str]:
    return combo_label(matrix.reference) if matrix.reference is not None else None


def aggregate(matrix: Matrix, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The aggregate rows (effrecipes.stats.aggregate): mean +/- std over seeds, the delta against
    the reference combination with the same grid values, the published figure."""
    published = matrix.spec.reference.values if matrix.spec.reference else {}
    return aggregate_rows(rows, matrix.grid_keys, reference_label(matrix), published)


def tuned_view(matrix: Matrix, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-arm tuned and untuned results (effrecipes.stats.tuned), when the spec tunes keys."""
    if not matrix.spec.tune:
        return []
    base = read_recipe_data(matrix.base_path)
    default = {k: fmt_value(_dotted(base, k)) for k in matrix.spec.tune}
    return tuned_rows(groups, matrix.grid_keys, matrix.spec.tune, reference_label(matrix), default)


def _dotted(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _md_tuned(matrix: Matrix, rows: list[dict[str, Any]]) -> str:
    fixed = [k for k in matrix.grid_keys if k not in matrix.spec.tune]
    ref = reference_label(matrix)
    header = (["techniques"] + fixed + ["selected (on val)", "n", "tuned test acc",
              f"Δ vs tuned {ref or '-'}", "within noise", "untuned test acc",
              f"Δ vs untuned {ref or '-'}", "within noise", "FLOPs / result", "FLOPs tuning"])
    body = []
    for r in rows:
        sel = ", ".join(f"{k}={v}" for k, v in (r["selected"] or {}).items()) or "-"
        body.append([r["techniques"]] + [str(r[k]) for k in fixed] + [
            sel, str(r["tuned_n"]), pm(r["tuned_test_mean"], r["tuned_test_std"]),
            "(reference)" if r["techniques"] == ref else signed_pm(r["tuned_delta_mean"], r["tuned_delta_std"]),
            yes_no(r["tuned_within_noise"]), pm(r["untuned_test_mean"], r["untuned_test_std"]),
            "(reference)" if r["techniques"] == ref else signed_pm(r["untuned_delta_mean"], r["untuned_delta_std"]),
            yes_no(r["untuned_within_noise"]), fmt_flops(r["flops_per_result"]), fmt_flops(r["tuning_flops"])])
    return md_table(header, body)


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return status_counts((r["status"] for r in rows),
                         (DONE, DIVERGED, FAILED, RUNNING, INTERRUPTED, PENDING))


def _md_head(matrix: Matrix, rows: list[dict[str, Any]]) -> list[str]:
    """The bullet list above the tables: view, spec, cells, the delta and the noise rule."""
    spec = matrix.spec
    c = counts(rows)
    caps = {r["flops_cap"] for r in rows if r["flops_cap"] is not None}
    caps_known = {cl.recipe.budget.flops for cl in matrix.cells if cl.recipe}
    cap_text = ", ".join(fmt_flops(x) for x in sorted(caps or {x for x in caps_known if x})) or "none"
    ref = reference_label(matrix)
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
    return lines


def _md_aggregate(matrix: Matrix, groups: list[dict[str, Any]]) -> str:
    ref = reference_label(matrix)
    published = matrix.spec.reference is not None
    header = ["techniques"] + matrix.grid_keys + ["n", "test acc mean ± std", f"Δ vs {ref or '-'}",
                                                  "within noise", "best val mean", "FLOPs used",
                                                  "params"] + (["published"] if published else [])
    body = []
    for g in groups:
        note = "" if not (g["n_failed"] or g["n_diverged"]) else \
            f" ({g['n_failed']} failed, {g['n_diverged']} diverged)"
        row = [g["techniques"]] + [str(g[k]) for k in matrix.grid_keys] + [
            f"{g['n']}/{g['n_cells']}{note}",
            pm(g["test_accuracy_mean"], g["test_accuracy_std"]),
            "(reference)" if g["techniques"] == ref else signed_pm(g["delta_mean"], g["delta_std"]),
            yes_no(g["within_noise"]), fmt(g["best_val_accuracy_mean"]),
            fmt_flops(g["flops_used_mean"]), fmt_count(g["params"])]
        body.append(row + ([fmt(g["published"])] if published else []))
    return md_table(header, body)


def _md_cells(rows: list[dict[str, Any]]) -> str:
    header = ["cell", "status", "test acc", "best val", "FLOPs used / cap", "stop", "epochs",
              "params", "size KiB", "latency ms", "wall s"]
    body = []
    for r in rows:
        size = r["model_size_bytes"]
        body.append([r["cell_id"], r["status"], fmt(r["test_accuracy"]), fmt(r["best_val_accuracy"]),
                     f"{fmt_flops(r['flops_used'])} / {fmt_flops(r['flops_cap'])}",
                     str(r["stop_reason"] or "-"), fmt(r["epochs"]), fmt_count(r["params"]),
                     fmt(None if size is None else size / 1024, ".1f"),
                     fmt(r["cpu_latency_ms_per_image"], ".3f"), fmt(r["wall_seconds"], ".1f")])
    return md_table(header, body)


def render_md(matrix: Matrix, rows: list[dict[str, Any]], groups: list[dict[str, Any]],
              tuned: Optional[list[dict[str, Any]]] = None) -> str:
    lines = _md_head(matrix, rows) + ["## Aggregate over seeds (test accuracy, %)", ""]
    lines += [_md_aggregate(matrix, groups), ""]
    if tuned:
        lines += [f"## Tuned per arm: {', '.join(matrix.spec.tune)} (test accuracy, %)", "",
                  f"{TUNE_RULE}.", "", _md_tuned(matrix, tuned), ""]
    lines += ["## Cells", "", _md_cells(rows)]
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
    tuned = tuned_view(matrix, groups)
    d = matrix.matrix_dir
    obj = {"matrix": matrix.spec.name, "spec": str(matrix.spec_path), "base": str(matrix.base_path),
           "view": matrix.spec.view, "mode": matrix.spec.algorithms.mode,
           "reference": reference_label(matrix),
           "noise_rule": NOISE_RULE, "updated": now(), "counts": counts(rows),
           "cells": rows, "aggregate": groups}
    if tuned:
        obj.update(tune=list(matrix.spec.tune), tune_rule=TUNE_RULE, tuned=tuned)
    atomic_write_text(d / "results.csv", render_csv(matrix, rows))
    atomic_write_json(d / RESULTS_JSON, obj)
    atomic_write_text(d / "results.md", render_md(matrix, rows, groups, tuned))
    return obj


_TEXT_FIELDS = ("matrix", "spec", "base", "view", "mode", "reference", "noise_rule", "updated",
                "tune_rule")


def read_results(matrix_dir: Path, problems: Optional[list[str]] = None) -> Optional[dict[str, Any]]:
    """The results.json `write_results` wrote (the one reader: `composer-report` reads it here),
    its shape checked field by field: only well-formed `cells` (a dict with a valid cell id) and
    `aggregate` / `tuned` entries (dicts with `techniques`) are kept, and a top-level field of the
    wrong type is dropped (its consumer falls back, e.g. `counts` to counting the cells), each
    drop said in `problems`. None when the file is missing, unreadable (see
    `effrecipes.files`) or has no list of cells (`problems` says why, unless missing)."""
    said = problems if problems is not None else []
    obj, why = read_dict(Path(matrix_dir) / RESULTS_JSON)
    if obj is not None and not isinstance(obj.get("cells"), list):
        obj, why = None, "no list of cells"
    if obj is None:
        if why:
            said.append(f"results.json is unreadable ({why}); aggregates computed from the run "
                        "directories")
        return None

    def keep(key: str, entries: list[Any], ok: Any) -> list[Any]:
        kept = [e for e in entries if ok(e)]
        if len(kept) < len(entries):
            said.append(f"results.json: {len(entries) - len(kept)} malformed `{key}` entries ignored")
        return kept

    def listed(key: str) -> list[Any]:
        v = obj.get(key)
        if v is None or isinstance(v, list):
            return v or []
        said.append(f"results.json: `{key}` is not a list; ignored")
        return []

    obj["cells"] = keep("cells", obj["cells"], lambda r: isinstance(r, dict) and is_cell_id(r.get("cell_id")))
    obj["aggregate"] = keep("aggregate", listed("aggregate"),
                            lambda a: isinstance(a, dict) and isinstance(a.get("techniques"), str))
    obj["tuned"] = keep("tuned", listed("tuned"),
                        lambda t: isinstance(t, dict) and isinstance(t.get("techniques"), str)
                        and isinstance(t.get("selected"), (dict, type(None))))
    for key in _TEXT_FIELDS:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            said.append(f"results.json: `{key}` is not text; ignored")
            obj[key] = None
    tune = obj.get("tune")
    if tune is not None and not (isinstance(tune, list) and all(isinstance(k, str) for k in tune)):
        said.append("results.json: `tune` is not a list of keys; ignored")
        obj["tune"] = None
    c = obj.get("counts")
    if c is not None and not (isinstance(c, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in c.items())):
        said.append("results.json: `counts` is not a mapping of status to count; recounted")
        obj["counts"] = None
    return obj


def summary_table(matrix: Matrix, groups: list[dict[str, Any]]) -> str:
    """A short plain-text aggregate for the terminal."""
    ref = reference_label(matrix)
    out = []
    for g in groups:
        grid = " ".join(f"{k}={g[k]}" for k in matrix.grid_keys)
        delta = "ref" if g["techniques"] == ref else signed_pm(g["delta_mean"], g["delta_std"])
        noise = "" if g["within_noise"] is None else ("  (within noise)" if g["within_noise"] else "")
        acc = pm(g["test_accuracy_mean"], g["test_accuracy_std"])
        out.append(f"  {g['techniques']:<32} {grid:<24} n={g['n']}  acc {acc:<16} Δ {delta}{noise}")
    return "\n".join(out)
