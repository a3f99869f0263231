"""Spec -> cells: technique combinations x grid product x seeds, each a resolved, validated Recipe.

Pure expansion: nothing here trains or writes. Every cell gets a readable deterministic id
(`blurpool+cutout__lr=0.001__bs=32__s0`), the list of dotted overrides that turn the base recipe
into it (so `composer-run BASE <overrides>` reproduces the cell), and a content hash: sha256 of
the resolved recipe's canonical JSON without the `output.*` fields.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from effrecipes.errors import RecipeError, UserError, closest_first, shorten
from effrecipes.files import read_yaml
from effrecipes.matrix.spec import MAX_CELLS, MatrixSpec, load_spec
from effrecipes import rundir
from effrecipes.recipe import (ONE_CYCLE_MOMENTUM_FIELDS, Recipe, SchedulerConfig, apply_override,
                               normalise_algorithms, parse_override, read_recipe_data,
                               validate_recipe)

BASELINE = "baseline"
ID_MAX = 120
_ID_BAD = re.compile(r"[^A-Za-z0-9._=+,-]")
_NUMERIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
ABBREVIATIONS = {"batch_size": "bs", "eval_batch_size": "ebs", "weight_decay": "wd",
                 "max_epochs": "ep", "momentum": "mom", "max_seconds": "secs",
                 "warmup_fraction": "warmup", "val_fraction": "valfrac", "train_subset": "ntrain"}


class MatrixSpecError(UserError):
    """Some cells of a matrix are invalid: `lines` holds one line per invalid cell."""

    def __init__(self, message: str, lines: list[str], **kw: Any) -> None:
        super().__init__(message, **kw)
        self.lines = lines


@dataclass
class Cell:
    id: str
    techniques: tuple[str, ...]
    grid: dict[str, Any]            # grid key -> value as written in the spec
    seed: int
    overrides: list[str]            # dotted overrides on the base recipe (replayable)
    recipe: Optional[Recipe] = None
    hash: Optional[str] = None
    error: Optional[str] = None     # one line when the cell is invalid

    @property
    def label(self) -> str:
        return combo_label(self.techniques)

    @property
    def group(self) -> tuple[str, tuple[str, ...]]:
        """Aggregation key: everything but the seed."""
        return self.label, tuple(fmt_value(self.grid[k]) for k in self.grid)


@dataclass
class Matrix:
    spec: MatrixSpec
    spec_path: Path
    base_path: Path
    matrix_dir: Path
    techniques: list[str]
    combos: list[tuple[str, ...]]
    grid_keys: list[str]
    grid_labels: dict[str, str]
    cells: list[Cell] = field(default_factory=list)
    spec_overrides: list[str] = field(default_factory=list)  # command-line key=value on the spec

    @property
    def reference(self) -> Optional[tuple[str, ...]]:
        """The combo deltas are measured against: the baseline (no techniques), or for
        leave_one_out (which has no baseline) the full set."""
        if () in self.combos:
            return ()
        if self.spec.algorithms.mode == "leave_one_out":
            return tuple(self.techniques)
        return None

    @property
    def invalid(self) -> list[Cell]:
        return [c for c in self.cells if c.error]

    def cell_dir(self, cell: Cell | str) -> Path:
        return rundir.cell_dir(self.matrix_dir, cell if isinstance(cell, str) else cell.id)

    def run_dir(self, cell: Cell | str) -> Path:
        return rundir.cell_run_dir(self.matrix_dir, cell if isinstance(cell, str) else cell.id)


# --------------------------------------------------------------------------- combinations

def combo_label(techniques: tuple[str, ...] | list[str]) -> str:
    return "+".join(techniques) if techniques else BASELINE


def expand_combos(spec: MatrixSpec) -> list[tuple[str, ...]]:
    """The technique combinations of a mode, each in technique (pool, then pseudo) order."""
    a = spec.algorithms
    t = a.techniques
    order = {name: i for i, name in enumerate(t)}
    if a.mode == "one_at_a_time":
        return [()] + [(x,) for x in t]
    if a.mode == "leave_one_out":
        return [tuple(t)] + [tuple(y for y in t if y != x) for x in t]
    if a.mode == "all_subsets":
        return [c for k in range(len(t) + 1) for c in itertools.combinations(t, k)]
    if a.mode == "cumulative":
        return [tuple(t[:k]) for k in range(len(t) + 1)]
    return [tuple(sorted(c, key=order.__getitem__)) for c in (a.combos or [])]


# --------------------------------------------------------------------------- ids and values

def fmt_value(v: Any) -> str:
    """A compact, readable rendering of a grid value (for ids and tables)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        g = f"{v:g}"
        return g if float(g) == v else repr(v)
    if isinstance(v, str):
        return fmt_value(float(v)) if _NUMERIC.fullmatch(v.strip()) else v
    if isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
        return "-".join(fmt_value(x) for x in v)  # layers [c16, m, dw32/2] -> c16-m-dw32/2
    return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)


def yaml_value(v: Any) -> str:
    """A value as override text that `parse_override` reads back to the same value."""
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def grid_labels(keys: list[str]) -> dict[str, str]:
    """Short labels for grid keys in ids: last path part (abbreviated); full path on collision."""
    short = {k: ABBREVIATIONS.get(k.split(".")[-1], k.split(".")[-1]) for k in keys}
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    return {k: (s if counts[s] == 1 else k) for k, s in short.items()}


def sanitise(text: str) -> str:
    return _ID_BAD.sub("-", text)


def is_cell_id(value: Any) -> bool:
    """Whether `value` can be a cell id (`cell_id`): a file name of [A-Za-z0-9._=+,-] starting
    with a letter or digit, so a cell id read back from a file never leads outside the matrix."""
    return (isinstance(value, str) and 0 < len(value) <= ID_MAX and value[0].isalnum()
            and value.isascii() and not _ID_BAD.search(value))


def cell_id(techniques: tuple[str, ...], grid: dict[str, Any], labels: dict[str, str], seed: int) -> str:
    parts = [combo_label(techniques)] + [f"{labels[k]}={fmt_value(v)}" for k, v in grid.items()]
    parts.append(f"s{seed}")
    cid = sanitise("__".join(parts))
    if not cid[0].isalnum():
        cid = "c" + cid
    if len(cid) > ID_MAX:  # keep file names short; the hash suffix keeps ids distinct
        digest = hashlib.sha1(cid.encode()).hexdigest()[:8]
        cid = f"{cid[:ID_MAX - 9]}-{digest}"
    return cid


# --------------------------------------------------------------------------- hashing

# Recipe fields added after matrices were committed, with their schema defaults: at the default
# they are left out of the hash, so every finished cell keeps its hash (and stays finished) when
# the schema grows. A field that changes training at its default must never be listed here.
HASH_NEUTRAL_DEFAULTS: dict[tuple[str, str], Any] = {
    ("scheduler", key): SchedulerConfig.model_fields[key].default for key in ONE_CYCLE_MOMENTUM_FIELDS}


def canonical_json(recipe: Recipe | dict[str, Any]) -> str:
    data = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else copy.deepcopy(dict(recipe))
    data.pop("output", None)
    for (section, key), default in HASH_NEUTRAL_DEFAULTS.items():
        if isinstance(data.get(section), dict) and data[section].get(key, default) == default:
            data[section].pop(key, None)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def recipe_hash(recipe: Recipe | dict[str, Any]) -> str:
    """sha256 of the resolved recipe's canonical JSON, `output.*` excluded."""
    return hashlib.sha256(canonical_json(recipe).encode()).hexdigest()


def run_dir_hash(run_dir: Path) -> Optional[str]:
    """Hash of the recipe a finished run directory actually trained (None if unreadable)."""
    try:  # recipe.yaml is written by yaml.safe_dump: read back by its loader
        data = read_yaml(run_dir / rundir.RECIPE_FILE, yaml.safe_load)
        return recipe_hash(Recipe.model_validate(data))
    except Exception:  # noqa: BLE001 - a damaged run dir simply does not match
        return None


# --------------------------------------------------------------------------- expansion

def _base_with_overrides(base: dict[str, Any], spec: MatrixSpec) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for text in spec.overrides:
        path, value = parse_override(text)
        apply_override(data, path, value)
    return data


def _apply_grid_and_pseudo(cell: Cell, data: dict[str, Any], spec: MatrixSpec) -> None:
    """The cell's grid values, then its pseudo techniques' overrides, each recorded as an
    override so that `composer-run BASE <overrides>` replays the cell."""
    for key, value in cell.grid.items():
        apply_override(data, key.split("."), copy.deepcopy(value))
        cell.overrides.append(f"{key}={yaml_value(value)}")
    for t in cell.techniques:
        for text in spec.algorithms.pseudo.get(t, []):
            path, value = parse_override(text)
            apply_override(data, path, value)
            cell.overrides.append(text)


def _add_pool_algorithms(cell: Cell, data: dict[str, Any], spec: MatrixSpec) -> None:
    """The cell's pool algorithms appended to the recipe's own; one already there is an error
    (the baseline would use it too, so the ablation would measure nothing)."""
    algos = normalise_algorithms(data.get("algorithms"))
    for t in cell.techniques:
        if t in spec.algorithms.pool:
            kwargs = dict(spec.algorithms.pool[t] or {})
            if any(t in a for a in algos):
                raise RecipeError(f"pool algorithm {t!r} is already in the recipe's algorithms, "
                                  "so the baseline would use it too; remove it from the base "
                                  "recipe or from the pool", field=f"algorithms.{t}")
            algos.append({t: kwargs})
            cell.overrides.append(f"algorithms.{t}={yaml_value(kwargs)}")
    data["algorithms"] = algos


def _apply_view(cell: Cell, data: dict[str, Any], spec: MatrixSpec) -> None:
    """What the cells are compared at: the same FLOP cap (equal_flops, the cap must be set) or
    the same epochs (equal_epochs: the cap is removed)."""
    budget = data.get("budget")
    if spec.view == "equal_epochs":
        if not isinstance(budget, dict) or budget.get("max_epochs") is None:
            raise RecipeError("view equal_epochs needs budget.max_epochs (set it in the base "
                              "recipe, overrides or grid); the FLOP cap is removed in this view",
                              field="budget.max_epochs")
        budget["flops"] = None
        cell.overrides.append("budget.flops=null")
    elif not isinstance(budget, dict) or budget.get("flops") is None:
        raise RecipeError("view equal_flops needs budget.flops so every cell gets the same FLOP "
                          "cap (set it in the base recipe or overrides, or use view: "
                          "equal_epochs)", field="budget.flops")


def _place_in_matrix(matrix: Matrix, cid: str, data: dict[str, Any]) -> None:
    """Where the cell writes (its directory in the matrix, overwritten on a re-run) and its W&B
    group (the matrix name, unless the recipe names one)."""
    out = data.get("output") if isinstance(data.get("output"), dict) else {}
    data["output"] = {**out, "root": str(matrix.cell_dir(cid)), "run_name": cid, "overwrite": True}
    wb = (data.get("loggers") or {}).get("wandb")
    if isinstance(wb, dict) and wb.get("enabled") and not wb.get("group"):
        wb["group"] = matrix.spec.name


def _resolve_cell(matrix: Matrix, cell: Cell, base: dict[str, Any]) -> None:
    """Base recipe + the cell's settings -> its validated recipe and hash (raises on a mistake)."""
    spec = matrix.spec
    data = copy.deepcopy(base)
    _apply_grid_and_pseudo(cell, data, spec)
    _add_pool_algorithms(cell, data, spec)
    if cell.techniques and data.get("reference") is not None:
        # the base recipe's paper figure describes the base, not this ablated cell
        data["reference"] = None
        cell.overrides.append("reference=null")
    data["seed"] = cell.seed
    cell.overrides.append(f"seed={cell.seed}")
    _apply_view(cell, data, spec)
    _place_in_matrix(matrix, cell.id, data)
    cell.recipe = validate_recipe(data, file=f"{matrix.spec_path} [cell {cell.id}]")
    cell.hash = recipe_hash(cell.recipe)


def _build_cell(matrix: Matrix, base: dict[str, Any], techniques: tuple[str, ...],
                grid: dict[str, Any], seed: int) -> Cell:
    """One cell; a mistake in it is kept as its one-line `error` (the others still expand), so
    every invalid cell can be listed at once."""
    cid = cell_id(techniques, grid, matrix.grid_labels, seed)
    cell = Cell(cid, techniques, grid, seed, list(matrix.spec.overrides))
    where = f"{matrix.spec_path} [cell {cid}]"
    try:
        _resolve_cell(matrix, cell, base)
    except UserError as e:
        text = str(e)
        cell.error = text if text.startswith(where) else f"{where}: {text}"
    except (ValueError, TypeError) as e:  # e.g. a malformed algorithms list in the base recipe
        cell.error = f"{where}: {' '.join(str(e).split())}"
    return cell


def expand(spec: MatrixSpec, spec_path: Path, base_path: Path, *,
           output: Optional[str | Path] = None) -> Matrix:
    """All cells of a spec, each resolved and validated (invalid ones carry `error`)."""
    matrix_dir = (Path(output if output is not None else spec.output).expanduser() / spec.name).resolve()
    keys = list(spec.grid)
    combos = expand_combos(spec)
    matrix = Matrix(spec, spec_path, base_path, matrix_dir, spec.algorithms.techniques, combos,
                    keys, grid_labels(keys))
    n = len(combos) * len(spec.seeds)
    for values in spec.grid.values():
        n *= len(values)
    if n > MAX_CELLS:
        raise RecipeError(f"the matrix has {n:,} cells (limit {MAX_CELLS:,}); narrow the pool, grid "
                          "or seeds", file=str(spec_path), field="algorithms.mode")
    base = read_recipe_data(base_path)  # with its own `base:` chain resolved
    try:
        base = _base_with_overrides(base, spec)
    except RecipeError as e:
        raise RecipeError(str(e), file=str(spec_path), field="overrides") from None
    try:
        present = {next(iter(a)) for a in normalise_algorithms(base.get("algorithms"))}
    except ValueError:  # malformed: every cell reports it
        present = set()
    for t in spec.algorithms.pool:
        if t in present:
            raise RecipeError(f"{t!r} is already in the base recipe's algorithms ({base_path}), so "
                              "the baseline would use it too; remove it there or from the pool",
                              file=str(spec_path), field=f"algorithms.pool.{t}")
    if spec.reference:
        labels = [combo_label(c) for c in combos]
        for label in spec.reference.values:
            if label not in labels:
                raise RecipeError(f"{label!r} is not a combination of this matrix; valid (closest "
                                  f"first): {', '.join(closest_first(label, labels))}",
                                  file=str(spec_path), field=f"reference.values.{label}")
    for combo in combos:
        for values in itertools.product(*spec.grid.values()):
            grid = dict(zip(keys, values))
            for seed in spec.seeds:
                matrix.cells.append(_build_cell(matrix, base, combo, grid, seed))
    seen_ids: dict[str, Cell] = {}
    seen_hash: dict[str, Cell] = {}
    for c in matrix.cells:
        if c.id in seen_ids:
            raise RecipeError(f"two cells get the id {c.id!r} (grid values that differ only in "
                              "characters outside [A-Za-z0-9._=+,-]); make the values distinct",
                              file=str(spec_path), field="grid")
        seen_ids[c.id] = c
        if c.hash and c.hash in seen_hash and not c.error:
            c.error = (f"{spec_path} [cell {c.id}]: resolves to the same recipe as cell "
                       f"{seen_hash[c.hash].id} (a technique or grid value that changes nothing?)")
        elif c.hash:
            seen_hash[c.hash] = c
    return matrix


def load_matrix(path: str | Path, overrides: Optional[list[str]] = None, *,
                output: Optional[str | Path] = None) -> Matrix:
    """The matrix of a spec file after command-line `key=value` overrides (`load_spec`); the
    overrides are kept on the matrix so that its `spec.yaml` records what ran."""
    spec, base = load_spec(path, overrides)
    matrix = expand(spec, Path(path), base, output=output)
    matrix.spec_overrides = list(overrides or [])
    return matrix


def cell_problem(matrix: Matrix, cell: Cell) -> str:
    """An invalid cell's message without the `SPEC [cell ID]: ` prefix `_build_cell` gives it."""
    text = cell.error or ""
    return text.removeprefix(f"{matrix.spec_path} [cell {cell.id}]: ")


def dry_run_command(matrix: Matrix) -> str:
    """The command that lists every cell of this matrix with its problem, as typed."""
    return shlex.join(["composer-ablate", str(matrix.spec_path), *matrix.spec_overrides, "--dry-run"])


def check_valid(matrix: Matrix, *, hint: Optional[str] = None) -> None:
    """Raise (exit 2) before anything runs when some cells are invalid: one line with the count
    and the first invalid cell's message; `--dry-run` (`dry_run_command`) and `--list-cells`
    list every one (`MatrixSpecError.lines` holds them too)."""
    bad = matrix.invalid
    if bad:
        first = bad[0]
        raise MatrixSpecError(
            f"{len(bad)} of {len(matrix.cells)} cells are invalid; first: {first.id}: "
            f"{shorten(cell_problem(matrix, first), 400)}", [c.error or c.id for c in bad],
            file=str(matrix.spec_path), hint=hint or f"{dry_run_command(matrix)} lists them all")
