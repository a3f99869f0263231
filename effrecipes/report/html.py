"""report.html: one self-contained page (inline CSS and JS, plots as base64 PNG data URIs, no
external URL of any kind), with tables sortable by clicking a header.

`report.html#sort=<column>` (or `#sort=-<column>` for descending) opens the page sorted by that
results-table column (0-based index), which also makes the sorting testable headless.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from effrecipes.report.load import Collection
from effrecipes.report.plots import PLOTS, heading, missing_reason
from effrecipes.report.table import Table, cells_table, results_table, summary_lines, tuned_table

CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --head:#f6f8fa; --best:#fff5c2;
        --pos:#1a7f37; --neg:#cf222e; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--fg); background: #fff;
       font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1220px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dl.summary dt { color: var(--muted); }
dl.summary dd { margin: 0; word-break: break-word; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left; white-space: nowrap; }
td.num, th.num { text-align: right; }
th { background: var(--head); position: relative; }
table.sortable th { cursor: pointer; user-select: none; padding-right: 20px; }
table.sortable th::after { content: "\\2195"; position: absolute; right: 6px; color: #aab; font-size: 11px; }
table.sortable th[aria-sort=ascending]::after { content: "\\25B2"; color: var(--accent); }
table.sortable th[aria-sort=descending]::after { content: "\\25BC"; color: var(--accent); }
tbody tr:nth-child(even) { background: #fbfbfc; }
tr.best, tr.best:nth-child(even) { background: var(--best); font-weight: 600; }
td.pos { color: var(--pos); } td.neg { color: var(--neg); } td.muted { color: var(--muted); }
p.caption { color: var(--muted); font-size: 12.5px; margin: 6px 0 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px; background: #fff; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-weight: 600; margin-bottom: 6px; }
.missing { color: var(--muted); font-style: italic; padding: 20px 4px; }
details summary { cursor: pointer; color: var(--accent); margin-bottom: 8px; }
ul.notes { color: var(--muted); }
footer { margin-top: 32px; color: var(--muted); font-size: 12px; }
"""

JS = """
(function () {
  function key(row, i) {
    var c = row.cells[i];
    if (!c) return null;
    var v = c.getAttribute('data-sort');
    if (v === null) v = c.textContent.trim();
    if (v === '' || v === '-') return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function sortBy(table, i, asc) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, i), y = key(b, i);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h, j) {
      if (j === i) h.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      else h.removeAttribute('aria-sort');
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (h, i) {
      h.title = 'click to sort';
      h.addEventListener('click', function () {
        sortBy(t, i, h.getAttribute('aria-sort') !== 'ascending');
      });
    });
  });
  var m = /^#sort=(-?)(\\d+)$/.exec(location.hash);
  var t = document.getElementById('results');
  if (m && t) sortBy(t, Number(m[2]), m[1] !== '-');
})();
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _table(t: Table, sortable: bool = True) -> str:
    cls = ' class="sortable"' if sortable else ""
    out = [f'<div class="scroll"><table id="{_e(t.key)}"{cls}>', "<thead><tr>"]
    for h, n in zip(t.header, t.numeric):
        out.append('<th class="num">' if n else "<th>")
        out.append(f"{_e(h)}</th>")
    out.append("</tr></thead><tbody>")
    for row, hi in zip(t.rows, t.highlight or [False] * len(t.rows)):
        out.append('<tr class="best">' if hi else "<tr>")
        for cell, n in zip(row, t.numeric):
            cls = " ".join(x for x in ("num" if n else "", cell.css) if x)
            sort = "" if cell.sort is None else f' data-sort="{_e(cell.sort)}"'
            attr = f' class="{cls}"' if cls else ""
            out.append(f"<td{attr}{sort}>{_e(cell.text)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    if t.caption:
        out.append(f'<p class="caption">{_e(t.caption)}</p>')
    return "".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def render_html(c: Collection, plots: dict[str, Path], title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{_e(title)}</h1>", '<dl class="summary">']
    for k, v in summary_lines(c):
        parts.append(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>")
    parts.append("</dl>")
    parts.append("<h2>Results</h2>")
    parts.append(_table(results_table(c)))
    tuned = tuned_table(c)
    if tuned is not None:
        parts.append("<h2>Tuned per arm</h2>")
        parts.append(_table(tuned))
    parts.append('<h2>Plots</h2><div class="plots">')
    for key in PLOTS:
        head = heading(c, key)
        parts.append(f"<figure><figcaption>{_e(head)}</figcaption>")
        if key in plots:
            parts.append(_img(plots[key], head))
        else:
            parts.append(f'<div class="missing">Not drawn: {_e(missing_reason(c, key))}.</div>')
        parts.append("</figure>")
    parts.append("</div>")
    cells = cells_table(c)
    parts.append(f"<h2>Runs</h2><details{' open' if len(cells.rows) <= 12 else ''}>"
                 f"<summary>{len(cells.rows)} run(s), one row per seed</summary>")
    parts.append(_table(cells))
    parts.append("</details>")
    if c.notes:
        parts.append('<h2>Notes</h2><ul class="notes">')
        parts += [f"<li>{_e(n)}</li>" for n in c.notes]
        parts.append("</ul>")
    parts.append("<footer>Written by composer-report from the run directories; "
                 "click a column header to sort.</footer>")
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"
