"""Collect what a report shows from disk: one run directory, a matrix directory, or a directory of
run directories (searched recursively for `metrics.json`).

Nothing here reads a live Trainer: the run directory (`recipe.yaml`, `metrics.json`,
`history.csv`) and the matrix directory (`results.json`, `matrix.json`, `spec.yaml`,
`cells/<id>/cell.json`, `cells/<id>/<id>/`) are the contract. Every number is aggregated by
`effrecipes.stats` (the matrix's own tables use it too): a matrix's aggregate rows come from its
`results.json` (read by `effrecipes.matrix.results.read_results`) when present, otherwise they
are computed from the cell records and run directories by the same function; a directory of runs
is aggregated the same way, one row per run.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from effrecipes import reference as paper_ref
from effrecipes.errors import UserError
from effrecipes.matrix.cells import fmt_value, is_cell_id
from effrecipes.files import Unreadable, read_csv, read_dict, read_json as read_any_json, read_yaml
from effrecipes.matrix.results import read_results
from effrecipes.matrix.state import read_json
from effrecipes.rundir import (HISTORY_FILE, METRICS_FILE, RECIPE_FILE, CellStatus, cell_run_dir,
                               read_metrics, status_of)
from effrecipes.stats import (DIVERGED, DONE, FINISHED, NOISE_RULE, aggregate, best_index,
                              group_key, mean_std, MeanStd, num, split_duplicates, status_counts)

BASELINE = "baseline"
INTERRUPTED = CellStatus.INTERRUPTED
REPEAT = "repeat"   # a run directory with the recipe and seed of an earlier one: counted once
MAX_HISTORY_VALUE = 1e100  # beyond it a history.csv value is junk (FLOPs spent are below 1e30)
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
    status: str = DONE
    problems: list[str] = field(default_factory=list)  # files beside metrics.json not readable

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
    # mean and std over the finished seeds (`effrecipes.stats.mean_std`)
    acc: MeanStd = MeanStd()        # test accuracy (%)
    val: MeanStd = MeanStd()        # best validation accuracy (%): the mean only, as results.json
    final_val: MeanStd = MeanStd()  # last validation accuracy (%)
    flops: MeanStd = MeanStd()      # training FLOPs used
    delta: MeanStd = MeanStd()      # test accuracy minus the reference group's (NOISE_RULE)
    within_noise: Optional[bool] = None
    params: Optional[int] = None
    is_reference: bool = False
    paper: Optional[float] = None          # the paper's figure for this cell
    paper_delta: Optional[float] = None    # the paper's figure minus the paper's baseline figure
    best: bool = False

    @classmethod
    def from_aggregate(cls, a: dict[str, Any], grid_keys: list[str],
                       reference: Optional[str]) -> "Group":
        """A group from one aggregate row (`effrecipes.stats.aggregate`, or results.json's)."""
        g = cls(str(a.get("techniques")), {k: str(a.get(k)) for k in grid_keys})
        g.n, g.n_cells = int(num(a.get("n")) or 0), int(num(a.get("n_cells")) or 0)
        g.n_failed, g.n_diverged = int(num(a.get("n_failed")) or 0), int(num(a.get("n_diverged")) or 0)
        g.acc = MeanStd(num(a.get("test_accuracy_mean")), num(a.get("test_accuracy_std")))
        g.val, g.flops = MeanStd(num(a.get("best_val_accuracy_mean"))), MeanStd(num(a.get("flops_used_mean")))
        params = num(a.get("params"))
        g.params = None if params is None else int(params)
        g.delta = MeanStd(num(a.get("delta_mean")), num(a.get("delta_std")))
        wn = a.get("within_noise")
        g.within_noise = wn if isinstance(wn, bool) else None
        g.is_reference = reference is not None and g.techniques == reference
        g.paper = num(a.get("published"))
        return g

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.techniques, tuple(self.grid.values())

    @property
    def label(self) -> str:
        if not self.grid:
            return self.techniques
        return f"{self.techniques} [{', '.join(f'{k}={v}' for k, v in self.grid.items())}]"

    @property
    def ours_minus_paper(self) -> Optional[float]:
        if self.paper is None or self.acc.mean is None:
            return None
        return self.acc.mean - self.paper


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
    plot_errors: dict[str, str] = field(default_factory=dict)  # plot key -> why it is not drawn

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

def read_history(path: Path, problems: Optional[list[str]] = None) -> list[dict[str, Optional[float]]]:
    """history.csv as rows of finite numbers ([] when missing or unreadable: `problems` says
    why). A value beyond MAX_HISTORY_VALUE (1e308 FLOPs, 1e300 % accuracy) is no measurement and
    is dropped like a blank, so no plot is asked to span it."""
    try:
        rows = read_csv(path)
    except Unreadable as e:
        if not e.missing and problems is not None:
            problems.append(f"{HISTORY_FILE} unreadable ({e.reason})")
        return []
    return [{k: x if (x := num(v)) is not None and abs(x) <= MAX_HISTORY_VALUE else None
             for k, v in row.items() if isinstance(k, str) and k and isinstance(v, str)}
            for row in rows]


cell_status = status_of  # a matrix cell's status from its run's metrics, as composer-ablate sets it


def read_run(path: Path, *, cell_id: Optional[str] = None, status: Optional[str] = None) -> Run:
    """A run directory; UserError when its metrics.json is missing or unreadable."""
    typed = read_metrics(path)
    if typed is None:
        raise UserError("metrics.json is missing or unreadable (not a finished run directory)",
                        file=str(path / METRICS_FILE))
    metrics = typed.model_dump(mode="json")
    if status is None:
        status = DIVERGED if metrics.get("stop_reason") == DIVERGED else DONE
    problems: list[str] = []
    history = read_history(path / HISTORY_FILE, problems)
    # recipe.yaml is written by yaml.safe_dump: read back with its loader
    recipe, why = read_dict(path / RECIPE_FILE, lambda p: read_yaml(p, yaml.safe_load))
    if why:
        problems.append(f"{RECIPE_FILE} unreadable ({why})")
    return Run(path, metrics, history, recipe, cell_id, status, problems)


# --------------------------------------------------------------------------- groups and stars

def _fill_run_stats(g: Group) -> None:
    """What an aggregate row does not hold: FLOP spread and the final validation accuracy."""
    fin = [r for r in g.runs if r.status in FINISHED]
    flops = [x for r in fin if (x := r.get("flops_used")) is not None]
    if flops:
        g.flops = mean_std(flops)
    g.final_val = mean_std([x for r in fin if (x := r.get("final_val_accuracy")) is not None])


def _groups(rows: list[dict[str, Any]], grid_keys: list[str], reference: Optional[str],
            runs: dict[tuple[str, tuple[str, ...]], list[Run]],
            given: Optional[list[dict[str, Any]]] = None,
            published: Optional[dict[str, Any]] = None) -> list[Group]:
    """One Group per configuration of `rows`, aggregated by `effrecipes.stats.aggregate`; an
    aggregate row of `given` (results.json's) is taken as it is written for its configuration."""
    written = {group_key(a, grid_keys): a for a in given or []}
    groups = []
    for a in aggregate(rows, grid_keys, reference, published):
        g = Group.from_aggregate(written.get(group_key(a, grid_keys), a), grid_keys, reference)
        g.runs = runs.get(g.key, [])
        _fill_run_stats(g)
        groups.append(g)
    return groups


def _mark_best(groups: list[Group]) -> None:
    """The star (effrecipes.stats.BEST_RULE): never on a cell within noise of its reference."""
    i = best_index([(g.acc.mean, g.flops.mean, g.within_noise) for g in groups])
    if i is not None:
        groups[i].best = True


# --------------------------------------------------------------------------- paper figures

def _cell_label(run: Run) -> Optional[str]:
    """The techniques label of a run that is a matrix cell (its `cell.json` lies beside the run
    directory), else None."""
    rec = read_json(run.path.parent / "cell.json")
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


def _papers(c: Collection, source: Optional[str]) -> None:
    """Paper figures: the published ones of the aggregate rows, else what the runs recorded; and
    the paper's own delta against its baseline figure."""
    sources: list[str] = [source] if source else []
    for g in c.groups:
        if g.paper is not None:
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


def _finish(c: Collection, source: Optional[str] = None) -> Collection:
    _papers(c, source)
    _mark_best(c.groups)
    return c


# --------------------------------------------------------------------------- matrix directories

def is_matrix_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in ("results.json", "matrix.json")) or \
        any(path.glob("cells/*/cell.json"))


def _record_rows(path: Path, grid_keys: list[str]) -> list[dict[str, Any]]:
    """Cell rows from `cells/<id>/cell.json` (when results.json is missing or unreadable); the
    grid keys found are appended to `grid_keys`."""
    cells = []
    for rec_path in sorted(path.glob("cells/*/cell.json")):
        rec = read_json(rec_path) or {}
        cid = rec.get("cell_id") if is_cell_id(rec.get("cell_id")) else rec_path.parent.name
        techniques = rec.get("techniques")
        label = "+".join(map(str, techniques)) if isinstance(techniques, list) and techniques else (
            techniques if isinstance(techniques, str) else BASELINE)
        grid = rec.get("grid") if isinstance(rec.get("grid"), dict) else {}
        row = {"cell_id": cid, "techniques": label, "seed": rec.get("seed"),
               **{k: fmt_value(v) for k, v in grid.items()}}
        metrics_ok = (cell_run_dir(path, cid) / METRICS_FILE).is_file()
        row["status"] = (DONE if metrics_ok else
                         rec.get("status") if rec.get("status") in ("failed", INTERRUPTED)
                         else "pending")
        cells.append(row)
        grid_keys += [k for k in grid if k not in grid_keys]
    return cells


def _records_reference(cells: list[dict[str, Any]], info: dict[str, Any],
                       spec: dict[str, Any]) -> Optional[str]:
    """The reference of a matrix without results.json: the baseline, or for leave_one_out (no
    baseline) the full set of techniques."""
    if BASELINE in {c["techniques"] for c in cells}:
        return BASELINE
    algorithms = spec.get("algorithms") if isinstance(spec.get("algorithms"), dict) else {}
    mode = info.get("mode") or algorithms.get("mode")
    techniques = info.get("techniques")
    if mode == "leave_one_out" and techniques and isinstance(techniques, list):
        return "+".join(map(str, techniques))
    return None


def _cell_runs(path: Path, cells: list[dict[str, Any]], grid_keys: list[str], *, fill: bool,
               notes: list[str]) -> dict[tuple[str, tuple[str, ...]], list[Run]]:
    """The run directories of the finished cells, by configuration (in cell order). With `fill`
    (no results.json) each row takes its metrics and its status from its run directory."""
    runs: dict[tuple[str, tuple[str, ...]], list[Run]] = {}
    for row in cells:
        cid, status = str(row["cell_id"]), str(row.get("status") or "pending")
        if status not in FINISHED:
            continue
        run_dir = cell_run_dir(path, cid)
        try:
            run = read_run(run_dir, cell_id=cid, status=status)
        except UserError:
            notes.append(f"cell {cid}: finished but its run directory is missing or unreadable")
            continue
        notes += [f"cell {cid}: {p}" for p in run.problems]
        if fill:
            row.update({k: run.metrics.get(k) for k in _CELL_COLUMNS
                        if k in run.metrics and k not in row})
            row["status"] = run.status = cell_status(run.metrics)
        if run.status in FINISHED:
            runs.setdefault(group_key(row, grid_keys), []).append(run)
    return runs


def _matrix_meta(results: Optional[dict[str, Any]], info: dict[str, Any], spec: dict[str, Any],
                 cells: list[dict[str, Any]], from_file: bool) -> dict[str, Any]:
    res = results or {}
    meta = {"view": res.get("view") or info.get("view") or spec.get("view"),
            "mode": res.get("mode") or info.get("mode"),
            "seeds": info.get("seeds") or spec.get("seeds"),
            "counts": res.get("counts") or status_counts(c.get("status") for c in cells),
            "updated": res.get("updated"),
            "noise_rule": res.get("noise_rule") or NOISE_RULE,
            "aggregates_from": "results.json" if from_file else "run directories",
            "tune": res.get("tune"), "tune_rule": res.get("tune_rule"), "tuned": res.get("tuned")}
    return {k: v for k, v in meta.items() if v is not None}


def collect_matrix(path: Path) -> Collection:
    """A matrix directory: its cells and aggregate rows from results.json when readable, else
    from the cell records and run directories (aggregated the same way)."""
    notes: list[str] = []
    results = read_results(path, notes)
    info, why = read_dict(path / "matrix.json", read_any_json)
    if why:
        notes.append(f"matrix.json is unreadable ({why}); ignored")
    spec, why = read_dict(path / "spec.yaml", read_yaml)  # as composer-ablate reads a spec
    if why:
        notes.append(f"spec.yaml is unreadable ({why}); ignored")
    info, spec = info or {}, spec or {}
    name = str((results or {}).get("matrix") or info.get("name") or spec.get("name") or path.name)
    grid_keys = [str(k) for k in info.get("grid", [])] if isinstance(info.get("grid"), list) else []
    if results is not None:
        cells = results["cells"]
        if not grid_keys and cells:
            grid_keys = [k for k in cells[0] if k not in _CELL_COLUMNS]
        reference = results.get("reference")
    else:
        cells = _record_rows(path, grid_keys)
        reference = _records_reference(cells, info, spec)
    runs = _cell_runs(path, cells, grid_keys, fill=results is None, notes=notes)
    order = {str(row["cell_id"]): i for i, row in enumerate(cells)}
    sref = spec.get("reference") if isinstance(spec.get("reference"), dict) else {}
    published = sref.get("values") if isinstance(sref.get("values"), dict) else None
    given = (results or {}).get("aggregate") or []
    groups = _groups(cells, grid_keys, reference, runs, given, published)
    source = f"{sref['source']} ({sref.get('metric', 'accuracy (%)')})" if sref.get("source") else None
    in_order = sorted((r for g in groups for r in g.runs), key=lambda r: order.get(str(r.cell_id), 0))
    c = Collection("matrix", path, name, in_order, groups, reference,
                   grid_keys, cells, _matrix_meta(results, info, spec, cells, bool(given)),
                   notes=notes)
    return _finish(c, source)


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


def _configurations(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by configuration (everything but the seed), each under a distinct label: the
    run name without its seed suffix; two configurations with one name get a `#2` suffix."""
    by_key: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.name, r.seed or 0)):
        by_key.setdefault(_config_key(r), []).append(r)
    out: dict[str, list[Run]] = {}
    seen: dict[str, int] = {}
    for members in by_key.values():
        label = _base_label(members[0])
        seen[label] = seen.get(label, 0) + 1
        out[label if seen[label] == 1 else f"{label}#{seen[label]}"] = members
    return out


def _runs_reference(configs: dict[str, list[Run]]) -> Optional[str]:
    """The baseline among plain runs: the one configuration labelled 'baseline' (or
    '*baseline'), else the one without algorithms; None when ambiguous."""
    named = [label for label in configs if label == BASELINE or label.endswith("baseline")]
    if len(named) == 1:
        return named[0]
    plain = [label for label, rs in configs.items() if not rs[0].metrics.get("algorithms")]
    if len(plain) == 1 and len(configs) > 1:
        return plain[0]
    return None


def _run_rows(configs: dict[str, list[Run]], notes: list[str]) -> tuple[list[dict[str, Any]], list[Run]]:
    """One row per run (its recipe's hash: the configuration and the seed) and the runs counted;
    a run repeating an earlier one (same recipe, same seed) is listed as a repeat, not a seed."""
    rows, by_row = [], {}
    for label, members in configs.items():
        digest = hashlib.sha256(_config_key(members[0]).encode()).hexdigest()
        for r in members:
            row = {"cell_id": r.name, "techniques": label, "seed": r.seed, "status": r.status}
            row.update({k: r.metrics.get(k) for k in _CELL_COLUMNS if k in r.metrics})
            row["hash"] = digest
            rows.append(row)
            by_row[id(row)] = r
    kept, repeats = split_duplicates(rows)
    for row in repeats:
        first = next(k for k in kept if k["hash"] == row["hash"] and k["seed"] == row["seed"])
        notes.append(f"{by_row[id(row)].path}: the same recipe and seed as {by_row[id(first)].path}"
                     " (a repeated run): counted once")
        row["status"] = REPEAT
    return rows, [by_row[id(k)] for k in kept]


def collect_runs(root: Path, run_dirs: list[Path], kind: str) -> Collection:
    """One run directory (`kind` "run") or many ("runs"), grouped by configuration."""
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
    notes += [f"{r.path}: {p}" for r in runs for p in r.problems]
    configs = _configurations(runs)
    rows, counted = _run_rows(configs, notes)
    ids = {id(r) for r in counted}
    by_config = {(label, ()): [r for r in members if id(r) in ids] for label, members in configs.items()}
    reference = _runs_reference(configs)
    groups = _groups(rows, [], reference, by_config)
    name = runs[0].name if kind == "run" else root.name
    c = Collection(kind, root, name, counted, groups, reference, [], rows,
                   {"aggregates_from": "run directories", "noise_rule": NOISE_RULE}, notes=notes)
    return _finish(c)


# --------------------------------------------------------------------------- entry point

def collect(path: str | Path) -> Collection:
    """Load a run directory, a matrix directory, or a directory of run directories."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)  # one look, so that an odd path (too long, a loop) is one line too
        given, p = p, p.resolve()
    except (OSError, ValueError, RuntimeError) as e:
        problem = {errno.ENOENT: "no such directory", errno.ENAMETOOLONG: "path too long",
                   errno.ELOOP: "symlink loop (too many levels of symbolic links)",
                   errno.ENOTDIR: "a parent of this path is not a directory"}.get(
                       getattr(e, "errno", None) or 0, f"cannot open: {getattr(e, 'strerror', None) or e}")
        raise UserError(problem, file=str(p), hint="give a run directory, a matrix directory or a "
                        "directory of runs") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError("not a directory (give a run directory, a matrix directory or a directory "
                        "of runs)", file=str(given))
    if os.path.lexists(p / METRICS_FILE):  # whatever it is: a run directory, readable or not
        return collect_runs(p, [p], "run")
    if is_matrix_dir(p):
        c = collect_matrix(p)
        if not c.runs:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(c.meta.get("counts", {}).items()) if v)
            raise UserError(f"matrix {c.name!r} has no finished cells yet ({counts or 'no cells'}); "
                            "run composer-ablate first", file=str(p))
        return c
    found = sorted({m.parent for m in p.rglob(METRICS_FILE)
                    if not any(part.startswith(".") for part in m.relative_to(p).parts)})
    if not found:
        raise UserError("no runs found (no metrics.json under this directory)", file=str(p),
                        hint="give a run directory, a matrix directory or a directory of runs")
    return collect_runs(p, found, "runs")
