"""The ablation-matrix spec: a small YAML file naming a base recipe, the techniques to ablate,
a grid of recipe settings and the seeds.

Loaded like a recipe: the recipe's safe YAML loader, a strict pydantic schema that rejects unknown
keys, and every mistake reported as one line naming the spec file, the field and the valid
choices. `key=value` overrides on the command line edit the spec before it is validated
(`apply_spec_override`).
"""
from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from effrecipes.errors import RecipeError, closest_first, shorten
from effrecipes.recipe import (RecipeLoader, normalise_algorithms, parse_override, path_problem, read_yaml,
                               set_dotted, validation_error_to_recipe_error)

MODES = ("one_at_a_time", "leave_one_out", "all_subsets", "cumulative", "explicit")
VIEWS = ("equal_flops", "equal_epochs")
MAX_CELLS = 10_000  # a matrix larger than this is almost certainly a typo (all_subsets of 14+)
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._=+,-]*"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class AlgorithmsSpec(_Section):
    mode: Literal["one_at_a_time", "leave_one_out", "all_subsets", "cumulative", "explicit"] = Field(
        "one_at_a_time", description="how technique combinations are built from the pool")
    pool: dict[str, Optional[dict[str, Any]]] = Field(
        default_factory=dict, description="Composer algorithm name -> kwargs, added to the base "
        "recipe's own algorithms")
    pseudo: dict[str, list[str]] = Field(
        default_factory=dict, description="technique name -> recipe overrides (for techniques that "
        "are settings, not Composer algorithms, e.g. one_cycle: [scheduler.name=one_cycle])")
    combos: Optional[list[list[str]]] = Field(
        None, description="mode explicit only: the technique combinations ([] = baseline)")

    @field_validator("pool", mode="before")
    @classmethod
    def _pool_list_ok(cls, v: Any) -> Any:
        # accept the recipe form too: `- blurpool: {}` list entries
        if isinstance(v, list):
            return {k: kw for item in normalise_algorithms(v) for k, kw in item.items()}
        return v

    @property
    def techniques(self) -> list[str]:
        """Pool algorithms first (file order), then pseudo techniques (file order)."""
        return list(self.pool) + list(self.pseudo)


class ReferenceSpec(_Section):
    """Published numbers to show beside ours in results.md (keyed by combo label)."""

    source: str = Field(description="where the numbers come from, e.g. 'paper 004 Table 4, CIFAR10'")
    metric: str = Field("accuracy (%)", description="what the numbers are")
    values: dict[str, float] = Field(description="combo label ('baseline', 'blurpool', "
                                     "'blurpool+cutout', ...) -> value")


class MatrixSpec(_Section):
    name: str = Field(description="matrix name; the matrix directory is <output>/<name>")
    base: str = Field(description="base recipe, relative to the spec file")
    output: str = Field("runs/matrices", description="directory holding matrix directories "
                        "(relative to the working directory, like a recipe's output.root)")
    overrides: list[str] = Field(default_factory=list,
                                 description="dotted overrides applied to every cell")
    algorithms: AlgorithmsSpec = Field(default_factory=AlgorithmsSpec)
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="dotted recipe key -> values (full product)")
    seeds: list[int] = Field(default_factory=lambda: [0], description="seeds; every cell runs each")
    tune: list[str] = Field(default_factory=list, description="grid keys tuned per arm: every "
                            "technique set gets the same search over them, the setting with the "
                            "best mean validation accuracy is selected and its test accuracy "
                            "reported, beside the untuned (base recipe) setting")
    view: Literal["equal_flops", "equal_epochs"] = Field(
        "equal_flops", description="equal_flops: same FLOP cap for every cell; equal_epochs: "
        "budget.flops removed, budget.max_epochs required (the paper's protocol)")
    reference: Optional[ReferenceSpec] = Field(None, description="published numbers to compare with")
    notes: Optional[str] = Field(None, description="free text")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(NAME_RE, v):
            raise ValueError("use letters, digits and . _ = + , - only (no path separators)")
        return v

    @field_validator("base", "output")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        problem = path_problem(v)  # the recipe's own path check: NUL bytes, ~unknown, too long
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _tune_keys_in_grid(self) -> "MatrixSpec":
        missing = [k for k in self.tune if k not in self.grid]
        if missing:
            raise ValueError(f"tune lists {missing[0]!r}, which the grid does not vary; add it to "
                             "grid with the values to search")
        return self

    @field_validator("seeds")
    @classmethod
    def _seeds_ok(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("list at least one seed")
        if any(s < 0 for s in v):
            raise ValueError("seeds must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("a seed is listed twice")
        return v

    @field_validator("grid")
    @classmethod
    def _grid_ok(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in key.split(".")):
                raise ValueError(f"grid key {key!r} is not a dotted recipe key such as optimizer.lr")
            if key == "seed":
                raise ValueError("vary the seed with `seeds:`, not the grid")
            if key.split(".")[0] == "output":
                raise ValueError(f"grid key {key!r}: output.* is set by the matrix for each cell")
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            seen: list[Any] = []
            for val in values:
                if val in seen:
                    raise ValueError(f"grid key {key!r} lists {val!r} twice")
                seen.append(val)
        return v

    @model_validator(mode="after")
    def _techniques_ok(self) -> "MatrixSpec":
        a = self.algorithms
        both = set(a.pool) & set(a.pseudo)
        if both:
            raise ValueError(f"technique {sorted(both)[0]!r} is both in algorithms.pool and "
                             "algorithms.pseudo; name it once")
        return self


# --------------------------------------------------------------------------- loading


def validate_spec(data: dict[str, Any], *, file: str = "<spec>") -> MatrixSpec:
    """Schema + registry checks of a spec dict; every error is one line naming file and field."""
    try:
        spec = MatrixSpec.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_recipe_error(err, data, file, root=MatrixSpec) from None
    _check_techniques(spec, file)
    return spec


def _check_techniques(spec: MatrixSpec, file: str) -> None:
    """What the schema cannot check alone: names against the registries and the overrides, grid
    keys and combos against each other; each mistake one line naming the spec field."""
    _check_pool(spec.algorithms, file)
    _check_pseudo(spec.algorithms, file)
    for text in spec.overrides:
        _check_override(text, file, "overrides", shown=shorten(text, 80),
                        hint=" (use seeds: and --out)")
    for key in spec.grid:
        parts = key.split(".")
        if parts[0] == "algorithms" and len(parts) >= 2 and parts[1] in spec.algorithms.pool:
            raise RecipeError(f"grid key {key!r} varies pool algorithm {parts[1]!r}; set its kwargs "
                              "in algorithms.pool (one spec per variant)", file=file,
                              field=f"grid.{key}")
    if "baseline" in spec.algorithms.techniques:
        raise RecipeError("'baseline' is reserved for the combination with no technique",
                          file=file, field="algorithms.pseudo.baseline")
    _check_combos(spec.algorithms, file)


def _check_pool(a: AlgorithmsSpec, file: str) -> None:
    """Every pool algorithm is a registered one with valid kwargs, reported under the spec's
    field `algorithms.pool.<name>[.<kwarg>]` rather than the recipe's."""
    from effrecipes import algorithms as algos  # lazy: torch, Composer; composer-report needs neither

    for name, kwargs in a.pool.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                algos.check_algorithm(name, kwargs or {}, file=file)
        except RecipeError as e:  # name the spec field: algorithms.pool.<name>[.<kwarg>]
            field = (e.field or f"algorithms.{name}").replace("algorithms.", "algorithms.pool.", 1)
            msg = getattr(e, "message", None) or str(e).removeprefix(
                f"{file}: {e.field}: " if e.field else f"{file}: ")
            raise RecipeError(msg, file=file, field=field) from None


def _check_pseudo(a: AlgorithmsSpec, file: str) -> None:
    """Pseudo techniques: a usable name and at least one valid recipe override each."""
    for name, overrides in a.pseudo.items():
        if not re.fullmatch(NAME_RE, name):
            raise RecipeError("technique names use letters, digits and . _ = + , - only",
                              file=file, field=f"algorithms.pseudo.{name}")
        if not overrides:
            raise RecipeError("list at least one override, e.g. [scheduler.name=one_cycle]",
                              file=file, field=f"algorithms.pseudo.{name}")
        for text in overrides:
            _check_override(text, file, f"algorithms.pseudo.{name}", shown=text)


def _check_override(text: str, file: str, field: str, *, shown: str, hint: str = "") -> None:
    """A recipe override the matrix applies: parseable, and not on output.* or seed, which the
    matrix sets for each cell."""
    try:
        path, _ = parse_override(text)
    except RecipeError as e:
        raise RecipeError(str(e), file=file, field=field) from None
    if path[0] in ("output", "seed"):
        raise RecipeError(f"{shown!r}: output.* and seed are set by the matrix{hint}",
                          file=file, field=field)


def _check_combos(a: AlgorithmsSpec, file: str) -> None:
    """mode explicit: combos of known techniques, each listed once; other modes: no combos, and
    a mode given explicitly needs techniques to combine."""
    techniques = a.techniques
    if a.mode != "explicit":
        if a.combos is not None:
            raise RecipeError(f"combos is only read in mode explicit (mode is {a.mode}); remove it "
                              "or set mode: explicit", file=file, field="algorithms.combos")
        if not techniques and "mode" in a.model_fields_set:
            raise RecipeError(f"mode {a.mode} needs at least one technique in algorithms.pool or "
                              "algorithms.pseudo (or no mode at all: a grid-only matrix)", file=file,
                              field="algorithms.pool")
        return
    if a.combos is None:
        raise RecipeError("mode explicit needs algorithms.combos, e.g. [[], [blurpool, cutout]]",
                          file=file, field="algorithms.combos")
    seen: dict[frozenset[str], int] = {}
    for i, combo in enumerate(a.combos):
        for t in combo:
            if t not in techniques:
                valid = closest_first(t, techniques) or ["(the pool is empty)"]
                raise RecipeError(f"unknown technique {t!r}; valid (closest first): "
                                  f"{', '.join(valid)}", file=file, field=f"algorithms.combos.{i}")
        if len(set(combo)) != len(combo):
            raise RecipeError("a technique is listed twice in this combo", file=file,
                              field=f"algorithms.combos.{i}")
        key = frozenset(combo)
        if key in seen:
            raise RecipeError(f"same combination as algorithms.combos.{seen[key]}", file=file,
                              field=f"algorithms.combos.{i}")
        seen[key] = i
    if not a.combos:
        raise RecipeError("list at least one combo ([] = baseline)", file=file,
                          field="algorithms.combos")


def apply_spec_override(data: dict[str, Any], text: str, *, file: str) -> None:
    """One command-line `key=value` on a spec dict. Spec keys edit the spec (`seeds=[0,1,2]`,
    `view=equal_epochs`, `algorithms.mode=all_subsets`, `algorithms.pool.cutout.length=8`,
    `grid.optimizer.lr=[0.1,0.01]`, `grid.optimizer.lr=null` drops a grid key); any other key is a
    recipe key, added to the spec's `overrides` (applied to every cell), e.g. `budget.flops=1e11`."""
    path, value = parse_override(text)
    shown = shorten(text, 80)
    if path[0] not in MatrixSpec.model_fields:
        if ".".join(path) in (data.get("grid") or {}):
            raise RecipeError(f"{shown!r}: {'.'.join(path)} is varied by the grid; override "
                              f"grid.{'.'.join(path)}=[...] instead", file=file, field="overrides")
        current = data.get("overrides")
        data["overrides"] = (list(current) if isinstance(current, list) else []) + [text]
        return
    if path[0] == "grid" and len(path) > 1:
        grid = data.get("grid")
        grid = dict(grid) if isinstance(grid, dict) else {}
        key = ".".join(path[1:])
        if value is None:
            grid.pop(key, None)
        else:
            grid[key] = value if isinstance(value, list) else [value]
        data["grid"] = grid
        return
    if path[:2] == ["algorithms", "pool"] and len(path) > 2:
        algos = data.get("algorithms") if isinstance(data.get("algorithms"), dict) else {}
        pool = algos.get("pool")
        if isinstance(pool, list):  # the recipe form `- blurpool: {}`: as a mapping to edit it
            try:
                pool = {k: kw for item in normalise_algorithms(pool) for k, kw in item.items()}
            except ValueError as e:
                raise RecipeError(str(e), file=file, field="algorithms.pool") from None
        data["algorithms"] = {**algos, "pool": dict(pool) if isinstance(pool, dict) else {}}
    set_dotted(data, path, value, file=file)


def read_spec_data(path: str | Path, overrides: Optional[list[str]] = None) -> dict[str, Any]:
    """The spec file's mapping with command-line `key=value` overrides applied (not validated)."""
    data = read_yaml(path)
    for text in overrides or []:
        apply_spec_override(data, text, file=str(path))
    return data


class _SpecDumper(yaml.SafeDumper):
    """Writes YAML the recipe loader reads back to the same values: a string that YAML 1.2
    reads as a number (`'1e-3'`) is quoted."""


_SpecDumper.yaml_implicit_resolvers = RecipeLoader.yaml_implicit_resolvers


def spec_as_run(path: str | Path, overrides: list[str], base: Path) -> str:
    """The text of a matrix directory's `spec.yaml`: the spec file as it is when no override was
    given; else the spec with the command-line overrides applied (and `base:` made absolute, as
    the copy lives elsewhere), below comment lines naming the file and the overrides, so the copy
    reruns the matrix by itself and says how it was made."""
    p = Path(path)
    if not overrides:
        return p.read_text()
    data = read_spec_data(p, overrides)
    data["base"] = str(base)
    command = shlex.join(["composer-ablate", str(p.resolve()), *overrides])
    header = ["# the spec as run: the spec file with these command-line overrides applied (and base:",
              "# made absolute), so that this file alone rebuilds the same cells:",
              *(f"#   {line}" for line in command.splitlines())]
    return "\n".join(header) + "\n" + yaml.dump(data, Dumper=_SpecDumper, sort_keys=False,
                                                 allow_unicode=True)


def load_spec(path: str | Path, overrides: Optional[list[str]] = None) -> tuple[MatrixSpec, Path]:
    """Read and validate a spec file, after applying command-line `key=value` overrides; returns
    the spec and the absolute base-recipe path."""
    p = Path(path)
    spec = validate_spec(read_spec_data(p, overrides), file=str(p))
    base = Path(spec.base).expanduser()
    if not base.is_absolute():
        base = (p.resolve().parent / base).resolve()
    if not base.exists():
        raise RecipeError(f"base recipe {str(base)!r} not found (paths are relative to the spec "
                          "file)", file=str(p), field="base")
    return spec, base
