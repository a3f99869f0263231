"""`composer-report --wandb`: the comparison as a W&B Report (`wandb_workspaces.reports.v2`).

The report holds a runset filtered to the runs' W&B group (a matrix's name: the matrix sets it on
every cell), grouped by the recipe settings that differ between cells so that each W&B group is
one cell (its seeds aggregated: mean, band = std); a table of the cells (ours, the deltas and the
paper's figures, from the run directories); an accuracy-vs-FLOPs scatter panel; learning-curve
line plots against `flops_used` (logged every batch by `effrecipes.budget`); and one bar
panel of deltas vs the baseline (a custom expression subtracting the baseline's mean test accuracy
from each run's, the metric the HTML report's deltas use; grouped by cell: mean +/- std over
seeds).

Saving needs the network and an API key: `.save()` is called only when online (an API key is set
and WANDB_MODE does not say offline). Otherwise the report object is still built and its blocks
and panels are written to `wandb_report.json`, with a line saying why it was not uploaded.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from effrecipes.errors import UserError
from effrecipes.report.load import Collection
from effrecipes.report.table import results_table, table_md
from effrecipes.stats import mean_std
from effrecipes.wandb_mode import has_api_key

# One naming scheme with the run directory: W&B history keys are history.csv's columns, summary
# keys are metrics.json's, accuracies in percent (effrecipes.wandb_logging).
VAL_METRIC = "val_accuracy"          # history: per evaluation (%)
TEST_METRIC = "test_accuracy"        # summary (%): what the HTML report's table and deltas use
LOSS_METRIC = "loss/train/total"     # Composer's, every batch
FLOPS_METRIC = "flops_used"          # history: every batch (effrecipes.budget.FlopBudget)
_IGNORED = ("seed", "output", "loggers", "notes", "name", "reference")


def _wr() -> Any:
    try:
        import wandb_workspaces.reports.v2 as wr  # optional dependency (the report extra)
    except ImportError:
        raise UserError("--wandb needs the wandb-workspaces package",
                        hint="pip install 'effrecipes[report]'") from None
    return wr


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d, sort_keys=True, default=str)
    return out


def varying_config_keys(c: Collection) -> list[str]:
    """Recipe keys (dotted) whose values differ between cells: the W&B grouping that makes one
    W&B group per cell. `algorithms` is kept whole (a list)."""
    per_group: list[dict[str, str]] = []
    for g in c.groups:
        r = next((r for r in g.runs if r.recipe), None)
        if r is None:
            continue
        rec = {k: v for k, v in r.recipe.items() if k not in _IGNORED}
        flat = _flatten({k: v for k, v in rec.items() if k != "algorithms"})
        flat["algorithms"] = json.dumps(rec.get("algorithms"), sort_keys=True, default=str)
        per_group.append(flat)
    keys = sorted({k for f in per_group for k in f})
    varying = [k for k in keys if len({f.get(k) for f in per_group}) > 1]
    return sorted(varying, key=lambda k: (k != "algorithms", k))


def _baseline_test(c: Collection) -> Optional[float]:
    """Mean test accuracy (%) of the baseline cell: the same metric and the same runs as the HTML
    report's deltas."""
    refs = [g for g in c.groups if g.is_reference]
    if len(refs) != 1:  # with a grid each setting has its own baseline: no single constant
        return None
    vals = [x for r in refs[0].runs if (x := r.get("test_accuracy")) is not None]
    return mean_std(vals)[0]


def wandb_target(c: Collection) -> tuple[str, Optional[str]]:
    """(project, entity) the runs logged to: their recipes' loggers.wandb, the most common."""
    projects = Counter(r.wandb.get("project") or "effrecipes" for r in c.runs)
    entities = Counter(r.wandb.get("entity") for r in c.runs if r.wandb.get("entity"))
    project = projects.most_common(1)[0][0] if projects else "effrecipes"
    entity = entities.most_common(1)[0][0] if entities else None
    return project, entity


def _runset(wr: Any, c: Collection, project: str, entity: Optional[str]) -> tuple[Any, list[str]]:
    """The runs of the report: the W&B group (else the runs by name), grouped by the recipe keys
    that differ between cells (one W&B group per cell)."""
    from wandb_workspaces import expr  # optional dependency (the report extra), like _wr()

    if c.wandb_group:
        filters = expr.And(expr.Metric("Group") == c.wandb_group)
        name = f"group {c.wandb_group}"
    else:
        filters = expr.And(expr.Metric("Name").isin(sorted({r.name for r in c.runs})))
        name = c.name
    groupby = [f"config.{k}" for k in varying_config_keys(c)]
    return wr.Runset(entity=entity or "", project=project, name=name, filters=filters,
                     groupby=groupby), groupby


def _panels(wr: Any, c: Collection) -> tuple[list[Any], Optional[float], Optional[str]]:
    """(panels, the baseline's mean test accuracy, the Δ bar panel's expression)."""
    agg = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
    panels = [
        wr.ScatterPlot(title="Test accuracy vs training FLOPs (per run)",
                       x=wr.SummaryMetric(FLOPS_METRIC), y=wr.SummaryMetric(TEST_METRIC),
                       log_x=True, layout=wr.Layout(x=0, y=0, w=12, h=8)),
        wr.LinePlot(title="Validation accuracy vs FLOPs spent", x=FLOPS_METRIC, y=[VAL_METRIC],
                    title_x="training FLOPs", title_y="val accuracy (%)", smoothing_type="none",
                    layout=wr.Layout(x=12, y=0, w=12, h=8), **agg),
        wr.LinePlot(title="Training loss vs FLOPs spent", x=FLOPS_METRIC, y=[LOSS_METRIC],
                    title_x="training FLOPs", title_y="train loss", smoothing_factor=0.6,
                    layout=wr.Layout(x=0, y=8, w=12, h=8), **agg),
    ]
    base = _baseline_test(c)
    if base is None:
        return panels, None, None
    delta_expr = f"${{{TEST_METRIC}}} - {base:.4f}"
    panels.append(wr.BarPlot(
        title=f"Δ test accuracy vs {c.reference} (pp, mean ± std over seeds)",
        metrics=[TEST_METRIC], custom_expressions=[delta_expr], orientation="h",
        title_x="percentage points", layout=wr.Layout(x=12, y=8, w=12, h=8), **agg))
    return panels, base, delta_expr


def build_report(c: Collection, title: str, *, online: bool = False) -> tuple[Any, dict[str, Any]]:
    """The W&B Report object and a JSON-able summary of its blocks and panels."""
    wr = _wr()
    project, entity = wandb_target(c)
    group = c.wandb_group
    runset, groupby = _runset(wr, c, project, entity)
    panels, base, delta_expr = _panels(wr, c)
    intro = (f"Built by composer-report from {c.root} ({len(c.runs)} runs, {len(c.groups)} cells). "
             f"Runs are the W&B {'group ' + repr(group) if group else 'runs named in the runset'}"
             f" of project {project!r}, grouped by "
             f"{', '.join(k.removeprefix('config.') for k in groupby) or 'nothing (one cell)'}.")
    blocks = [wr.P(intro), wr.H2("Cells"), wr.MarkdownBlock(table_md(results_table(c))),
              wr.H2("Accuracy, learning curves and deltas"),
              wr.PanelGrid(runsets=[runset], panels=panels)]
    if base is None:
        blocks.append(wr.P("No bar panel of deltas: "
                           + ("there is no baseline cell." if c.reference is None else
                              "each grid setting has its own baseline (see the table).")))
    kwargs: dict[str, Any] = {"project": project, "title": title[:128],
                              "description": f"effrecipes comparison of {c.name}", "blocks": blocks,
                              "width": "fluid"}
    if entity or not online:
        kwargs["entity"] = entity or ""  # offline: never ask the API for the default entity
    report = wr.Report(**kwargs)
    if not runset.entity and report.entity:  # online, no entity in the recipes: W&B's default
        runset.entity = report.entity
    summary = {
        "title": report.title, "project": project, "entity": entity, "group": group,
        "runset": {"name": runset.name, "filters": runset.filters, "groupby": groupby},
        "blocks": [_describe(b) for b in blocks],
        "baseline": c.reference, "baseline_test_accuracy": base, "delta_expression": delta_expr,
        "not_logged_to_wandb": sorted(r.name for r in c.runs if not r.wandb.get("enabled")),
    }
    return report, summary


def _describe(block: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"type": type(block).__name__}
    if hasattr(block, "text") and isinstance(getattr(block, "text"), str):
        d["text"] = block.text[:2000]
    if type(block).__name__ == "PanelGrid":
        d["runsets"] = [rs.name for rs in block.runsets]
        d["panels"] = []
        for p in block.panels:
            pd: dict[str, Any] = {"type": type(p).__name__, "title": p.title}
            for attr in ("x", "y", "metrics", "custom_expressions", "groupby_aggfunc",
                         "groupby_rangefunc"):
                v = getattr(p, attr, None)
                if v is not None:
                    pd[attr] = ([getattr(i, "name", i) for i in v] if isinstance(v, list)
                                else getattr(v, "name", v))
            d["panels"].append(pd)
    return d


def is_online() -> tuple[bool, str]:
    """(online, why not): online needs an API key and WANDB_MODE not offline/disabled (the
    logger's `mode: auto` rule, `effrecipes.wandb_mode`)."""
    if not has_api_key():
        return False, "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "disabled"):
        return False, f"WANDB_MODE={mode}"
    return True, ""


def publish(c: Collection, outdir: Path, title: str) -> dict[str, Any]:
    """Build the report; save it when online; always write wandb_report.json. Prints one line."""
    online, why = is_online()
    report, summary = build_report(c, title, online=online)
    summary["uploaded"], summary["url"] = False, None
    if online:
        try:
            report.save()
            summary["uploaded"], summary["url"] = True, getattr(report, "url", None)
        except Exception as e:  # noqa: BLE001 - network/auth failures must not lose the local report
            why = f"saving failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    summary["reason"] = None if summary["uploaded"] else why
    path = outdir / "wandb_report.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if summary["uploaded"]:
        print(f"W&B report uploaded: {summary['url']}")
    else:
        print(f"W&B report not uploaded: {why}; its blocks and panels are in {path}")
    if summary["not_logged_to_wandb"]:
        n = len(summary["not_logged_to_wandb"])
        print(f"note: {n} of {len(c.runs)} runs did not log to W&B (loggers.wandb.enabled: false); "
              "the report's panels show only runs logged to W&B")
    return summary
