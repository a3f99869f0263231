"""Collect what a report shows from disk: one run directory, a matrix directory, or a directory of
run directories (searched recursively for `metrics.json`).

Nothing here reads a live Trainer: the run directory (`recipe.yaml`, `metrics.json`,
`history.csv`) and the matrix directory (`results.json`, `matrix.json`, `spec.yaml`,
`cells/<id>/cell.json`, `cells/<id>/<id>/`) are the contract. A matrix's aggregate rows
(mean +/- std over seeds, delta vs the baseline, the published figure) are taken from its
`results.json` when present; otherwise they are computed here from the run directories with the
same rules.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from effrecipes.stats import mean_std, num
from effrecipes.errors import UserError

FINISHED = ("done", "diverged")
BASELINE = "baseline"
NOISE_RULE = ("within noise when |delta| <= sqrt(std_cell^2 + std_baseline^2) (sample standard "
              "deviations over seeds), or when either side has fewer than 2 finished seeds")
_SEED_SUFFIX = re.compile(r"(?:__|_|-|\.)s(?:eed)?[=_-]?(\d+)$")
_CELL_COLUMNS = {"cell_id", "techniques", "seed", "status", "hash", "error", "test_accuracy",
                 "best_val_accuracy", "flops_used", "flops_cap", "stop_reason", "epochs", "params",
                 "model_size_bytes", "cpu_latency_ms_per_image", "wall_seconds", "train_seconds",
                 "samples_per_second"}


@dataclass
class Run:
    """One finished run directory."""

    path: Path
    metrics: dict[str, Any]
    history: list[dict[str, Optional[float]]]
    recipe: Optional[dict[str, Any]]
    cell_id: Optional[str] = None
    status: str = "done"

    @property
    def name(self) -> str:
        return str(self.metrics.get("run_name") or self.metrics.get("name") or self.path.name)

    @property
    def seed(self) -> Optional[int]:
        s = self.metrics.get("seed")
        return s if isinstance(s, int) else None

    def get(self, key: str) -> Optional[float]:
        return num(self.metrics.get(key))

    @property
    def wandb(self) -> dict[str, Any]:
        return ((self.recipe or {}).get("loggers") or {}).get("wandb") or {}


@dataclass
class Group:
    """A cell of the comparison: every run of one configuration (all seeds)."""

    techniques: str
    grid: dict[str, str] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    n: int = 0                     # finished seeds with a test accuracy
    n_cells: int = 0               # seeds planned (matrix) or found
    n_failed: int = 0
    n_diverged: int = 0
    acc_mean: Optional[float] = None
    acc_std: Optional[float] = None
    val_mean: Optional[float] = None      # best validation accuracy, mean over seeds
    final_val_mean: Optional[float] = None
    flops_mean: Optional[float] = None
    flops_std: Optional[float] = None
    params: Optional[int] = None
    delta_mean: Optional[float] = None
    delta_std: Optional[float] = None
    within_noise: Optional[bool] = None
    is_reference: bool = False
    paper: Optional[float] = None          # the paper's figure for this cell
    paper_delta: Optional[float] = None    # the paper's figure minus the paper's baseline figure
    best: bool = False

    @property
    def label(self) -> str:
        if not self.grid:
            return self.techniques
        return f"{self.techniques} [{', '.join(f'{k}={v}' for k, v in self.grid.items())}]"

    @property
    def ours_minus_paper(self) -> Optional[float]:
        if self.paper is None or self.acc_mean is None:
            return None
        return self.acc_mean - self.paper


@dataclass
class Collection:
    """Everything a report shows."""

    kind: str                      # "run" | "matrix" | "runs"
    root: Path
    name: str                      # matrix name, run name, or directory name
    runs: list[Run]
    groups: list[Group]
    reference: Optional[str] = None            # techniques label deltas are measured against
    grid_keys: list[str] = field(default_factory=list)
    cells: list[dict[str, Any]] = field(default_factory=list)   # one row per run / matrix cell
    meta: dict[str, Any] = field(default_factory=dict)
    paper_sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Optional[Group]:
        return next((g for g in self.groups if g.best), None)

    @property
    def wandb_group(self) -> Optional[str]:
        """The W&B group of the runs: the recipes' `loggers.wandb.group`, else the matrix name."""
        groups = {r.wandb.get("group") for r in self.runs if r.wandb.get("group")}
        if len(groups) == 1:
            return groups.pop()
        return self.name if self.kind == "matrix" else None


# --------------------------------------------------------------------------- reading files

def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_history(path: Path) -> list[dict[str, Optional[float]]]:
    try:
        with open(path, newline="") as f:
            return [{k: num(v) for k, v in row.items() if k} for row in csv.DictReader(f)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def read_run(path: Path, *, cell_id: Optional[str] = None, status: Optional[str] = None) -> Run:
    """A run directory; UserError when its metrics.json is missing or unreadable."""
    metrics = _read_json(path / "metrics.json")
    if metrics is None:
        raise UserError("metrics.json is missing or unreadable (not a finished run directory)",
                        file=str(path / "metrics.json"))
    try:
        recipe = yaml.safe_load((path / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        recipe = None
    if status is None:
        status = "diverged" if metrics.get("stop_reason") == "diverged" else "done"
    return Run(path, metrics, read_history(path / "history.csv"),
               recipe if isinstance(recipe, dict) else None, cell_id, status)


# --------------------------------------------------------------------------- statistics

def _fill_stats(g: Group) -> None:
    fin = [r for r in g.runs if r.status in FINISHED]
    acc = [x for r in fin if (x := r.get("test_accuracy")) is not None]
    g.n = len(acc)
    g.n_cells = max(g.n_cells, len(g.runs))
    g.n_diverged = max(g.n_diverged, sum(r.status == "diverged" for r in g.runs))
    g.acc_mean, g.acc_std = mean_std(acc)
    g.val_mean = mean_std([x for r in fin if (x := r.get("best_val_accuracy")) is not None])[0]
    g.params = next((int(p) for r in fin if (p := r.get("params")) is not None), None)
    _fill_run_stats(g)


def _fill_run_stats(g: Group) -> None:
    """What results.json does not hold: FLOP spread and the final validation accuracy."""
    fin = [r for r in g.runs if r.status in FINISHED]
    flops = [x for r in fin if (x := r.get("flops_used")) is not None]
    if flops:
        g.flops_mean, g.flops_std = mean_std(flops)
    g.final_val_mean = mean_std([x for r in fin if (x := r.get("final_val_accuracy")) is not None])[0]


def _deltas(groups: list[Group], reference: Optional[str]) -> None:
    if reference is None:
        return
    refs = {tuple(g.grid.items()): g for g in groups if g.techniques == reference}
    for g in groups:
        g.is_reference = g.techniques == reference
        ref = refs.get(tuple(g.grid.items()))
        if g.is_reference or ref is None or g.acc_mean is None or ref.acc_mean is None:
            continue
        g.delta_mean = g.acc_mean - ref.acc_mean
        if g.n >= 2 and ref.n >= 2 and g.acc_std is not None and ref.acc_std is not None:
            g.delta_std = math.sqrt(g.acc_std ** 2 + ref.acc_std ** 2)
            g.within_noise = abs(g.delta_mean) <= g.delta_std
        else:
            g.within_noise = True


def _mark_best(groups: list[Group]) -> None:
    scored = [g for g in groups if g.acc_mean is not None]
    if scored:
        best = max(scored, key=lambda g: (g.acc_mean, -(g.flops_mean or 0.0)))
        best.best = True


# --------------------------------------------------------------------------- paper figures

def _cell_label(run: Run) -> Optional[str]:
    """The techniques label of a run that is a matrix cell (its `cell.json` lies beside the run
    directory), else None."""
    rec = _read_json(run.path.parent / "cell.json")
    if rec is None:
        return None
    t = rec.get("techniques")
    if isinstance(t, list):
        return "+".join(map(str, t)) if t else BASELINE
    return str(t) if t else None


def _paper_for_group(g: Group, *, in_matrix: bool) -> tuple[Optional[float], Optional[str]]:
    """The paper figure recorded by the group's runs (`metrics.json["reference"]`).

    A matrix cell inherits the base recipe's `reference`, which names the baseline's figure: it
    is used only for the cell whose techniques match its `setting`; for the other cells the same
    paper and table are looked up in `effrecipes.reference` under the cell's techniques. A plain
    run's own recipe names its own figure and is taken as is.
    """
    from effrecipes import reference as paper_ref

    for r in g.runs:
        ref = r.metrics.get("reference")
        if not isinstance(ref, dict) or num(ref.get("value")) is None:
            continue
        src = f"paper {ref.get('paper')} Table {ref.get('table')} ({ref.get('metric', 'accuracy')})"
        setting = ref.get("setting")
        label = g.techniques if in_matrix else _cell_label(r)
        if label is None or setting in (None, label):
            return num(ref.get("value")), src
        value = paper_ref.lookup(paper=str(ref.get("paper")), table=str(ref.get("table")),
                                 metric=str(ref.get("metric", "val_accuracy")),
                                 dataset=r.metrics.get("dataset"), setting=label)
        if value is not None:
            return value, src
    return None, None


def _papers(c: Collection, published: dict[int, Optional[float]], source: Optional[str]) -> None:
    sources: list[str] = [source] if source else []
    for i, g in enumerate(c.groups):
        if published.get(i) is not None:
            g.paper = published[i]
            continue
        value, src = _paper_for_group(g, in_matrix=c.kind == "matrix")
        if value is not None:
            g.paper = value
            if src and src not in sources:
                sources.append(src)
    refs = {tuple(g.grid.items()): g for g in c.groups if g.is_reference}
    for g in c.groups:
        ref = refs.get(tuple(g.grid.items()))
        if ref is not None and not g.is_reference and g.paper is not None and ref.paper is not None:
            g.paper_delta = g.paper - ref.paper
    c.paper_sources = sources


# --------------------------------------------------------------------------- matrix directories

def is_matrix_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in ("results.json", "matrix.json")) or \
        any(path.glob("cells/*/cell.json"))


def _cell_run(matrix_dir: Path, cid: str, status: str) -> Optional[Run]:
    run_dir = matrix_dir / "cells" / cid / cid
    if not (run_dir / "metrics.json").is_file():
        return None
    try:
        return read_run(run_dir, cell_id=cid, status=status)
    except UserError:
        return None


def load_matrix(path: Path) -> Collection:
    results = _read_json(path / "results.json")
    info = _read_json(path / "matrix.json") or {}
    try:
        spec = yaml.safe_load((path / "spec.yaml").read_text())
    except (OSError, yaml.YAMLError):
        spec = None
    spec = spec if isinstance(spec, dict) else {}
    notes: list[str] = []
    name = str((results or {}).get("matrix") or info.get("name") or spec.get("name") or path.name)
    grid_keys = [str(k) for k in info.get("grid", [])] if isinstance(info.get("grid"), list) else []
    if results is not None and isinstance(results.get("cells"), list):
        cells = [r for r in results["cells"] if isinstance(r, dict) and r.get("cell_id")]
        if not grid_keys and cells:
            grid_keys = [k for k in cells[0] if k not in _CELL_COLUMNS]
        aggregate = [a for a in results.get("aggregate") or [] if isinstance(a, dict)]
        reference = results.get("reference")
    else:
        if (path / "results.json").exists():
            notes.append("results.json is unreadable; aggregates computed from the run directories")
        cells = []
        for rec_path in sorted(path.glob("cells/*/cell.json")):
            rec = _read_json(rec_path) or {}
            cid = str(rec.get("cell_id") or rec_path.parent.name)
            techniques = rec.get("techniques")
            label = "+".join(techniques) if isinstance(techniques, list) and techniques else (
                techniques if isinstance(techniques, str) else BASELINE)
            grid = rec.get("grid") if isinstance(rec.get("grid"), dict) else {}
            row = {"cell_id": cid, "techniques": label, "seed": rec.get("seed"),
                   **{k: _fmt_grid(v) for k, v in grid.items()}}
            metrics_ok = (path / "cells" / cid / cid / "metrics.json").is_file()
            row["status"] = ("done" if metrics_ok else
                             rec.get("status") if rec.get("status") in ("failed", "interrupted")
                             else "pending")
            cells.append(row)
            for k in grid:
                if k not in grid_keys:
                    grid_keys.append(k)
        aggregate = []
        labels = {c["techniques"] for c in cells}
        mode = info.get("mode") or ((spec.get("algorithms") or {}).get("mode"))
        reference = BASELINE if BASELINE in labels else None
        if reference is None and mode == "leave_one_out" and info.get("techniques"):
            reference = "+".join(info["techniques"])
    runs: list[Run] = []
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], Group] = {}
    for row in cells:
        cid = str(row["cell_id"])
        status = str(row.get("status") or "pending")
        grid = {k: str(row.get(k)) for k in grid_keys}
        key = (str(row.get("techniques") or BASELINE), tuple(grid.items()))
        g = groups.setdefault(key, Group(key[0], grid))
        g.n_cells += 1
        g.n_failed += status == "failed"
        run = _cell_run(path, cid, status) if status in FINISHED else None
        if run is not None:
            if row.get("test_accuracy") is None and not results:
                row.update({k: run.metrics.get(k) for k in _CELL_COLUMNS
                            if k in run.metrics and k not in row})
            runs.append(run)
            g.runs.append(run)
        elif status in FINISHED:
            notes.append(f"cell {cid}: finished but its run directory is missing or unreadable")
    published: dict[int, Optional[float]] = {}
    glist = list(groups.values())
    by_key = {(g.techniques, tuple(g.grid.items())): i for i, g in enumerate(glist)}
    if aggregate:
        for a in aggregate:
            key = (str(a.get("techniques")), tuple((k, str(a.get(k))) for k in grid_keys))
            i = by_key.get(key)
            if i is None:
                continue
            g = glist[i]
            g.n = int(a.get("n") or 0)
            g.n_cells = int(a.get("n_cells") or g.n_cells)
            g.n_failed = int(a.get("n_failed") or 0)
            g.n_diverged = int(a.get("n_diverged") or 0)
            g.acc_mean, g.acc_std = num(a.get("test_accuracy_mean")), num(a.get("test_accuracy_std"))
            g.val_mean = num(a.get("best_val_accuracy_mean"))
            g.flops_mean = num(a.get("flops_used_mean"))
            g.params = int(a["params"]) if num(a.get("params")) is not None else None
            g.delta_mean, g.delta_std = num(a.get("delta_mean")), num(a.get("delta_std"))
            g.within_noise = a.get("within_noise") if isinstance(a.get("within_noise"), bool) else None
            g.is_reference = reference is not None and g.techniques == reference
            published[i] = num(a.get("published"))
            _fill_run_stats(g)
        for g in glist:  # a group results.json does not list (should not happen): compute it
            if (g.techniques, tuple(g.grid.items())) not in {
                    (str(a.get("techniques")), tuple((k, str(a.get(k))) for k in grid_keys))
                    for a in aggregate}:
                _fill_stats(g)
        for g in glist:
            g.is_reference = reference is not None and g.techniques == reference
    else:
        for g in glist:
            _fill_stats(g)
        _deltas(glist, reference)
    source = None
    sref = spec.get("reference")
    if isinstance(sref, dict) and sref.get("source"):
        source = f"{sref['source']} ({sref.get('metric', 'accuracy (%)')})"
        if not aggregate and isinstance(sref.get("values"), dict):
            for i, g in enumerate(glist):
                published[i] = num(sref["values"].get(g.techniques))
    meta = {k: v for k, v in {
        "view": (results or {}).get("view") or info.get("view") or spec.get("view"),
        "mode": (results or {}).get("mode") or info.get("mode"),
        "seeds": info.get("seeds") or spec.get("seeds"),
        "counts": (results or {}).get("counts") or _counts(cells),
        "updated": (results or {}).get("updated"),
        "noise_rule": (results or {}).get("noise_rule") or NOISE_RULE,
        "aggregates_from": "results.json" if aggregate else "run directories",
    }.items() if v is not None}
    c = Collection("matrix", path, name, runs, glist, reference, grid_keys, cells, meta, notes=notes)
    _papers(c, published, source)
    _mark_best(glist)
    return c


def _fmt_grid(v: Any) -> str:
    try:
        from effrecipes.matrix.cells import fmt_value
        return fmt_value(v)
    except Exception:  # noqa: BLE001 - the matrix package is optional for reading
        return str(v)


def _counts(cells: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cells:
        out[str(c.get("status"))] = out.get(str(c.get("status")), 0) + 1
    return out


# --------------------------------------------------------------------------- run directories

def _config_key(run: Run) -> str:
    """Everything that defines the configuration except the seed and where it was written."""
    if run.recipe:
        data = {k: v for k, v in run.recipe.items() if k not in ("seed", "output", "loggers", "notes")}
    else:
        m = run.metrics
        data = {k: m.get(k) for k in ("name", "dataset", "model", "algorithms", "flops_cap")}
    return json.dumps(data, sort_keys=True, default=str)


def _base_label(run: Run) -> str:
    name = run.name
    seed = run.seed
    m = _SEED_SUFFIX.search(name)
    if m and (seed is None or int(m.group(1)) == seed):
        name = name[:m.start()]
    return name or str(run.metrics.get("name") or run.path.name)


def _runs_reference(groups: list[Group]) -> Optional[str]:
    """The baseline among plain runs: the one group labelled 'baseline' (or '*baseline'),
    else the one group without algorithms; None when ambiguous."""
    named = [g for g in groups if g.techniques == BASELINE or g.techniques.endswith("baseline")]
    if len(named) == 1:
        return named[0].techniques
    plain = [g for g in groups if g.runs and not g.runs[0].metrics.get("algorithms")]
    if len(plain) == 1 and len(groups) > 1:
        return plain[0].techniques
    return None


def load_runs(root: Path, run_dirs: list[Path], kind: str) -> Collection:
    runs: list[Run] = []
    notes: list[str] = []
    for d in run_dirs:
        try:
            runs.append(read_run(d))
        except UserError as e:
            if kind == "run":
                raise
            notes.append(f"skipped {d}: {e.message}")
    if not runs:
        raise UserError("no readable run directory (every metrics.json is unreadable)",
                        file=str(root))
    by_key: dict[str, Group] = {}
    for r in sorted(runs, key=lambda r: (r.name, r.seed or 0)):
        key = _config_key(r)
        g = by_key.get(key)
        if g is None:
            g = by_key[key] = Group(_base_label(r))
        g.runs.append(r)
    groups = list(by_key.values())
    seen: dict[str, int] = {}
    for g in groups:  # distinct labels: two configurations with one name get a suffix
        seen[g.techniques] = seen.get(g.techniques, 0) + 1
        if seen[g.techniques] > 1:
            g.techniques = f"{g.techniques}#{seen[g.techniques]}"
    for g in groups:
        _fill_stats(g)
    reference = _runs_reference(groups)
    _deltas(groups, reference)
    cells = []
    for g in groups:
        for r in g.runs:
            row = {"cell_id": r.name, "techniques": g.techniques, "seed": r.seed, "status": r.status}
            row.update({k: r.metrics.get(k) for k in _CELL_COLUMNS if k in r.metrics})
            cells.append(row)
    name = runs[0].name if kind == "run" else root.name
    c = Collection(kind, root, name, runs, groups, reference, [], cells,
                   {"aggregates_from": "run directories", "noise_rule": NOISE_RULE}, notes=notes)
    _papers(c, {}, None)
    _mark_best(groups)
    return c


# --------------------------------------------------------------------------- entry point

def collect(path: str | Path) -> Collection:
    """Load a run directory, a matrix directory, or a directory of run directories."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError("no such directory", file=str(p))
    if not p.is_dir():
        raise UserError("not a directory (give a run directory, a matrix directory or a directory "
                        "of runs)", file=str(p))
    p = p.resolve()
    if (p / "metrics.json").is_file():
        return load_runs(p, [p], "run")
    if is_matrix_dir(p):
        c = load_matrix(p)
        if not c.runs:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(c.meta.get("counts", {}).items()) if v)
            raise UserError(f"matrix {c.name!r} has no finished cells yet ({counts or 'no cells'}); "
                            "run composer-ablate first", file=str(p))
        return c
    found = sorted({m.parent for m in p.rglob("metrics.json")
                    if not any(part.startswith(".") for part in m.relative_to(p).parts)})
    if not found:
        raise UserError("no runs found (no metrics.json under this directory)", file=str(p),
                        hint="give a run directory, a matrix directory or a directory of runs")
    return load_runs(p, found, "runs")
