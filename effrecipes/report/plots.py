"""The report's plots as PNG files (matplotlib, Agg backend): accuracy vs training FLOPs with the
Pareto front (or, when every cell spent the same FLOPs, each cell's accuracy over its seeds),
validation accuracy against FLOPs spent, and the delta-vs-baseline bars.

Every label (point names, legends) lies inside the axes, and an accuracy axis never passes 100 %.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from effrecipes.report.load import Collection, Group  # noqa: E402
from effrecipes.stats import FINISHED, fmt_flops  # noqa: E402

PLOTS = {  # key -> (file name, title)
    "scatter": ("report_accuracy_vs_flops.png", "Test accuracy vs training FLOPs"),
    "curves": ("report_val_curves.png", "Validation accuracy vs FLOPs spent"),
    "deltas": ("report_delta_vs_baseline.png", "Δ test accuracy vs baseline"),
}
SPREAD_TITLE = "Test accuracy of every seed (all cells spent the same training FLOPs)"
EQUAL_FLOPS = 1.1   # cells whose mean FLOPs are within this ratio spent "the same" FLOPs
_COLORS = plt.get_cmap("tab10").colors
_DPI = 110


def _color(i: int) -> tuple[float, float, float]:
    return _COLORS[i % len(_COLORS)]


def _save(fig: Figure, path: Path) -> Path:
    # no Software tag: the PNG (and so the HTML) carries no URL of any kind
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def _flops_axis(ax: plt.Axes) -> None:
    """FLOP tick labels as 200M / 1.5G (no '1e8' offset text)."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt_flops(x) if x > 0 else "0"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _pos: ""))


def _accuracy_limit(ax: plt.Axes, axis: str) -> None:
    """An accuracy axis stays within 0-100 % (autoscaling adds a margin past 100: 102 % of
    accuracy means nothing). Call it once every point is drawn."""
    get, put = (ax.get_xlim, ax.set_xlim) if axis == "x" else (ax.get_ylim, ax.set_ylim)
    lo, hi = get()
    put(max(lo, 0.0), min(hi, 100.0))


def _log_x(values: list[float]) -> bool:
    pos = [v for v in values if v and v > 0]
    return len(pos) >= 2 and max(pos) / min(pos) > 20


def _legend(ax: plt.Axes, n: int) -> None:
    """The legend inside the axes (two small columns when long)."""
    if n > 12:
        ax.legend(fontsize=6.5, ncol=2, loc="best", framealpha=0.85)
    else:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)


def _label_inside(ax: plt.Axes, text: str, xy: tuple[float, float]) -> None:
    """Name a point with its text on the side that faces the inside of the axes."""
    fx, fy = ax.transAxes.inverted().transform(ax.transData.transform(xy))
    right, top = fx > 0.6, fy > 0.8
    ax.annotate(text, xy, textcoords="offset points", xytext=(-6 if right else 6, -6 if top else 6),
                ha="right" if right else "left", va="top" if top else "bottom", fontsize=8,
                color="0.2")


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal FLOPs and higher accuracy),
    ordered by FLOPs."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _scored(c: Collection) -> list[Group]:
    return [g for g in c.groups if g.acc.mean is not None and g.flops.mean is not None]


def equal_flops(c: Collection) -> bool:
    """Every cell spent about the same training FLOPs (an equal-FLOPs matrix): an accuracy-vs-FLOPs
    plot would put every point on one vertical line."""
    scored = _scored(c)
    xs = [g.flops.mean for g in scored if g.flops.mean and g.flops.mean > 0]
    return len(scored) >= 2 and len(xs) == len(scored) and max(xs) / min(xs) < EQUAL_FLOPS


def heading(c: Collection, key: str) -> str:
    """The plot's heading in report.md / report.html."""
    if key == "scatter" and equal_flops(c):
        return SPREAD_TITLE
    return PLOTS[key][1]


# --------------------------------------------------------------------------- figures

def _flops_figure(c: Collection) -> Optional[Figure]:
    gs = _scored(c)
    if not gs:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    pts = [(g.flops.mean or 0.0, g.acc.mean or 0.0) for g in gs]
    front = pareto(pts)
    for i, g in enumerate(gs):
        ax.errorbar(g.flops.mean, g.acc.mean, xerr=g.flops.std or None, yerr=g.acc.std or None,
                    fmt="*" if g.best else "o", ms=14 if g.best else 7, color=_color(i),
                    ecolor=_color(i), elinewidth=1, capsize=3, label=g.label, zorder=3,
                    markeredgecolor="black" if g.best else _color(i))
    if len(front) > 1:
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="post", color="0.35",
                ls="--", lw=1.2, zorder=2, label="Pareto front")
    elif front:
        ax.plot([], [], color="0.35", ls="--", lw=1.2, label="Pareto front (one point)")
    if _log_x([p[0] for p in pts]):
        ax.set_xscale("log")
    ax.margins(x=0.08, y=0.12)
    _flops_axis(ax)
    _accuracy_limit(ax, "y")
    for i in front:
        _label_inside(ax, gs[i].label, pts[i])
    ax.set_xlabel("training FLOPs used (mean over seeds)")
    ax.set_ylabel("test accuracy % (mean ± std)")
    ax.set_title(PLOTS["scatter"][1] + (" — ★ best" if len(gs) > 1 else ""), fontsize=11)
    ax.grid(alpha=0.3)
    _legend(ax, len(gs) + 1)
    return fig


def _seed_accuracies(g: Group) -> list[float]:
    return [x for r in g.runs if r.status in FINISHED and (x := r.get("test_accuracy")) is not None]


def _spread_figure(c: Collection) -> Figure:
    """Equal FLOPs: one row per cell, a dot per seed, the mean ± std, the baseline's mean."""
    gs = [g for g in c.groups if g.acc.mean is not None]
    fig, ax = plt.subplots(figsize=(7.2, max(2.8, 0.42 * len(gs) + 1.6)))
    ys = np.arange(len(gs))[::-1]
    for i, (y, g) in enumerate(zip(ys, gs)):
        accs = _seed_accuracies(g)
        jitter = np.linspace(-0.12, 0.12, len(accs)) if len(accs) > 1 else np.zeros(len(accs))
        ax.scatter(accs, y + jitter, s=18, color=_color(i), alpha=0.65, lw=0, zorder=3,
                   label="one seed" if i == 0 else None)
        ax.errorbar(g.acc.mean, y, xerr=g.acc.std or None, fmt="*" if g.best else "D",
                    ms=13 if g.best else 6, color=_color(i), ecolor="0.25", elinewidth=1.2,
                    capsize=4, zorder=4, markeredgecolor="black")
    ax.plot([], [], "D", ms=6, color="0.6", markeredgecolor="black", label="mean ± std")
    refs = [g for g in gs if g.is_reference]
    if len(refs) == 1:
        ax.axvline(refs[0].acc.mean or 0.0, color="0.4", ls="--", lw=1, zorder=2,
                   label=f"{refs[0].label} mean")
    ax.set_yticks(ys)
    ax.set_yticklabels([g.label for g in gs], fontsize=9)
    ax.set_ylim(-0.7, len(gs) + 0.4)  # a free band on top for the legend
    ax.margins(x=0.08)
    _accuracy_limit(ax, "x")
    flops = np.mean([g.flops.mean for g in gs if g.flops.mean]) if any(g.flops.mean for g in gs) else None
    ax.set_xlabel("test accuracy %")
    ax.set_title(f"Test accuracy of every seed at {fmt_flops(flops)} training FLOPs"
                 + (" — ★ best" if any(g.best for g in gs) else ""), fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=3, framealpha=0.85)
    return fig


def scatter_figure(c: Collection) -> Optional[Figure]:
    """Accuracy against training FLOPs with the Pareto front; when every cell spent the same FLOPs
    (all points on one vertical line), each cell's accuracy over its seeds instead."""
    return _spread_figure(c) if equal_flops(c) else _flops_figure(c)


def _curve(g: Group) -> Optional[tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    """Mean (and std over seeds) of validation accuracy against FLOPs spent, on the FLOP points
    all seeds cover (seeds' evaluations usually fall on the same FLOP counts)."""
    series = []
    for r in g.runs:
        pts = sorted((row["flops_used"], row["val_accuracy"]) for row in r.history
                     if row.get("flops_used") is not None and row.get("val_accuracy") is not None)
        if pts:
            series.append((np.array([p[0] for p in pts]), np.array([p[1] for p in pts])))
    if not series:
        return None
    if len(series) == 1:
        return series[0][0], series[0][1], None
    lo = max(s[0][0] for s in series)
    hi = min(s[0][-1] for s in series)
    xs = np.unique(np.concatenate([s[0] for s in series]))
    xs = xs[(xs >= lo) & (xs <= hi)]
    if xs.size == 0:
        return series[0][0], series[0][1], None
    ys = np.stack([np.interp(xs, s[0], s[1]) for s in series])
    return xs, ys.mean(axis=0), ys.std(axis=0, ddof=1)


def curves_figure(c: Collection) -> Optional[Figure]:
    data = [(i, g, cv) for i, g in enumerate(c.groups) if (cv := _curve(g)) is not None]
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    allx: list[float] = []
    for i, g, (x, m, s) in data:
        lw = 2.4 if g.best else 1.5
        ax.plot(x, m, color=_color(i), lw=lw, marker="o", ms=3,
                label=f"{g.label} (n={len(g.runs)})" if len(g.runs) > 1 else g.label)
        if s is not None:
            ax.fill_between(x, m - s, m + s, color=_color(i), alpha=0.15, lw=0)
        allx += list(x)
    if _log_x(allx) and min(allx) > 0:
        ax.set_xscale("log")
    _flops_axis(ax)
    _accuracy_limit(ax, "y")
    ax.set_xlabel("training FLOPs spent")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(PLOTS["curves"][1] + " (mean ± std over seeds)", fontsize=11)
    ax.grid(alpha=0.3)
    _legend(ax, len(data))
    return fig


def deltas_figure(c: Collection) -> Optional[Figure]:
    gs = [g for g in c.groups if not g.is_reference and g.delta.mean is not None]
    if c.reference is None or not gs:
        return None
    fig, ax = plt.subplots(figsize=(7.2, max(2.4, 0.5 * len(gs) + 1.4)))
    y = np.arange(len(gs))[::-1]
    vals = [g.delta.mean or 0.0 for g in gs]
    colors = ["#2e7d32" if v > 0 else "#c62828" for v in vals]
    bars = ax.barh(y, vals, xerr=[g.delta.std or 0.0 for g in gs], color=colors, alpha=0.8,
                   capsize=4, height=0.6, error_kw={"elinewidth": 1, "ecolor": "0.2"},
                   label="ours (mean ± std over seeds)")
    for b, g in zip(bars, gs):
        if g.within_noise:
            b.set_alpha(0.35)
            b.set_hatch("//")
    paper = [(yy, g.paper_delta) for yy, g in zip(y, gs) if g.paper_delta is not None]
    if paper:
        ax.scatter([p[1] for p in paper], [p[0] for p in paper], marker="D", s=45, color="#1565c0",
                   edgecolor="white", zorder=4, label="paper")
    ax.axvline(0, color="0.2", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([g.label for g in gs], fontsize=9)
    ax.set_xlabel(f"Δ test accuracy vs {c.reference} (percentage points)")
    ax.set_title(PLOTS["deltas"][1] + " (hatched: within noise)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return fig


FIGURES: dict[str, Callable[[Collection], Optional[Figure]]] = {
    "scatter": scatter_figure, "curves": curves_figure, "deltas": deltas_figure}


def figure(c: Collection, key: str) -> Optional[Figure]:
    """The laid-out figure of one plot (None: it does not apply to this collection)."""
    fig = FIGURES[key](c)
    if fig is not None:
        fig.tight_layout()
    return fig


PLOT_ERRORS = (ValueError, OverflowError, FloatingPointError, RuntimeError, MemoryError)


def render_all(c: Collection, outdir: Path) -> dict[str, Path]:
    """Write every plot that applies into `outdir`; returns key -> PNG path (missing keys: not
    applicable, or matplotlib could not draw it: absurd values such as 1e308 FLOPs make it fail
    to lay out ticks; the plot is left out and `c.plot_errors` and a note say why)."""
    out: dict[str, Path] = {}
    for key, (name, _) in PLOTS.items():
        fig = None
        try:
            fig = figure(c, key)
            if fig is not None:
                out[key] = _save(fig, outdir / name)
        except PLOT_ERRORS as e:
            if fig is not None:
                plt.close(fig)
            (outdir / name).unlink(missing_ok=True)
            why = f"matplotlib could not draw it ({type(e).__name__}: {' '.join(str(e).split())[:160]})"
            c.plot_errors[key] = why
            c.notes.append(f"plot {name} not drawn: {why}")
    return out


def missing_reason(c: Collection, key: str) -> str:
    if key in c.plot_errors:
        return c.plot_errors[key]
    if key == "deltas":
        if c.reference is None:
            return "no baseline among these runs, so no deltas"
        return "no cell besides the baseline has a finished seed"
    if key == "curves":
        return "no run has a history.csv with validation accuracy"
    return "no finished run with accuracy and FLOPs"
