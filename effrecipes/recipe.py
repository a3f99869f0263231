"""The recipe: a typed schema (pydantic, unknown keys rejected), safe YAML loading, dotted overrides.

Everything a user may set lives here with its default and a one-line description, so `--dry-run`,
the docs and error messages all come from one place. Loading never executes code: YAML goes
through `yaml.safe_load` only, and names are looked up in registries, never imported.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from effrecipes.errors import RecipeError, closest_first

MAX_RECIPE_BYTES = 1_000_000  # a recipe is a few hundred bytes; refuse anything absurd


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    name: str = Field(description="dataset name (composer-run --list datasets)")
    root: Optional[str] = Field(None, description="directory holding the original files; "
                                "default ~/.cache/effrecipes/datasets/<name>")
    download: bool = Field(True, description="download through torchvision when files are missing")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                description="fraction of the training set held out for validation (seeded)")
    batch_size: int = Field(128, ge=1, le=65536, description="training batch size (per process)")
    eval_batch_size: int = Field(1000, ge=1, le=65536, description="batch size for validation/test")
    augment: list[Literal["random_crop", "hflip", "autoaugment_imagenet"]] = Field(
        default_factory=list, description="training augmentations, applied in this order")
    crop_padding: int = Field(4, ge=0, le=64, description="padding for random_crop (pixels)")
    image_size: Optional[int] = Field(None, ge=8, le=1024,
                                      description="resize images to this size (large-image datasets)")
    train_subset: Optional[int] = Field(None, ge=1, description="use only the first N training images")
    test_subset: Optional[int] = Field(None, ge=1, description="use only the first N test images")
    num_workers: int = Field(0, ge=0, le=64, description="loader worker processes (image-folder datasets)")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="dataset-specific options (e.g. synthetic sizes)")


class ModelConfig(Section):
    name: str = Field(description="model name (composer-run --list models)")
    kwargs: dict[str, Any] = Field(default_factory=dict,
                                   description="extra builder arguments (e.g. width_mult, dropout)")
    channels_last: bool = Field(
        True, description="NHWC memory format after all surgery: 1.4-1.6x faster CPU training "
                          "measured (benchmarks/README.md); false keeps NCHW")


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw", "decoupled_sgdw", "decoupled_adamw"] = Field(
        "sgd", description="optimizer")
    lr: float = Field(0.05, gt=0, description="(peak) learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")


class SchedulerConfig(Section):
    name: Literal["constant", "one_cycle", "cosine", "linear", "step", "exponential"] = Field(
        "constant", description="learning-rate schedule, spanning exactly the planned steps")
    warmup_fraction: float = Field(0.0, ge=0, lt=1,
                                   description="linear warm-up as a fraction of planned steps "
                                   "(cosine, linear, constant)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="one_cycle: fraction of steps rising")
    div_factor: float = Field(25.0, gt=0, description="one_cycle: initial lr = lr / div_factor")
    final_div_factor: float = Field(1e4, gt=0, description="one_cycle: final lr = initial / this")
    gamma: float = Field(0.95, gt=0, le=1, description="step/exponential: decay per step_epochs")
    step_epochs: int = Field(1, ge=1, description="step: decay every this many epochs")
    alpha_f: float = Field(0.0, ge=0, le=1, description="cosine/linear: final lr as a fraction of lr")


class BudgetConfig(Section):
    flops: Optional[float] = Field(None, description="cap on training FLOPs: 1e14, '100T', '2.5G'")
    max_epochs: Optional[float] = Field(None, gt=0, description="optional cap on epochs")
    max_seconds: Optional[float] = Field(None, gt=0, description="optional cap on training wall seconds")

    @field_validator("flops", mode="before")
    @classmethod
    def _parse_flops(cls, v: Any) -> Any:
        return None if v is None else parse_flops(v)

    @model_validator(mode="after")
    def _some_cap(self) -> "BudgetConfig":
        if self.flops is None and self.max_epochs is None and self.max_seconds is None:
            raise ValueError("set at least one of budget.flops, budget.max_epochs, budget.max_seconds")
        return self


class EvalConfig(Section):
    every_epochs: float = Field(1.0, gt=0, description="validate every this many epochs "
                                "(fractions allowed) and at the end")
    checkpoint: Literal["last", "best_val"] = Field(
        "last", description="which weights the test set sees: the final ones, or the best validation")
    latency_images: int = Field(1000, ge=0, description="test images timed one by one for CPU latency")
    per_class: bool = Field(False, description="save per-class precision/recall/F1 on the test set")


class WandbConfig(Section):
    enabled: bool = Field(False, description="log to Weights & Biases")
    project: str = Field("effrecipes", description="W&B project")
    entity: Optional[str] = Field(None, description="W&B entity (team or user)")
    group: Optional[str] = Field(None, description="W&B group (a matrix sets its name)")
    tags: list[str] = Field(default_factory=list, description="extra tags (algorithms are added)")
    mode: Literal["auto", "online", "offline"] = Field(
        "auto", description="auto = online when an API key is set, else offline")


class LoggersConfig(Section):
    progress_bar: bool = Field(True, description="show a progress bar while training")
    wandb: WandbConfig = Field(default_factory=WandbConfig)


class OutputConfig(Section):
    root: str = Field("runs", description="directory under which run directories are written")
    run_name: Optional[str] = Field(None, description="run directory name; default: the recipe name")
    save_checkpoint: bool = Field(True, description="save the final checkpoint in the run directory")
    overwrite: bool = Field(False, description="replace an existing finished run directory")

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+,-]*", v):
            raise ValueError("use letters, digits and . _ = + , - only (no path separators)")
        return v


class Reference(Section):
    """The paper figure a recipe reproduces (reports show it beside ours)."""

    paper: str = Field(description="paper id, e.g. 004")
    table: str = Field(description="table in the paper")
    metric: str = Field("val_accuracy", description="metric name in seed_results.csv")
    value: float = Field(description="the paper's number")
    setting: Optional[str] = Field(None, description="row label in the paper")


class Recipe(Section):
    name: str = Field(description="recipe name")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for data split, init and augmentation")
    data: DataConfig
    model: ModelConfig
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    algorithms: list[dict[str, dict[str, Any]]] = Field(
        default_factory=list, description="Composer algorithms: a list of `- name: {kwargs}`")
    budget: BudgetConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    loggers: LoggersConfig = Field(default_factory=LoggersConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    strict: bool = Field(False, description="an algorithm that changes nothing is an error")
    reference: Optional[Reference] = Field(None, description="the paper figure this recipe reproduces")
    notes: Optional[str] = Field(None, description="free text")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+,-]*", v):
            raise ValueError("use letters, digits and . _ = + , - only")
        return v

    @field_validator("algorithms", mode="before")
    @classmethod
    def _normalise_algorithms(cls, v: Any) -> Any:
        return normalise_algorithms(v)

    @property
    def algorithm_names(self) -> list[str]:
        return [next(iter(a)) for a in self.algorithms]

    @property
    def run_name(self) -> str:
        return self.output.run_name or self.name


# --------------------------------------------------------------------------- parsing helpers

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def parse_flops(v: Any) -> float:
    """`1e14`, `'1e14'`, `'100T'`, `'2.5 GFLOPs'` -> float; must be finite and > 0."""
    if isinstance(v, bool):
        raise ValueError("expected a number of FLOPs such as 1e14 or '100T'")
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTPE]?)(?:FLOPs?)?\s*", v)
        if not m:
            raise ValueError(f"cannot read {v!r} as FLOPs; write e.g. 1e14, '100T' or '2.5G'")
        x = float(m.group(1)) * _SUFFIX[m.group(2)]
    else:
        raise ValueError("expected a number of FLOPs such as 1e14 or '100T'")
    if not math.isfinite(x) or x <= 0:
        raise ValueError("must be a positive, finite number of FLOPs")
    return x


def normalise_algorithms(v: Any) -> list[dict[str, dict[str, Any]]]:
    """Accept `- blurpool`, `- blurpool: {}`, `- blurpool: null`, `- {name: blurpool, ...}`."""
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValueError("must be a list like `- blurpool: {}`")
    out: list[dict[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, item in enumerate(v):
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, dict) and "name" in item and isinstance(item.get("name"), str):
            kwargs = {k: val for k, val in item.items() if k != "name"}
            name = item["name"]
        elif isinstance(item, dict) and len(item) == 1:
            name, kwargs = next(iter(item.items()))
            kwargs = {} if kwargs is None else kwargs
        else:
            raise ValueError(f"item {i} must be `- name: {{kwargs}}`")
        if not isinstance(name, str) or not isinstance(kwargs, dict):
            raise ValueError(f"item {i} must be `- name: {{kwargs}}` with a mapping of kwargs")
        if name in seen:
            raise ValueError(f"algorithm {name!r} is listed twice; list each algorithm once")
        seen.add(name)
        out.append({name: dict(kwargs)})
    return out


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """pydantic location -> dotted path, with algorithm list indices shown as their names."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            entry = node[item]
            label = next(iter(entry)) if isinstance(entry, dict) and len(entry) == 1 else str(item)
            parts.append(label if parts and parts[-1] == "algorithms" else str(item))
            node = entry
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def section_keys(loc: tuple[Any, ...], root: Any = None) -> list[str]:
    """Valid keys of the section of schema `root` (default: Recipe) holding the field at `loc`
    (for unknown-key errors)."""
    model: Any = root or Recipe
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        for cand in getattr(ann, "__args__", ()) + (ann,):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return []
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def validation_error_to_recipe_error(err: ValidationError, data: Any, file: str) -> RecipeError:
    """The first pydantic error as one line naming file, field path and (for unknown keys) valid keys."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    path = _field_path(loc, data) or "(top level)"
    if e["type"] == "extra_forbidden":
        valid = closest_first(str(loc[-1]), section_keys(loc))
        return RecipeError(f"unknown key; valid keys (closest first): {', '.join(valid)}",
                           file=file, field=path)
    if e["type"] == "missing":
        return RecipeError("required field is missing", file=file, field=path)
    msg = e["msg"].removeprefix("Value error, ")
    if "input" in e and e["type"] not in ("missing",):
        shown = repr(e["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    return RecipeError(msg, file=file, field=path)


# --------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[list[str], Any]:
    """`optimizer.lr=0.01` -> (['optimizer', 'lr'], 0.01); values are read as YAML (safely)."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} must look like key.path=value (e.g. optimizer.lr=0.01)")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in path):
        raise RecipeError(f"override {text!r}: {key!r} is not a dotted key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set a dotted path in a plain recipe dict. `algorithms.<name>.<kwarg>=v` edits (or adds) an
    algorithm's kwargs; `algorithms.<name>=null` removes it; `algorithms.<name>={}` adds it."""
    if path[0] == "algorithms" and len(path) >= 2:
        algos = normalise_algorithms(data.get("algorithms"))
        name = path[1]
        idx = next((i for i, a in enumerate(algos) if name in a), None)
        if len(path) == 2:
            if value is None:
                if idx is not None:
                    algos.pop(idx)
            elif isinstance(value, dict):
                if idx is None:
                    algos.append({name: dict(value)})
                else:
                    algos[idx] = {name: dict(value)}
            else:
                raise RecipeError(f"override algorithms.{name} takes null (remove) or a mapping of kwargs")
        else:
            if idx is None:
                algos.append({name: {}})
                idx = len(algos) - 1
            node = algos[idx][name]
            for p in path[2:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = value
        data["algorithms"] = algos
        return
    node: Any = data
    for p in path[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"override {'.'.join(path)}: {p!r} is not a section")
        node = nxt
    node[path[-1]] = value


# --------------------------------------------------------------------------- loading

def read_yaml(path: Union[str, Path]) -> dict[str, Any]:
    """Safe-load a YAML mapping, turning every failure into a one-line RecipeError."""
    p = Path(path)
    if not p.exists():
        raise RecipeError("file not found", file=str(p), hint="check the path")
    if p.is_dir():
        raise RecipeError("is a directory, expected a YAML file", file=str(p))
    try:
        size = p.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError(f"file is {size} bytes; recipes are limited to {MAX_RECIPE_BYTES}",
                              file=str(p))
        raw = p.read_bytes()
    except OSError as e:
        raise RecipeError(f"cannot read file: {e.strerror}", file=str(p)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text (byte {e.start})", file=str(p),
                          hint="save the recipe as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        tag = getattr(e, "problem", "") or "unsupported tag"
        raise RecipeError(f"YAML tag refused ({tag}); recipes are plain data and never run code",
                          file=str(p)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise RecipeError(f"invalid YAML{where}: {problem}", file=str(p)) from None
    except RecursionError:
        raise RecipeError("YAML nested too deeply", file=str(p)) from None
    if not isinstance(data, dict):
        raise RecipeError("expected a mapping of recipe sections (name, data, model, ...) at top level",
                          file=str(p))
    return data


def validate_recipe(data: dict[str, Any], *, file: str = "<recipe>") -> Recipe:
    """Validate a plain dict against the schema and the registries."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_recipe_error(err, data, file) from None
    except RecursionError:
        raise RecipeError("recipe nested too deeply", file=file) from None
    _check_names(recipe, file)
    return recipe


def _check_names(recipe: Recipe, file: str) -> None:
    from effrecipes import algorithms, registry

    registry.datasets.entry(recipe.data.name, field_path="data.name", file=file)
    builder = registry.models.get(recipe.model.name, field_path="model.name", file=file)
    check_builder_kwargs(builder, recipe.model.kwargs, field="model.kwargs", file=file,
                         fixed=("in_channels", "num_classes", "image_size"))
    for algo in recipe.algorithms:
        name, kwargs = next(iter(algo.items()))
        algorithms.check_algorithm(name, kwargs, file=file)
    algorithms.check_algorithm_conflicts(recipe.algorithm_names, file=file)


def check_builder_kwargs(builder: Any, kwargs: dict[str, Any], *, field: str, file: str,
                         fixed: tuple[str, ...] = ()) -> None:
    """Unknown or missing keyword arguments of a builder, as a one-line RecipeError.
    Builders that take **kwargs (forwarding to torchvision) are checked when built."""
    import inspect

    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n not in fixed]
    for key in kwargs:
        if key not in accepted:
            raise RecipeError(f"unknown argument {key!r}", file=file, field=f"{field}.{key}",
                              hint=f"accepted: {', '.join(closest_first(key, accepted)) or 'none'}")
    for name, p in params.items():
        if name not in fixed and p.default is p.empty and name not in kwargs:
            raise RecipeError(f"required argument {name!r} is missing", file=file,
                              field=f"{field}.{name}")


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child values win; mappings merge key by key; lists (e.g. algorithms) are replaced whole."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_recipe_data(path: Union[str, Path], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file, resolving `base: other.yaml` (relative to the file) recursively."""
    p = Path(path)
    data = read_yaml(p)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise RecipeError("must be the path of a base recipe file", file=str(p), field="base")
    base_path = (p.parent / base).resolve()
    if base_path in _seen or base_path == p.resolve():
        raise RecipeError(f"recipes inherit from each other in a loop ({base})", file=str(p), field="base")
    if not base_path.exists():
        raise RecipeError(f"base recipe {base!r} not found (looked at {base_path})", file=str(p),
                          field="base")
    return deep_merge(read_recipe_data(base_path, _seen + (p.resolve(),)), data)


def load_recipe(path: Union[str, Path], overrides: Optional[list[str]] = None) -> Recipe:
    """Load a recipe file safely (with its `base:` chain), apply `key.path=value` overrides, and
    validate (like llm-foundry's train_from_yaml)."""
    data = read_recipe_data(path)
    for text in overrides or []:
        keypath, value = parse_override(text)
        apply_override(data, keypath, value)
    return validate_recipe(data, file=str(path))


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default filled in)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
