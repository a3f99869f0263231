"""The report's plots as PNG files (matplotlib, Agg backend): accuracy vs training FLOPs with the
Pareto front, validation accuracy against FLOPs spent, and the delta-vs-baseline bars."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from effrecipes.report.load import Collection, Group  # noqa: E402

PLOTS = {  # key -> (file name, title)
    "scatter": ("report_accuracy_vs_flops.png", "Test accuracy vs training FLOPs"),
    "curves": ("report_val_curves.png", "Validation accuracy vs FLOPs spent"),
    "deltas": ("report_delta_vs_baseline.png", "Δ test accuracy vs baseline"),
}
_COLORS = plt.get_cmap("tab10").colors
_DPI = 110


def _color(i: int) -> tuple[float, float, float]:
    return _COLORS[i % len(_COLORS)]


def _save(fig: "plt.Figure", path: Path) -> Path:
    fig.tight_layout()
    # no Software tag: the PNG (and so the HTML) carries no URL of any kind
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def _flops_axis(ax: "plt.Axes") -> None:
    """FLOP tick labels as 200M / 1.5G (no '1e8' offset text)."""
    from matplotlib.ticker import FuncFormatter

    from effrecipes.report.table import fmt_flops

    fmt = FuncFormatter(lambda x, _pos: fmt_flops(x) if x > 0 else "0")
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _pos: ""))


def _log_x(values: list[float]) -> bool:
    pos = [v for v in values if v and v > 0]
    return len(pos) >= 2 and max(pos) / min(pos) > 20


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


def scatter(c: Collection, path: Path) -> Optional[Path]:
    gs = [g for g in c.groups if g.acc_mean is not None and g.flops_mean is not None]
    if not gs:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    pts = [(g.flops_mean, g.acc_mean) for g in gs]
    front = pareto(pts)
    for i, g in enumerate(gs):
        ax.errorbar(g.flops_mean, g.acc_mean, xerr=g.flops_std or None, yerr=g.acc_std or None,
                    fmt="*" if g.best else "o", ms=14 if g.best else 7, color=_color(i),
                    ecolor=_color(i), elinewidth=1, capsize=3, label=g.label, zorder=3,
                    markeredgecolor="black" if g.best else _color(i))
    if len(front) > 1:
        fx = [pts[i][0] for i in front]
        fy = [pts[i][1] for i in front]
        ax.step(fx, fy, where="post", color="0.35", ls="--", lw=1.2, zorder=2, label="Pareto front")
    elif front:
        ax.plot([], [], color="0.35", ls="--", lw=1.2, label="Pareto front (one point)")
    for i in front:
        ax.annotate(gs[i].label, pts[i], textcoords="offset points", xytext=(6, 6), fontsize=8,
                    color="0.2")
    xs = [p[0] for p in pts]
    if _log_x(xs):
        ax.set_xscale("log")
    elif min(xs) > 0 and max(xs) / min(xs) < 1.1:  # equal-FLOP cells: a readable window
        mid = (max(xs) + min(xs)) / 2
        ax.set_xlim(mid * 0.8, mid * 1.2)
    _flops_axis(ax)
    ax.set_xlabel("training FLOPs used (mean over seeds)")
    ax.set_ylabel("test accuracy % (mean ± std)")
    ax.set_title(PLOTS["scatter"][1] + (" — ★ best" if len(gs) > 1 else ""), fontsize=11)
    ax.grid(alpha=0.3)
    _legend(ax, len(gs) + 1)
    return _save(fig, path)


def _legend(ax: "plt.Axes", n: int) -> None:
    if n > 12:
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)


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


def curves(c: Collection, path: Path) -> Optional[Path]:
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
    ax.set_xlabel("training FLOPs spent")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(PLOTS["curves"][1] + " (mean ± std over seeds)", fontsize=11)
    ax.grid(alpha=0.3)
    _legend(ax, len(data))
    return _save(fig, path)


def deltas(c: Collection, path: Path) -> Optional[Path]:
    gs = [g for g in c.groups if not g.is_reference and g.delta_mean is not None]
    if c.reference is None or not gs:
        return None
    fig, ax = plt.subplots(figsize=(7.2, max(2.4, 0.5 * len(gs) + 1.4)))
    y = np.arange(len(gs))[::-1]
    vals = [g.delta_mean for g in gs]
    errs = [g.delta_std or 0.0 for g in gs]
    colors = ["#2e7d32" if v > 0 else "#c62828" for v in vals]
    bars = ax.barh(y, vals, xerr=errs, color=colors, alpha=0.8, capsize=4, height=0.6,
                   error_kw={"elinewidth": 1, "ecolor": "0.2"}, label="ours (mean ± std over seeds)")
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
    return _save(fig, path)


def render_all(c: Collection, outdir: Path) -> dict[str, Path]:
    """Write every plot that applies; returns key -> PNG path (missing keys: not applicable)."""
    out: dict[str, Path] = {}
    for key, fn in (("scatter", scatter), ("curves", curves), ("deltas", deltas)):
        path = outdir / PLOTS[key][0]
        if path.exists():
            path.unlink()  # never leave a stale plot from an earlier report beside this one
        made = fn(c, path)
        if made is not None:
            out[key] = made
    return out


def missing_reason(c: Collection, key: str) -> str:
    if key == "deltas":
        if c.reference is None:
            return "no baseline among these runs, so no deltas"
        return "no cell besides the baseline has a finished seed"
    if key == "curves":
        return "no run has a history.csv with validation accuracy"
    return "no finished run with accuracy and FLOPs"
