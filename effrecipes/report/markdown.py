"""report.md: the summary, the tables and links to the PNG plots written beside it."""
from __future__ import annotations

from pathlib import Path

from effrecipes.report.load import Collection
from effrecipes.report.plots import PLOTS, missing_reason
from effrecipes.report.table import Table, cells_table, results_table, summary_lines


def md_table(t: Table) -> list[str]:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in t.header) + " |",
             "|" + "|".join("---:" if n else "---" for n in t.numeric) + "|"]
    for row, hi in zip(t.rows, t.highlight or [False] * len(t.rows)):
        cells = [esc(c.text) for c in row]
        if hi:
            cells = [f"**{x}**" if x not in ("", "-") else x for x in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(c: Collection, plots: dict[str, Path], title: str) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {k}: {v}" for k, v in summary_lines(c)]
    lines += ["", "## Results", ""]
    t = results_table(c)
    lines += md_table(t) + ["", t.caption, "", "## Plots", ""]
    for key, (_, heading) in PLOTS.items():
        lines.append(f"### {heading}")
        lines.append("")
        if key in plots:
            lines.append(f"![{heading}]({plots[key].name})")
        else:
            lines.append(f"_Not drawn: {missing_reason(c, key)}._")
        lines.append("")
    lines += ["## Runs", ""] + md_table(cells_table(c))
    if c.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in c.notes]
    return "\n".join(lines) + "\n"
