"""Comparison reports (`composer-report`): from a real small ablation matrix (composer-ablate, 4
tiny cells), a directory of runs and a single run; tables, plots, paper figures, errors, the W&B
Report (built offline, never uploaded here), and the HTML in headless Chromium (screenshot, no
network request, sortable table)."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from effrecipes.report import load as report_load
from effrecipes.report.cli import main
from effrecipes.report.load import Group, Run, collect
from effrecipes.report.plots import pareto
from tests.conftest import tiny_recipe, write_recipe

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "composer-report"
REPORT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "effrecipes.report.cli"]
PAPER = {"baseline": 40.0, "cutout": 45.0}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def matrix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real matrix: baseline and cutout, seeds 0 and 1 (4 tiny cells, run by composer-ablate)."""
    from effrecipes.matrix.cli import main as ablate

    tmp = tmp_path_factory.mktemp("matrix")
    recipe = tiny_recipe(tmp, **{"budget.flops": 1.2e8})
    recipe["reference"] = {"paper": "004", "table": "4", "metric": "val_accuracy",
                           "value": PAPER["baseline"], "setting": "baseline"}
    write_recipe(tmp, recipe, "base.yaml")
    spec = {"name": "m", "base": "base.yaml", "output": str(tmp / "matrices"),
            "algorithms": {"mode": "one_at_a_time", "pool": {"cutout": {"length": 4}}},
            "seeds": [0, 1],
            "reference": {"source": "test figures", "values": PAPER}}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert ablate([str(tmp / "spec.yaml"), "--workers", "1", "--quiet"]) == 0
    return tmp / "matrices" / "m"


@pytest.fixture(scope="module")
def report(matrix_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main([str(matrix_dir), "--out", str(out), "--title", "Tiny matrix"]) == 0
    return out


@pytest.fixture
def no_wandb_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc


# --------------------------------------------------------------------------- files and content

def _results(matrix_dir: Path) -> dict[str, Any]:
    return json.loads((matrix_dir / "results.json").read_text())


def _starred(agg: dict[str, dict[str, Any]]) -> str:
    """The cell that earns the star (effrecipes.stats.BEST_RULE): the highest mean test accuracy
    among the cells whose delta is not within noise (the baseline has no delta)."""
    return max((a for a in agg.values() if a["within_noise"] is not True),
               key=lambda a: a["test_accuracy_mean"])["techniques"]


def test_matrix_report_tables_plots_and_paper(report: Path, matrix_dir: Path) -> None:
    from PIL import Image

    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["report_accuracy_vs_flops.png", "report_delta_vs_baseline.png",
                    "report_val_curves.png"]
    for name in pngs:
        assert f"]({name})" in md  # report.md shows the PNGs beside it
        img = Image.open(report / name).convert("RGB")
        assert img.size[0] > 300 and len(set(img.getdata())) > 20
    # the aggregate numbers are results.json's (mean ± std over seeds, delta vs baseline)
    agg = {a["techniques"]: a for a in _results(matrix_dir)["aggregate"]}
    assert set(agg) == {"baseline", "cutout"}
    co = agg["cutout"]
    acc = f"{co['test_accuracy_mean']:.2f} ± {co['test_accuracy_std']:.2f}"
    delta = f"{co['delta_mean']:+.2f} ± {co['delta_std']:.2f}"
    for text in (md, html):
        assert "Tiny matrix" in text and acc in text and delta in text
        assert "Δ vs baseline" in text and "paper" in text and "ours − paper" in text
        assert "test figures" in text  # the published figures' source
    ours_minus_paper = f"{co['test_accuracy_mean'] - PAPER['cutout']:+.2f}"
    row = next(line for line in md.splitlines() if line.startswith("| ") and "cutout" in line)
    assert "45.00" in row and ours_minus_paper in row
    header = next(line for line in md.splitlines() if line.startswith("| cell |"))
    assert header.split("|")[1:4] == [" cell ", " n ", " test acc % (mean ± std) "]
    # best cell highlighted: the highest mean among cells not within noise of the baseline
    best = _starred(agg)
    assert f"**{best} ★**" in md
    assert all(f"{a} ★" not in md for a in agg if a != best)
    assert re.search(r'<tr class="best"><td[^>]*>' + re.escape(best) + " ★</td>", html)
    # self-contained HTML: three embedded PNGs, inline CSS/JS, no URL of any kind
    assert html.count('src="data:image/png;base64,') == 3
    for m in re.finditer(r'src="data:image/png;base64,([^"]+)"', html):
        assert base64.b64decode(m.group(1)).startswith(b"\x89PNG")
    assert "http://" not in html.lower() and "https://" not in html.lower()
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)
    assert "<script src" not in html and "@import" not in html and "url(" not in html
    assert '<table id="results" class="sortable">' in html
    assert "cutout__s1" in md and "cutout__s1" in html  # the per-seed runs table


def test_aggregates_fall_back_to_run_dirs(matrix_dir: Path, tmp_path: Path) -> None:
    """Without results.json the same means, stds, deltas and paper figures come from the run
    directories and cell records."""
    copy = tmp_path / "m"
    shutil.copytree(matrix_dir, copy)
    for f in copy.glob("results.*"):
        f.unlink()
    c = collect(copy)
    assert c.kind == "matrix" and c.meta["aggregates_from"] == "run directories"
    agg = {a["techniques"]: a for a in _results(matrix_dir)["aggregate"]}
    for g in c.groups:
        a = agg[g.techniques]
        assert g.n == a["n"] == 2
        assert g.acc.mean == pytest.approx(a["test_accuracy_mean"])
        assert g.acc.std == pytest.approx(a["test_accuracy_std"])
        if a["delta_mean"] is not None:
            assert g.delta.mean == pytest.approx(a["delta_mean"])
            assert g.delta.std == pytest.approx(a["delta_std"])
            assert g.within_noise == a["within_noise"]
        assert g.paper == PAPER[g.techniques]
    assert c.reference == "baseline" and c.best is not None


def test_directory_of_runs_and_single_run(matrix_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    c = collect(matrix_dir / "cells")  # the cells' run dirs, found recursively
    assert c.kind == "runs" and len(c.runs) == 4
    groups = {g.techniques: g for g in c.groups}
    assert set(groups) == {"baseline", "cutout"} and c.reference == "baseline"
    assert all(g.n == 2 for g in groups.values())
    # each run records the base recipe's reference (the baseline's figure): it is the paper's
    # figure for the baseline cell only, never for the cutout cell
    assert groups["baseline"].paper == PAPER["baseline"] and groups["cutout"].paper is None
    run_dir = matrix_dir / "cells" / "cutout__s0" / "cutout__s0"
    out = tmp_path / "one"
    assert main([str(run_dir), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# Run cutout__s0") and "report_val_curves.png" in md
    assert not (out / "report_delta_vs_baseline.png").exists()
    assert "_Not drawn: no baseline among these runs, so no deltas._" in md
    assert "report: " in capsys.readouterr().out


def test_paper_figure_of_a_matrix_cell_is_looked_up_by_its_techniques() -> None:
    """A cell inheriting the base recipe's reference (setting baseline) gets the paper's figure
    for its own techniques from effrecipes.reference."""
    from effrecipes import reference

    ref = {"paper": "004", "table": "4", "metric": "val_accuracy", "value": 79.9,
           "setting": "baseline"}
    run = Run(Path("/nonexistent"), {"dataset": "cifar10", "reference": ref}, [], None)
    value, source = report_load._paper_for_group(Group("cutout", runs=[run]), in_matrix=True)
    assert value == reference.lookup(paper="004", table="4", metric="val_accuracy",
                                     dataset="cifar10", setting="cutout") is not None
    assert source == "paper 004 Table 4 (val_accuracy)"
    value, _ = report_load._paper_for_group(Group("baseline", runs=[run]), in_matrix=True)
    assert value == 79.9
    value, _ = report_load._paper_for_group(Group("nothing_like_it", runs=[run]), in_matrix=True)
    assert value is None


def test_pareto_front() -> None:
    pts = [(1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 58.0), (4.0, 70.0), (0.5, 40.0)]
    assert pareto(pts) == [5, 0, 1, 4]


# --------------------------------------------------------------------------- counting, star, plots

def _fake_run(root: Path, dirname: str, name: str, seed: int, acc: float, flops: float = 1e9,
              val: tuple[float, ...] = ()) -> Path:
    """A run directory with only what a report reads (metrics.json, history.csv)."""
    d = root / dirname
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "name": name, "run_name": f"{name}_s{seed}", "seed": seed, "dataset": "synthetic",
        "model": "gap_1p5k_dw", "algorithms": [] if name == "baseline" else [name],
        "test_accuracy": acc, "best_val_accuracy": acc, "flops_used": flops, "flops_cap": flops,
        "stop_reason": "flops"}))
    if val:
        steps = [flops * (i + 1) / len(val) for i in range(len(val))]
        (d / "history.csv").write_text("flops_used,val_accuracy\n" + "".join(
            f"{f},{v}\n" for f, v in zip(steps, val)))
    return d


def _fake_runs(root: Path, accs: dict[str, list[float]], **kw: Any) -> Path:
    for name, values in accs.items():
        for seed, acc in enumerate(values):
            _fake_run(root, f"{name}_s{seed}", name, seed, acc, **kw)
    return root


def test_a_repeated_run_is_not_a_second_seed(matrix_dir: Path, tmp_path: Path) -> None:
    """Two run directories of the same recipe and seed are one result (issue 15, item 10)."""
    from effrecipes.report.table import results_table, table_md

    src = matrix_dir / "cells" / "baseline__s0" / "baseline__s0"
    for name in ("first", "again"):
        shutil.copytree(src, tmp_path / "runs" / name)
    shutil.copytree(matrix_dir / "cells" / "baseline__s1" / "baseline__s1", tmp_path / "runs" / "other")
    c = collect(tmp_path / "runs")
    (g,) = c.groups
    assert (g.n, g.n_cells, len(g.runs), len(c.runs)) == (2, 2, 2, 2)  # not 3/3
    assert sorted(r["status"] for r in c.cells) == ["done", "done", "repeat"]
    assert any("counted once" in n for n in c.notes)
    shutil.rmtree(tmp_path / "runs" / "other")
    c = collect(tmp_path / "runs")
    (g,) = c.groups
    assert (g.n, g.n_cells, g.acc.std) == (1, 1, None)  # one seed: no ± 0.00
    row = table_md(results_table(c)).splitlines()[2]
    assert "1/1" in row and "±" not in row


def test_star_never_goes_to_a_cell_within_noise(tmp_path: Path) -> None:
    """mixup has the highest mean but is within noise of the baseline; cutout is a little lower
    and clearly above it: the star is cutout's (issue 15, item 10)."""
    from effrecipes.report.table import results_table, summary_lines, table_md

    c = collect(_fake_runs(tmp_path, {"baseline": [50.0, 50.2, 49.8], "mixup": [53.0, 48.0, 52.0],
                                      "cutout": [50.6, 50.7, 50.8]}))
    groups = {g.techniques: g for g in c.groups}
    assert c.reference == "baseline" and groups["mixup"].within_noise is True
    assert groups["cutout"].within_noise is False
    assert groups["mixup"].acc.mean > groups["cutout"].acc.mean  # type: ignore[operator]
    assert c.best is groups["cutout"]
    t = results_table(c)
    md = table_md(t)
    assert "**cutout ★**" in md and "mixup ★" not in md
    assert "★ best cell: cutout" in t.caption and "so not starred: mixup" in t.caption
    assert dict(summary_lines(c))["best cell"].startswith("cutout: 50.70 ± 0.10 %")
    # nothing beats the baseline beyond noise: the baseline keeps the star
    c = collect(_fake_runs(tmp_path / "b", {"baseline": [50.0, 50.2, 49.8], "mixup": [53.0, 48.0, 52.0]}))
    assert c.best is not None and c.best.techniques == "baseline"


def _markers(ax: Any) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(points drawn with a marker by plot/errorbar, points drawn by scatter)."""
    lines = [(float(x), float(y)) for line in ax.lines if line.get_marker() not in (None, "None", "")
             for x, y in zip(line.get_xdata(), line.get_ydata())]
    dots = [(float(x), float(y)) for coll in ax.collections if type(coll).__name__ == "PathCollection"
            for x, y in coll.get_offsets()]
    return lines, dots


def test_equal_flops_plot_is_not_one_vertical_line(tmp_path: Path) -> None:
    """Every cell spent the same FLOPs: the plot shows each cell's seeds instead of a column of
    points at one x (issue 15, item 10)."""
    from effrecipes.report import plots

    accs = {"baseline": [50.0, 50.2, 49.8], "mixup": [53.0, 48.0, 52.0], "cutout": [50.6, 50.7, 50.8]}
    c = collect(_fake_runs(tmp_path, accs, flops=1e12))
    fig = plots.figure(c, "scatter")
    assert fig is not None
    (ax,) = fig.axes
    lines, dots = _markers(ax)
    pts = lines + dots
    assert len({x for x, _ in pts}) > 1 and len({y for _, y in pts}) > 1
    assert sorted(x for x, _ in dots) == sorted(x for values in accs.values() for x in values)
    assert "FLOPs" not in ax.get_xlabel() and "every seed" in plots.heading(c, "scatter")


def _inside(ax: Any, artist: Any) -> bool:
    renderer = ax.figure.canvas.get_renderer()
    box, outer = artist.get_window_extent(renderer), ax.get_window_extent(renderer)
    return (box.x0 >= outer.x0 - 1 and box.x1 <= outer.x1 + 1 and box.y0 >= outer.y0 - 1
            and box.y1 <= outer.y1 + 1)


def test_plot_labels_inside_axes_and_accuracy_axes_end_at_100(tmp_path: Path) -> None:
    """Point names and legends inside the axes; no accuracy axis to 102 % (issue 15, item 10)."""
    from effrecipes.report import plots

    for i, (name, accs) in enumerate({"baseline": [96.0, 96.4], "label_smoothing_long_name": [97.5, 98.1],
                                      "progressive_resizing_long_name": [99.4, 99.9]}.items()):
        for seed, acc in enumerate(accs):
            _fake_run(tmp_path, f"{name}_s{seed}", name, seed, acc, flops=10.0 ** (8 + 1.5 * i),
                      val=(60.0, 90.0, min(100.0, acc + 0.5)))
    c = collect(tmp_path)
    fig = plots.figure(c, "scatter")
    assert fig is not None and not plots.equal_flops(c)
    (ax,) = fig.axes
    fig.canvas.draw()
    assert len(ax.texts) == 3 and all(_inside(ax, t) for t in ax.texts)  # the Pareto front's names
    assert _inside(ax, ax.get_legend())
    assert ax.get_ylim()[1] <= 100.0
    fig = plots.figure(c, "curves")
    assert fig is not None
    (ax,) = fig.axes
    fig.canvas.draw()
    assert ax.get_ylim()[1] <= 100.0 and _inside(ax, ax.get_legend())


# --------------------------------------------------------------------------- errors

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([*REPORT, *args], capture_output=True, text=True, env=env, timeout=120)


def test_errors_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    half = tmp_path / "half"  # a matrix that has not finished a cell
    half.mkdir()
    (half / "matrix.json").write_text(json.dumps({"name": "half", "grid": [], "cells": []}))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("{not json")
    cases = [
        (tmp_path / "empty", "empty: no runs found (no metrics.json under this directory)"),
        (tmp_path / "missing", "missing: no such directory"),
        (tmp_path / "file.txt", "file.txt: not a directory"),
        (half, "half: matrix 'half' has no finished cells yet"),
        (bad, "metrics.json: metrics.json is missing or unreadable"),
    ]
    for path, fragment in cases:
        assert main([str(path)]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("error: ") and fragment in err and err.count("\n") == 1, err
    proc = _cli(str(tmp_path / "empty"))  # the console script: same line, no traceback
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- W&B report

def test_wandb_report_offline_build(matrix_dir: Path, tmp_path: Path, no_wandb_key: None,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import wandb_workspaces.reports.v2 as wr

    from effrecipes.report.wandb_report import FLOPS_METRIC, TEST_METRIC, VAL_METRIC, build_report

    def no_save(self: Any, *a: Any, **k: Any) -> None:
        raise AssertionError("save() called offline")

    monkeypatch.setattr(wr.Report, "save", no_save)
    out = tmp_path / "out"
    assert main([str(matrix_dir), "--out", str(out), "--wandb"]) == 0
    stdout = capsys.readouterr().out
    assert "W&B report not uploaded: no W&B API key" in stdout
    summary = json.loads((out / "wandb_report.json").read_text())
    assert summary["uploaded"] is False and summary["group"] == "m"
    assert summary["runset"]["groupby"] == ["config.algorithms"]

    report, _ = build_report(collect(matrix_dir), "T")
    kinds = [type(b).__name__ for b in report.blocks]
    assert kinds == ["P", "H2", "MarkdownBlock", "H2", "PanelGrid"]
    table = report.blocks[2].text
    assert table.startswith("| cell |") and "cutout" in table and "ours − paper" in table
    grid = report.blocks[4]
    (runset,) = grid.runsets
    assert runset.filters == "Metric(\"Group\") == 'm'" and runset.project == "effrecipes"
    panels = [type(p).__name__ for p in grid.panels]
    assert panels == ["ScatterPlot", "LinePlot", "LinePlot", "BarPlot"]
    scatter, val_curve, _, bars = grid.panels
    assert (scatter.x.name, scatter.y.name) == (FLOPS_METRIC, TEST_METRIC)
    assert val_curve.x == FLOPS_METRIC and val_curve.y == [VAL_METRIC]
    # the Δ panel subtracts the baseline's mean test accuracy: the HTML report's metric and number
    res = json.loads((matrix_dir / "results.json").read_text())
    ref = next(g for g in res["aggregate"] if g["techniques"] == g["reference"])
    base = summary["baseline_test_accuracy"]
    assert base == pytest.approx(ref["test_accuracy_mean"])
    assert bars.custom_expressions == [f"${{{TEST_METRIC}}} - {base:.4f}"]
    assert bars.groupby_aggfunc == "mean" and bars.groupby_rangefunc == "stddev"
    for p in grid.panels:  # every panel serialises to W&B's spec without the network
        assert p._to_model().model_dump(by_alias=True)["viewType"]


def test_wandb_report_saved_only_online(matrix_dir: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.reports.v2.interface as wri

    saved: list[tuple[str, str, str]] = []

    def fake_save(self: Any, *a: Any, **k: Any) -> Any:
        saved.append((self.title, self.entity, self.blocks[4].runsets[0].entity))
        object.__setattr__(self, "id", "abc")
        return self

    class FakeApi:
        default_entity = "someone"

    monkeypatch.setattr(wr.Report, "save", fake_save)
    monkeypatch.setattr(wr.Report, "url", property(lambda self: "wandb-report-url"), raising=False)
    monkeypatch.setattr(wri, "_get_api", lambda: FakeApi())
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "out"
    assert main([str(matrix_dir), "--out", str(out), "--wandb", "--title", "Online"]) == 0
    assert saved == [("Online", "someone", "someone")]  # W&B's default entity, for the runset too
    assert "W&B report uploaded: wandb-report-url" in capsys.readouterr().out
    assert json.loads((out / "wandb_report.json").read_text())["uploaded"] is True
    monkeypatch.setenv("WANDB_MODE", "offline")  # an API key but offline: not saved
    assert main([str(matrix_dir), "--out", str(out), "--wandb"]) == 0
    assert len(saved) == 1 and "not uploaded: WANDB_MODE=offline" in capsys.readouterr().out


def test_api_key_is_what_wandb_itself_would_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule (`effrecipes.wandb_mode`) for the logger and the report, from wandb's settings:
    the env key, or a netrc entry for the server wandb talks to (a self-hosted WANDB_BASE_URL
    too, which reading ~/.netrc for "api.wandb.ai" got wrong)."""
    from effrecipes import wandb_mode
    from effrecipes.report import wandb_report

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode.has_api_key() is False and wandb_report.has_api_key is wandb_mode.has_api_key
    assert wandb_mode.resolve_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert wandb_mode.has_api_key() is True and wandb_mode.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # self-hosted: no key there
    assert wandb_mode.has_api_key() is False
    (tmp_path / ".netrc").write_text("machine wandb.example.com\n  login user\n  password k\n")
    assert wandb_mode.has_api_key() is True
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_mode.has_api_key() is True
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode.resolve_mode("auto") == "offline"


# --------------------------------------------------------------------------- headless browser

@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
            if shutil.which("chromium"):
                break
            try:
                subprocess.run(cmd, capture_output=True, timeout=600, env=env)
            except (OSError, subprocess.TimeoutExpired):
                break
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and `apt-get install -y chromium` was not possible "
                    "(needs root and the Debian archive)")
    return exe


def _browse(chromium: str, url: str, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    profile, netlog = tmp / "profile", tmp / "netlog.json"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
            f"--log-net-log={netlog}", "--net-log-capture-mode=Everything", *extra, url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return proc, netlog


def page_requests(netlog: Path) -> list[str]:
    """URLs the page asked the network stack for. Chromium's own background requests (component
    updater, accounts) are keyed by no site; requests a file:// page makes are keyed by the
    page's top-frame site, file://."""
    log = json.loads(netlog.read_text())
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for e in log["events"]:
        p = e.get("params") or {}
        if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "file://" in str(
                p.get("network_isolation_key", "")) and not str(p.get("url", "")).startswith(
                ("file:", "data:")):
            urls.append(p["url"])
    return urls


def test_html_in_headless_chromium(chromium: str, report: Path, matrix_dir: Path,
                                   tmp_path: Path) -> None:
    from PIL import Image

    # the detector really sees a page's requests (negative check)
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><p>probe</p><img src="http://127.0.0.1:9/x.png">'
                     '<link rel="stylesheet" href="https://example.invalid/a.css">')
    (tmp_path / "neg").mkdir()
    _, netlog = _browse(chromium, probe.as_uri(), tmp_path / "neg", "--screenshot=" + str(tmp_path / "neg.png"))
    assert sorted(page_requests(netlog)) == ["http://127.0.0.1:9/x.png", "https://example.invalid/a.css"]

    shot = tmp_path / "report.png"
    (tmp_path / "pos").mkdir()
    proc, netlog = _browse(chromium, (report / "report.html").as_uri(), tmp_path / "pos",
                           f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.exists(), proc.stderr[-2000:]
    assert page_requests(netlog) == []
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colours = img.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # not a single colour: text, tables, plots
    shutil.copy(shot, report / "screenshot.png")

    # the table sorts in the browser: #sort=-2 (test accuracy, descending) puts the highest mean
    # first (the star is on the best cell outside noise, wherever it sorts)
    def rows(fragment: str) -> list[str]:
        (tmp_path / fragment).mkdir()
        proc, _ = _browse(chromium, (report / "report.html").as_uri() + "#sort=" + fragment,
                          tmp_path / fragment, "--dump-dom")
        table = proc.stdout.split('<table id="results"', 1)[1].split("</table>", 1)[0]
        assert 'aria-sort="' in table
        return re.findall(r"<tr[^>]*><td[^>]*>([^<]+)</td>", table)

    desc, asc = rows("-2"), rows("2")
    agg = {a["techniques"]: a for a in _results(matrix_dir)["aggregate"]}
    by_mean = sorted(agg, key=lambda t: -agg[t]["test_accuracy_mean"])
    assert [d.removesuffix(" ★") for d in desc] == by_mean and asc == desc[::-1]
    assert f"{_starred(agg)} ★" in desc


def test_offline_hint_once_per_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A matrix prints the `wandb sync` hint once; its cells (workers) do not repeat it."""
    from effrecipes import wandb_mode
    from effrecipes.recipe import validate_recipe
    from effrecipes.wandb_logging import build_wandb_logger
    from tests.conftest import tiny_recipe

    monkeypatch.setenv("WANDB_MODE", "offline")
    on = tiny_recipe(tmp_path, **{"loggers.wandb": {"enabled": True}})
    off = tiny_recipe(tmp_path)
    assert wandb_mode.offline_hint([off]) == ""
    assert wandb_mode.offline_hint([on, on, off]).startswith("W&B: no API key or network")
    monkeypatch.delenv(wandb_mode.OFFLINE_HINT_SAID, raising=False)
    build_wandb_logger(validate_recipe(on))
    assert capsys.readouterr().out.count("wandb sync") == 1  # a single run says it
    monkeypatch.setenv(wandb_mode.OFFLINE_HINT_SAID, "1")  # what a matrix worker has
    build_wandb_logger(validate_recipe(on))
    assert "wandb sync" not in capsys.readouterr().out


# --------------------------------------------------------------------------- hostile files

DEEP_JSON = "[" * 100_000 + "]" * 100_000


class Blocked(BaseException):
    """A read blocked (on a FIFO): a BaseException, so no `except OSError` in the code under test
    swallows it."""


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Guards for reads that must never happen: an alarm ends a blocked read (a FIFO) after 20 s
    (`Blocked`),
    and an address-space limit 2 GiB above the current size turns reading /dev/zero to the end
    into a quick MemoryError instead of taking the machine's memory."""
    import resource
    import signal

    def timeout(signum: int, frame: Any) -> None:
        raise Blocked("a read that never returns")

    old_handler = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
              if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)


def _first_run(m: Path) -> Path:
    cell = sorted(p for p in (m / "cells").iterdir() if p.is_dir())[0]
    return cell / cell.name


def _spoil(path: Path, how: str) -> None:
    """Replace `path` with a hostile file: deep nesting, a link to /dev/zero, a FIFO, bytes that
    are not UTF-8, or YAML with an explicit tag whose content is not of that type."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if how == "deep":
        path.write_text(DEEP_JSON if path.suffix == ".json" else "a: " + DEEP_JSON + "\n")
    elif how == "/dev/zero":
        os.symlink("/dev/zero", path)
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "non-utf8":
        path.write_bytes(b"name: \xff\xfe\n")
    else:  # an explicit YAML tag: !!float abc, !!int abc, !!timestamp abc, !!bool maybe
        path.write_text(f"name: x\nnotes: {how}\n")


@pytest.mark.parametrize("target,how,note", [
    # RecursionError from the JSON / YAML parser
    ("results.json", "deep", "results.json is unreadable (nested too deeply)"),
    ("matrix.json", "deep", "matrix.json is unreadable (nested too deeply)"),
    ("RUN/metrics.json", "deep", "finished but its run directory is missing or unreadable"),
    ("RUN/recipe.yaml", "deep", "recipe.yaml unreadable (nested too deeply)"),
    # MemoryError: a symlink to /dev/zero was read to the end
    ("results.json", "/dev/zero", "results.json is unreadable (is a device)"),
    ("spec.yaml", "/dev/zero", "spec.yaml is unreadable (is a device)"),
    ("RUN/metrics.json", "/dev/zero", "finished but its run directory is missing or unreadable"),
    ("RUN/recipe.yaml", "/dev/zero", "recipe.yaml unreadable (is a device)"),
    ("RUN/history.csv", "/dev/zero", "history.csv unreadable (is a device)"),
    # a FIFO: the read blocked forever
    ("results.json", "fifo", "results.json is unreadable (is a FIFO)"),
    ("RUN/metrics.json", "fifo", "finished but its run directory is missing or unreadable"),
    ("RUN/history.csv", "fifo", "history.csv unreadable (is a FIFO)"),
    # UnicodeDecodeError
    ("spec.yaml", "non-utf8", "spec.yaml is unreadable (not UTF-8 text (byte 6))"),
    # ValueError / AttributeError / KeyError from PyYAML's constructors
    ("spec.yaml", "!!float abc", "spec.yaml is unreadable (invalid YAML)"),
    ("spec.yaml", "!!int abc", "spec.yaml is unreadable (invalid YAML)"),
    ("spec.yaml", "!!timestamp abc", "spec.yaml is unreadable (invalid YAML)"),
    ("spec.yaml", "!!bool maybe", "spec.yaml is unreadable (invalid YAML)"),
    ("RUN/recipe.yaml", "!!int abc", "recipe.yaml unreadable (invalid YAML)"),
    ("RUN/recipe.yaml", "!!timestamp abc", "recipe.yaml unreadable (invalid YAML)"),
    ("RUN/recipe.yaml", "!!bool maybe", "recipe.yaml unreadable (invalid YAML)"),
])
def test_unreadable_matrix_files_are_notes(matrix_dir: Path, tmp_path: Path, bounded: None,
                                           capsys: pytest.CaptureFixture[str], target: str,
                                           how: str, note: str) -> None:
    """Every file a report reads goes through one bounded reader: a file it cannot read or parse
    is a note (the report falls back to what else it has), never a traceback or a hang."""
    m = tmp_path / "m"
    shutil.copytree(matrix_dir, m)
    path = _first_run(m) / target[4:] if target.startswith("RUN/") else m / target
    _spoil(path, how)
    out = tmp_path / "out"
    assert main([str(m), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert all(line.startswith("note: ") for line in err.splitlines()), err
    assert note in err, err
    assert note in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir())[:2] == ["report.html", "report.md"]


@pytest.mark.parametrize("how", ["deep", "/dev/zero", "fifo"])
def test_unreadable_metrics_of_a_single_run_is_one_line(matrix_dir: Path, tmp_path: Path,
                                                        bounded: None, how: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    shutil.copytree(_first_run(matrix_dir), run)
    _spoil(run / "metrics.json", how)
    assert main([str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "metrics.json is missing or unreadable" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value,note", [
    ("tuned", 5, "results.json: `tuned` is not a list; ignored"),
    ("tuned", [1, "x", {"a": []}], "results.json: 3 malformed `tuned` entries ignored"),
    ("reference", [1], "results.json: `reference` is not text; ignored"),
    ("counts", "x", "results.json: `counts` is not a mapping of status to count; recounted"),
])
def test_results_json_fields_of_the_wrong_type(matrix_dir: Path, tmp_path: Path, field: str,
                                               value: Any, note: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    m = tmp_path / "m"
    shutil.copytree(matrix_dir, m)
    res = _results(m)
    res[field] = value
    (m / "results.json").write_text(json.dumps(res))
    assert main([str(m), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert note in err and "cutout" in (tmp_path / "out" / "report.md").read_text(), err


def test_absurd_history_values_do_not_break_the_plots(matrix_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """history.csv values like 1e308 made matplotlib fail (`arange: cannot compute length`):
    they are dropped when read."""
    run = tmp_path / "r"
    shutil.copytree(_first_run(matrix_dir), run)
    (run / "history.csv").write_text("epoch,flops_used,val_accuracy\n" + "1e308,1e308,1e308\n" * 50)
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert all(v is None for row in collect(run).runs[0].history for v in row.values())


def test_a_plot_matplotlib_cannot_draw_is_a_note(matrix_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from effrecipes.report import plots

    def broken(c: Any) -> Any:
        raise ValueError("arange: cannot compute length")

    monkeypatch.setitem(plots.FIGURES, "curves", broken)
    out = tmp_path / "out"
    assert main([str(matrix_dir), "--out", str(out)]) == 0
    assert "plot report_val_curves.png not drawn" in capsys.readouterr().err
    assert not (out / "report_val_curves.png").exists()
    assert "_Not drawn: matplotlib could not draw it (ValueError: arange" in (out / "report.md").read_text()


def test_a_very_long_dir_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["d" * 5000]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "path too long" in err, err


def test_a_destination_that_is_a_directory_writes_nothing(matrix_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """report.html being a directory was found only after report.md and the PNGs were written:
    every destination is checked first, and the files are moved into place all together."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").mkdir()
    assert main([str(matrix_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]  # no report.md, no PNGs
    assert err.count("\n") == 1 and "report.html is a directory" in err, err


def test_a_destination_that_is_a_fifo_never_blocks(matrix_dir: Path, tmp_path: Path, bounded: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "report.md")
    assert main([str(matrix_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "report.md is a FIFO" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]


def test_a_failed_write_keeps_the_earlier_report(matrix_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A failure half-way (report.html cannot be written) leaves the earlier report as it was,
    and no temporary files."""
    from effrecipes.report import cli as report_cli

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("earlier")
    (out / "report_val_curves.png").write_bytes(b"earlier")

    def fail(*a: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_cli, "render_html", fail)
    assert main([str(matrix_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "report_val_curves.png"]
    assert (out / "report.md").read_text() == "earlier"
    assert (out / "report_val_curves.png").read_bytes() == b"earlier"
    assert err.count("\n") == 1 and "No space left on device" in err, err


def test_a_killed_reports_staging_directory_is_swept(matrix_dir: Path, tmp_path: Path) -> None:
    """A report killed mid-write leaves `.report-staging-<pid>-*`; the next report removes it
    when that pid no longer runs, and leaves a live writer's directory alone."""
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / f".report-staging-{dead.pid}-abc").mkdir()
    (out / f".report-staging-{dead.pid}-abc" / "report.md").write_text("half")
    live = subprocess.Popen(["sleep", "30"])
    try:
        (out / f".report-staging-{live.pid}-xyz").mkdir()
        assert main([str(matrix_dir), "--out", str(out)]) == 0
        staging = sorted(p.name for p in out.iterdir() if p.name.startswith(".report-staging-"))
        assert staging == [f".report-staging-{live.pid}-xyz"]
        assert (out / "report.md").exists()
    finally:
        live.kill()
        live.wait()
