"""The report's tables as plain data (header, cells with display text and sort key), shared by the
HTML and Markdown renderers so both show the same numbers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from effrecipes.report.load import Collection, Group
from effrecipes.stats import fmt, fmt_count, fmt_flops, md_table, num, pm, signed_pm, yes_no


@dataclass
class TableCell:
    """One cell of a report table: its text, its sort key and its tint."""

    text: str
    sort: Optional[float | str] = None   # None: sorts last
    css: str = ""                        # "pos" / "neg" / "muted" tints in HTML


@dataclass
class Table:
    key: str
    header: list[str]
    rows: list[list[TableCell]]
    highlight: list[bool] = field(default_factory=list)
    caption: str = ""
    numeric: list[bool] = field(default_factory=list)


def table_md(t: Table) -> str:
    """A report table as markdown (effrecipes.stats.md_table): numeric columns right-aligned,
    the highlighted (best) row in bold."""
    return md_table(t.header, [[c.text for c in row] for row in t.rows], t.numeric,
                    t.highlight or None)


def _signed_css(x: Optional[float], noise: Optional[bool] = None) -> str:
    if x is None:
        return ""
    if noise:
        return "muted"
    return "pos" if x > 0 else "neg" if x < 0 else ""


def _results_header(c: Collection, has_paper: bool) -> tuple[list[str], list[bool]]:
    header = ["cell"] + list(c.grid_keys) + ["n", "test acc % (mean ± std)"]
    numeric = [False] * (1 + len(c.grid_keys)) + [True, True]
    if c.reference is not None:
        header += [f"Δ vs {c.reference}", "within noise"]
        numeric += [True, False]
    header += ["best val %", "FLOPs used", "params"]
    numeric += [True, True, True]
    if has_paper:
        header += ["paper", "ours − paper"]
        numeric += [True, True]
    return header, numeric


def _results_row(c: Collection, g: Group, has_paper: bool) -> list[TableCell]:
    note = f" ({g.n_failed} failed, {g.n_diverged} diverged)" if g.n_failed or g.n_diverged else ""
    row = [TableCell(g.techniques + (" ★" if g.best else ""), g.techniques)]
    row += [TableCell(g.grid.get(k, "-"), num(g.grid.get(k)) if num(g.grid.get(k)) is not None
                      else g.grid.get(k)) for k in c.grid_keys]
    row += [TableCell(f"{g.n}/{g.n_cells}{note}", g.n), TableCell(pm(*g.acc), g.acc.mean)]
    if c.reference is not None:
        if g.is_reference:
            row += [TableCell("(baseline)", 0.0, "muted"), TableCell("-", None)]
        else:
            wn = None if g.within_noise is None else yes_no(g.within_noise)
            row += [TableCell(signed_pm(*g.delta), g.delta.mean,
                              _signed_css(g.delta.mean, g.within_noise)),
                    TableCell(yes_no(g.within_noise), wn)]
    flops = fmt_flops(g.flops.mean) + (f" ± {fmt_flops(g.flops.std)}" if g.flops.std else "")
    row += [TableCell(fmt(g.val.mean), g.val.mean), TableCell(flops, g.flops.mean),
            TableCell(fmt_count(g.params), g.params)]
    if has_paper:
        diff = g.ours_minus_paper
        row += [TableCell(fmt(g.paper), g.paper), TableCell(fmt(diff, signed=True), diff, _signed_css(diff))]
    return row


def _not_starred(c: Collection, best: Group) -> str:
    """'' or the cells with a higher mean than the star's that are within noise of their
    reference (effrecipes.stats.BEST_RULE), said after the star."""
    higher = [g.label for g in c.groups if g.within_noise and g.acc.mean is not None
              and best.acc.mean is not None and g.acc.mean > best.acc.mean]
    if not higher:
        return ""
    return f"; a higher mean but within noise of `{c.reference}`, so not starred: {', '.join(higher)}"


def best_text(c: Collection) -> Optional[str]:
    """The star's caption: the best cell, and the cells with a higher mean left without it."""
    best = c.best
    if best is None:
        return None
    return f"★ best cell: {best.label} ({pm(*best.acc)} %){_not_starred(c, best)}"


def results_table(c: Collection) -> Table:
    """One row per cell (configuration): mean +/- std over seeds, delta vs baseline, paper."""
    has_paper = any(g.paper is not None for g in c.groups)
    header, numeric = _results_header(c, has_paper)
    rows = [_results_row(c, g, has_paper) for g in c.groups]
    cap = ["test accuracy in %, mean ± sample std over seeds"]
    if c.reference is not None:
        cap.append(f"Δ: mean test accuracy minus the `{c.reference}` cell with the same settings; "
                   f"{c.meta.get('noise_rule') or ''}".rstrip("; "))
    if has_paper:
        cap.append("paper: " + "; ".join(c.paper_sources or ["the runs' recorded reference"])
                   + " (ours is test accuracy; the paper's metric is named in its source)")
    best = best_text(c)
    if best is not None:
        cap.append(best)
    return Table("results", header, rows, [g.best for g in c.groups], ". ".join(cap) + ".", numeric)


def tuned_table(c: Collection) -> Optional[Table]:
    """Tuned and untuned results side by side, per arm (a matrix with `tune:` only)."""
    rows_in = c.meta.get("tuned") or []
    if not rows_in:
        return None
    fixed = [k for k in c.grid_keys if k not in (c.meta.get("tune") or [])]
    header = (["cell"] + fixed + ["selected (on val)", "tuned test %", "Δ tuned", "untuned test %",
              "Δ untuned", "FLOPs / result", "FLOPs tuning"])
    rows = []
    for r in rows_in:
        sel = ", ".join(f"{k}={v}" for k, v in (r.get("selected") or {}).items()) or "-"
        rows.append([TableCell(r["techniques"], r["techniques"])] +
                    [TableCell(str(r.get(k)), str(r.get(k))) for k in fixed] + [
            TableCell(sel, sel),
            TableCell(pm(r.get("tuned_test_mean"), r.get("tuned_test_std")), num(r.get("tuned_test_mean"))),
            TableCell(signed_pm(r.get("tuned_delta_mean"), r.get("tuned_delta_std")),
                      num(r.get("tuned_delta_mean")),
                      _signed_css(num(r.get("tuned_delta_mean")), r.get("tuned_within_noise"))),
            TableCell(pm(r.get("untuned_test_mean"), r.get("untuned_test_std")),
                      num(r.get("untuned_test_mean"))),
            TableCell(signed_pm(r.get("untuned_delta_mean"), r.get("untuned_delta_std")),
                      num(r.get("untuned_delta_mean")),
                      _signed_css(num(r.get("untuned_delta_mean")), r.get("untuned_within_noise"))),
            TableCell(fmt_flops(r.get("flops_per_result")), num(r.get("flops_per_result"))),
            TableCell(fmt_flops(r.get("tuning_flops")), num(r.get("tuning_flops")))])
    numeric = [False] * (2 + len(fixed)) + [True] * 6
    return Table("tuned", header, rows, [False] * len(rows), c.meta.get("tune_rule") or "", numeric)


def cells_table(c: Collection) -> Table:
    """One row per run (matrix cell or run directory), seeds separate."""
    header = ["run", "status", "seed", "test acc %", "best val %", "FLOPs used / cap", "stop",
              "epochs", "params", "latency ms", "wall s"]
    numeric = [False, False, True, True, True, True, False, True, True, True, True]
    rows = []
    for r in c.cells:
        status = r.get("status")
        rows.append([
            TableCell(str(r.get("cell_id")), str(r.get("cell_id"))),
            TableCell(str(status or "-"), str(status or ""), "" if status in ("done", None) else "neg"),
            TableCell("-" if r.get("seed") is None else str(r.get("seed")), num(r.get("seed"))),
            TableCell(fmt(r.get("test_accuracy")), num(r.get("test_accuracy"))),
            TableCell(fmt(r.get("best_val_accuracy")), num(r.get("best_val_accuracy"))),
            TableCell(f"{fmt_flops(r.get('flops_used'))} / {fmt_flops(r.get('flops_cap'))}",
                      num(r.get("flops_used"))),
            TableCell(str(r.get("stop_reason") or "-"), str(r.get("stop_reason") or "")),
            TableCell(fmt(r.get("epochs")), num(r.get("epochs"))),
            TableCell(fmt_count(r.get("params")), num(r.get("params"))),
            TableCell(fmt(r.get("cpu_latency_ms_per_image"), ".3f"), num(r.get("cpu_latency_ms_per_image"))),
            TableCell(fmt(r.get("wall_seconds"), ".1f"), num(r.get("wall_seconds"))),
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
        out.append(("best cell", f"{best.label}: {pm(*best.acc)} % test accuracy "
                    f"at {fmt_flops(best.flops.mean)} training FLOPs{_not_starred(c, best)}"))
    return out
