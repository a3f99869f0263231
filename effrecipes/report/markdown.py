"""report.md: the summary, the tables and links to the PNG plots written beside it."""
from __future__ import annotations

from pathlib import Path

from effrecipes.report.load import Collection
from effrecipes.report.plots import PLOTS, heading, missing_reason
from effrecipes.report.table import cells_table, results_table, summary_lines, table_md, tuned_table


def render_markdown(c: Collection, plots: dict[str, Path], title: str) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in summary_lines(c)]
    lines += ["", "## Results", ""]
    t = results_table(c)
    lines += [table_md(t), "", t.caption, ""]
    tuned = tuned_table(c)
    if tuned is not None:
        lines += ["## Tuned per arm", "", table_md(tuned), "", tuned.caption + ".", ""]
    lines += ["## Plots", ""]
    for key in PLOTS:
        head = heading(c, key)
        lines.append(f"### {head}")
        lines.append("")
        if key in plots:
            lines.append(f"![{head}]({plots[key].name})")
        else:
            lines.append(f"_Not drawn: {missing_reason(c, key)}._")
        lines.append("")
    lines += ["## Runs", "", table_md(cells_table(c))]
    if c.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"
