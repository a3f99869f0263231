"""The report's tables as plain data (header, cells with display text and sort key), shared by the
HTML and Markdown renderers so both show the same numbers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from effrecipes.report.load import Collection, num


@dataclass
class Cell:
    text: str
    sort: Optional[float | str] = None   # None: sorts last
    css: str = ""                        # "pos" / "neg" / "muted" tints in HTML


@dataclass
class Table:
    key: str
    header: list[str]
    rows: list[list[Cell]]
    highlight: list[bool] = field(default_factory=list)
    caption: str = ""
    numeric: list[bool] = field(default_factory=list)


def fmt_flops(x: Any) -> str:
    x = num(x)
    if x is None:
        return "-"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale * 0.9995:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def fmt(x: Any, spec: str = ".2f", signed: bool = False) -> str:
    x = num(x)
    if x is None:
        return "-"
    return format(x, ("+" if signed else "") + spec)


def pm(m: Optional[float], s: Optional[float], signed: bool = False) -> str:
    if m is None:
        return "-"
    text = fmt(m, signed=signed)
    return f"{text} ± {s:.2f}" if s is not None else text


def _signed_css(x: Optional[float], noise: Optional[bool] = None) -> str:
    if x is None:
        return ""
    if noise:
        return "muted"
    return "pos" if x > 0 else "neg" if x < 0 else ""


def results_table(c: Collection) -> Table:
    """One row per cell (configuration): mean +/- std over seeds, delta vs baseline, paper."""
    has_ref = c.reference is not None
    has_paper = any(g.paper is not None for g in c.groups)
    header = ["cell"] + list(c.grid_keys) + ["n", "test acc % (mean ± std)"]
    numeric = [False] * (1 + len(c.grid_keys)) + [True, True]
    if has_ref:
        header += [f"Δ vs {c.reference}", "within noise"]
        numeric += [True, False]
    header += ["best val %", "FLOPs used", "params"]
    numeric += [True, True, True]
    if has_paper:
        header += ["paper", "ours − paper"]
        numeric += [True, True]
    rows, highlight = [], []
    for g in c.groups:
        note = ""
        if g.n_failed or g.n_diverged:
            note = f" ({g.n_failed} failed, {g.n_diverged} diverged)"
        row = [Cell(g.techniques + (" ★" if g.best else ""), g.techniques)]
        row += [Cell(g.grid.get(k, "-"), num(g.grid.get(k)) if num(g.grid.get(k)) is not None
                     else g.grid.get(k)) for k in c.grid_keys]
        row += [Cell(f"{g.n}/{g.n_cells}{note}", g.n),
                Cell(pm(g.acc_mean, g.acc_std), g.acc_mean)]
        if has_ref:
            if g.is_reference:
                row.append(Cell("(baseline)", 0.0, "muted"))
                row.append(Cell("-", None))
            else:
                row.append(Cell(pm(g.delta_mean, g.delta_std, signed=True), g.delta_mean,
                                _signed_css(g.delta_mean, g.within_noise)))
                wn = g.within_noise
                row.append(Cell("-" if wn is None else ("yes" if wn else "no"),
                                None if wn is None else ("yes" if wn else "no")))
        row += [Cell(fmt(g.val_mean), g.val_mean),
                Cell(fmt_flops(g.flops_mean) + (f" ± {fmt_flops(g.flops_std)}"
                                                if g.flops_std else ""), g.flops_mean),
                Cell("-" if g.params is None else f"{g.params:,}", g.params)]
        if has_paper:
            diff = g.ours_minus_paper
            row += [Cell(fmt(g.paper), g.paper),
                    Cell(fmt(diff, signed=True), diff, _signed_css(diff))]
        rows.append(row)
        highlight.append(g.best)
    cap = ["test accuracy in %, mean ± sample std over seeds"]
    if has_ref:
        cap.append(f"Δ: mean test accuracy minus the `{c.reference}` cell with the same settings; "
                   f"{c.meta.get('noise_rule') or ''}".rstrip("; "))
    if has_paper:
        cap.append("paper: " + "; ".join(c.paper_sources or ["the runs' recorded reference"])
                   + " (ours is test accuracy; the paper's metric is named in its source)")
    best = c.best
    if best is not None:
        cap.append(f"★ best cell: {best.label} ({pm(best.acc_mean, best.acc_std)} %)")
    return Table("results", header, rows, highlight, ". ".join(cap) + ".", numeric)


def cells_table(c: Collection) -> Table:
    """One row per run (matrix cell or run directory), seeds separate."""
    header = ["run", "status", "seed", "test acc %", "best val %", "FLOPs used / cap", "stop",
              "epochs", "params", "latency ms", "wall s"]
    numeric = [False, False, True, True, True, True, False, True, True, True, True]
    rows = []
    for r in c.cells:
        rows.append([
            Cell(str(r.get("cell_id")), str(r.get("cell_id"))),
            Cell(str(r.get("status") or "-"), str(r.get("status") or ""),
                 "" if r.get("status") in ("done", None) else "neg"),
            Cell("-" if r.get("seed") is None else str(r.get("seed")), num(r.get("seed"))),
            Cell(fmt(r.get("test_accuracy")), num(r.get("test_accuracy"))),
            Cell(fmt(r.get("best_val_accuracy")), num(r.get("best_val_accuracy"))),
            Cell(f"{fmt_flops(r.get('flops_used'))} / {fmt_flops(r.get('flops_cap'))}",
                 num(r.get("flops_used"))),
            Cell(str(r.get("stop_reason") or "-"), str(r.get("stop_reason") or "")),
            Cell(fmt(r.get("epochs")), num(r.get("epochs"))),
            Cell("-" if num(r.get("params")) is None else f"{int(r['params']):,}", num(r.get("params"))),
            Cell(fmt(r.get("cpu_latency_ms_per_image"), ".3f"), num(r.get("cpu_latency_ms_per_image"))),
            Cell(fmt(r.get("wall_seconds"), ".1f"), num(r.get("wall_seconds"))),
        ])
    return Table("cells", header, rows, [False] * len(rows), "", numeric)


def summary_lines(c: Collection) -> list[tuple[str, str]]:
    """Key facts shown above the tables."""
    out: list[tuple[str, str]] = []
    kind = {"run": "run directory", "matrix": "ablation matrix", "runs": "directory of runs"}[c.kind]
    out.append(("source", f"{kind} {c.root}"))
    runs = c.runs
    datasets = sorted({str(r.metrics.get("dataset")) for r in runs})
    models = sorted({str(r.metrics.get("model")) for r in runs})
    out.append(("dataset / model", f"{', '.join(datasets)} / {', '.join(models)}"))
    caps = sorted({x for r in runs if (x := r.get("flops_cap")) is not None})
    out.append(("FLOP cap", ", ".join(fmt_flops(x) for x in caps) or "none (epochs)"))
    if c.kind == "matrix":
        m = c.meta
        if m.get("view"):
            out.append(("view", str(m["view"])))
        if m.get("mode"):
            out.append(("mode", str(m["mode"])))
        counts = m.get("counts") or {}
        out.append(("cells", f"{len(c.cells)} ("
                    + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")"))
        out.append(("aggregates from", str(m.get("aggregates_from"))))
        if m.get("updated"):
            out.append(("results updated", str(m["updated"])))
    else:
        out.append(("runs", f"{len(runs)} in {len(c.groups)} configuration(s)"))
    best = c.best
    if best is not None:
        out.append(("best cell", f"{best.label}: {pm(best.acc_mean, best.acc_std)} % test accuracy "
                    f"at {fmt_flops(best.flops_mean)} training FLOPs"))
    return out
