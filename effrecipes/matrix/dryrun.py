"""`composer-ablate --dry-run`: every cell's planned FLOPs and an estimated wall time.

Planned FLOPs come from `runner.prepare(recipe).plan` (planned_batches * step_flops, the same
measured plan a real run uses). The wall-time estimate comes from calibration: one representative
cell (the first one that would run) trains twice for a few real batches (batches/5, then
`--calibration-batches`; FLOP cap lowered to afford just those) into temporary directories that
are deleted afterwards, with the threads a matrix worker would get. The difference between the two
gives seconds per batch after warm-up; the rest of the longer run is the fixed cost per cell.
Each cell's estimate is fixed cost + planned batches x seconds per batch x (its FLOPs per batch /
the calibrated cell's). Nothing is written to the matrix directory.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from effrecipes.errors import UserError
from effrecipes.matrix.cells import Cell, Matrix, canonical_json, cell_problem
from effrecipes.matrix.execute import plan_work, select, threads_per_worker
from effrecipes.matrix.reuse import find_reusable
from effrecipes.stats import fmt_flops
from effrecipes.matrix.state import classify
from effrecipes.recipe import validate_recipe


def _seedless_key(cell: Cell) -> str:
    data = cell.recipe.model_dump(mode="json")  # type: ignore[union-attr]
    data.pop("seed", None)
    return canonical_json(data)


def plan_cells(matrix: Matrix, cells: list[Cell], threads: Optional[int]) -> dict[str, dict[str, Any]]:
    """cell id -> {step_flops (the expected mean step), planned_batches, planned_flops, flops_cap,
    error}."""
    from effrecipes import runner  # lazy: torch and Composer, only when a dry run plans

    runner.set_threads(threads or 1)
    cache: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        key = _seedless_key(c)  # the seed changes the split, not the sizes: plan once per group
        if key not in cache:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    plan = runner.prepare(c.recipe, data_may_be_missing=True).plan  # type: ignore[arg-type]
                cache[key] = {"step_flops": plan.mean_step_flops,
                              "planned_batches": plan.planned_batches,
                              "planned_flops": plan.planned_batches * plan.mean_step_flops,
                              "flops_cap": plan.flops_cap,
                              "planned_epochs": plan.planned_epochs, "binding": plan.binding_cap,
                              "error": None}
            except UserError as e:
                cache[key] = {"error": str(e)}
            except Exception as e:  # noqa: BLE001 - reported per cell, the table goes on
                cache[key] = {"error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
        out[c.id] = cache[key]
    return out


def _timed_run(cell: Cell, plan: dict[str, Any], batches: int, threads: Optional[int]) -> dict[str, Any]:
    from effrecipes import runner  # lazy: torch and Composer, only when a dry run calibrates

    data = cell.recipe.model_dump(mode="json")  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory(prefix="composer-ablate-calib-") as tmp:
        data["budget"] = {"flops": plan["step_flops"] * (batches + 0.5),
                          "max_epochs": None, "max_seconds": None}
        data["output"] = {"root": tmp, "run_name": "calibration", "overwrite": True,
                          "save_checkpoint": False}
        data["loggers"] = {"progress_bar": False, "wandb": {"enabled": False}}
        old = os.environ.get("EFFRECIPES_THREADS")
        if threads:  # exactly what a matrix worker gets (see execute.threads_per_worker)
            os.environ["EFFRECIPES_THREADS"] = str(threads)
        else:
            os.environ.pop("EFFRECIPES_THREADS", None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                recipe = validate_recipe(data, file=f"calibration of cell {cell.id}")
                return runner.run(recipe, quiet=True).metrics
        finally:
            if old is None:
                os.environ.pop("EFFRECIPES_THREADS", None)
            else:
                os.environ["EFFRECIPES_THREADS"] = old


def calibrate(cell: Cell, plan: dict[str, Any], batches: int, threads: Optional[int]) -> dict[str, Any]:
    """Two short real runs of `cell` (batches/5 and `batches` batches) into temp dirs: the
    difference gives seconds per batch without the first batches' warm-up (FLOP counting, thread
    start-up); the longer run's remaining time is the fixed cost (data, model, warm-up, test
    evaluation, latency timing)."""
    n2 = max(2, min(batches, int(plan["planned_batches"])))
    n1 = max(1, n2 // 5)
    a = _timed_run(cell, plan, n1, threads)
    b = _timed_run(cell, plan, n2, threads)
    db = b["batches"] - a["batches"]
    per_batch = (b["train_seconds"] - a["train_seconds"]) / db if db > 0 else 0.0
    if per_batch <= 0:  # timing noise: fall back to the plain average (includes warm-up)
        per_batch = b["train_seconds"] / max(1, b["batches"])
    return {"cell_id": cell.id, "batches": b["batches"], "short_batches": a["batches"],
            "train_seconds": b["train_seconds"], "wall_seconds": b["wall_seconds"],
            "seconds_per_batch": per_batch,
            "fixed_seconds": max(0.0, b["wall_seconds"] - b["batches"] * per_batch),
            "step_flops": plan["step_flops"], "threads": b.get("threads", threads)}


def estimate_seconds(plan: dict[str, Any], cal: Optional[dict[str, Any]]) -> Optional[float]:
    if cal is None or plan.get("error"):
        return None
    scale = plan["step_flops"] / cal["step_flops"] if cal["step_flops"] else 1.0
    return cal["fixed_seconds"] + plan["planned_batches"] * cal["seconds_per_batch"] * scale


def _dur(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _calibration(candidates: list[Any], plans: dict[str, dict[str, Any]], batches: int,
                 threads: int) -> tuple[Optional[dict[str, Any]], str]:
    """(calibration, what it says) from two short real runs of the first cell that prepared."""
    usable = [c for c in candidates if not plans[c.id].get("error")]
    if batches <= 0:
        return None, "no calibration (--calibration-batches 0)"
    if not usable:
        return None, "no calibration (no cell could be prepared)"
    rep = usable[0]
    try:
        cal = calibrate(rep, plans[rep.id], batches, threads)
    except UserError as e:
        return None, f"calibration failed: {e}"
    return cal, (f"estimated from two calibration runs of cell {rep.id} ({cal['short_batches']} "
                 f"and {cal['batches']} real training batches, in a temp dir): "
                 f"{cal['seconds_per_batch'] * 1000:.1f} ms/batch at {cal['threads']} thread(s) after "
                 f"warm-up, plus {cal['fixed_seconds']:.1f}s fixed cost per cell (data, model, "
                 "warm-up, test, latency); scaled to each cell by its planned FLOPs. Rough: "
                 "per-FLOP speed differs between algorithms (augmentations cost time, not "
                 "FLOPs), periodic validation is not included, and other load on the machine "
                 "skews it")


def _headline(matrix: Matrix) -> list[str]:
    labels = [matrix.grid_labels[k] for k in matrix.grid_keys]
    n_grid = 1
    for values in matrix.spec.grid.values():
        n_grid *= len(values)
    return [f"matrix {matrix.spec.name} ({matrix.spec.algorithms.mode}, view {matrix.spec.view}): "
            f"{len(matrix.cells)} cells = {len(matrix.combos)} combos x {n_grid} grid point(s) x "
            f"{len(matrix.spec.seeds)} seed(s)"
            + (f" (grid keys: {', '.join(f'{k} as {l}' for k, l in zip(matrix.grid_keys, labels))})"
               if matrix.grid_keys else ""),
            f"matrix directory: {matrix.matrix_dir}"]


def _cell_entry(matrix: Matrix, c: Any, plans: dict[str, dict[str, Any]], why: dict[str, str],
                run_ids: set[str], cal: Optional[dict[str, Any]]
                ) -> tuple[list[str], dict[str, Any], Optional[float], bool]:
    """One cell of the dry run: its table row, its JSON entry, its estimated seconds (when it will
    run) and whether it is runnable (an invalid cell or a plan error is not)."""
    if c.error:
        problem = cell_problem(matrix, c)
        return ([c.id, "invalid", "(see below)", "", "", "", "", ""],
                {"cell_id": c.id, "techniques": list(c.techniques), "grid": c.grid, "seed": c.seed,
                 "hash": None, "overrides": c.overrides, "will_run": False, "state": "invalid",
                 "error": problem, "estimated_seconds": None}, None, False)
    p = plans[c.id]
    state = why.get(c.id) or classify(matrix, c)[0] + " (skip)"  # why: cells to run or reuse
    est = estimate_seconds(p, cal) if c.id in run_ids else None
    if p.get("error"):
        row = [c.id, state, f"error: {p['error']}", "", "", "", "", ""]
    else:
        row = [c.id, state, fmt_flops(p["step_flops"]), f"{p['planned_batches']:,}",
               f"{p['planned_epochs']:.2f}", fmt_flops(p["planned_flops"]),
               fmt_flops(p["flops_cap"]), "-" if c.id not in run_ids else _dur(est)]
    out = {"cell_id": c.id, "techniques": list(c.techniques), "grid": c.grid, "seed": c.seed,
           "hash": c.hash, "overrides": c.overrides, "will_run": c.id in run_ids, "state": state,
           **p, "estimated_seconds": est}
    return row, out, est, not p.get("error")


def dry_run(matrix: Matrix, *, workers: int = 1, only: Optional[list[str]] = None,
            retry_failed: bool = False, calibration_batches: int = 30,
            executor: str = "local", cpus_per_cell: float = 1.0,
            reuse_from: Sequence[Path] = ()) -> tuple[str, dict[str, Any], bool]:
    """(text report, JSON report, ok). Reads the matrix directory (to say what would be skipped)
    but writes nothing to it. Invalid cells (`Cell.error`) are listed, each with its message,
    and make `ok` false."""
    selected = {c.id for c in select(matrix, only)}
    invalid = matrix.invalid  # every one is listed (selected or not): none can run until fixed
    cells = [c for c in matrix.cells if c.id in selected or c.error]
    valid = [c for c in cells if not c.error]
    threads = max(1, int(cpus_per_cell)) if executor == "ray" else threads_per_worker(workers)
    to_run, _, why = plan_work(matrix, valid, retry_failed)
    reusable = find_reusable(matrix, to_run, list(reuse_from)) if reuse_from else {}
    for cid, source in reusable.items():
        why[cid] = f"reuse {source.name}"  # the run's name in the matrix it comes from
    to_run = [c for c in to_run if c.id not in reusable]
    run_ids = {c.id for c in to_run}
    plans = plan_cells(matrix, valid, threads)
    if invalid:
        cal, cal_note = None, f"no calibration ({len(invalid)} invalid cell(s) first need fixing)"
    else:
        cal, cal_note = _calibration(to_run or valid, plans, calibration_batches, threads)

    header = ["cell", "state", "FLOPs/batch", "batches", "epochs", "planned FLOPs", "cap", "est. wall"]
    rows, out_cells = [], []
    total_est = 0.0
    ok = True
    for c in cells:
        row, out, est, cell_ok = _cell_entry(matrix, c, plans, why, run_ids, cal)
        rows.append(row)
        out_cells.append(out)
        total_est += est or 0.0
        ok = ok and cell_ok
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    par = max(1, workers)
    lines = _headline(matrix) + ["", fmt.format(*header)]
    lines += [fmt.format(*r) for r in rows]
    if invalid:
        lines += ["", f"invalid cells: {len(invalid)} of {len(matrix.cells)} (fix the spec or the base "
                  "recipe; nothing can run until every cell is valid):"]
        lines += [f"  {c.id}: {cell_problem(matrix, c)}" for c in invalid]
    to_run_text = (f"to run: nothing until the invalid cells are fixed (then {len(to_run)} of "
                   f"{len(cells)} listed cells)" if invalid else
                   f"to run: {len(to_run)} of {len(cells)} selected cells")
    lines += ["", f"{to_run_text}; estimated wall time "
              f"{_dur(total_est / par if cal else None)} with {par} parallel "
              f"{'task' if executor == 'ray' else 'worker'}(s) (sum {_dur(total_est if cal else None)})",
              f"estimate: {cal_note}.",
              "planned FLOPs = planned_batches x the expected FLOPs per batch (runner.prepare); nothing "
              "was written to the matrix directory."]
    report = {"matrix": matrix.spec.name, "matrix_dir": str(matrix.matrix_dir),
              "view": matrix.spec.view, "cells": out_cells, "calibration": cal,
              "calibration_note": cal_note, "estimated_total_seconds": total_est if cal else None,
              "estimated_wall_seconds": total_est / par if cal else None, "parallel": par,
              "invalid": len(invalid)}
    return "\n".join(lines), report, ok


__all__ = ["dry_run", "plan_cells", "calibrate", "estimate_seconds"]
