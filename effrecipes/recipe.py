"""The recipe: a typed schema (pydantic, unknown keys rejected), safe YAML loading, dotted overrides.

Everything a user may set lives here with its default and a one-line description, so `--dry-run`,
the docs and error messages all come from one place. Loading never executes code: YAML goes
through `RecipeLoader` only (PyYAML's SafeLoader that reads YAML 1.2 numbers such as `1e-4` as
floats, refuses duplicate keys and absurd nesting), and names are looked up in registries, never
imported. Types are strict (`true` is not a batch size) and numbers finite.
"""
from __future__ import annotations

import copy
import errno
import inspect
import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from effrecipes.algorithm_args import parse_time
from effrecipes.errors import RecipeError, closest_first, shorten

MAX_RECIPE_BYTES = 1_000_000  # a recipe is a few hundred bytes; refuse anything absurd
MAX_NAME = 120                # recipe and run names (a directory name; file systems allow 255)
MAX_NESTING = 50              # YAML nesting depth (recipes use 3-4 levels)
MAX_KEY_PARTS = 20            # parts of a dotted override key
# A run always has a finite cap that binds: these bound the optional caps (a FLOP cap is bounded
# in parse_flops). 100,000 epochs or ~115 days are far beyond any run this tool plans.
MAX_EPOCHS = 100_000
MAX_SECONDS = 10_000_000
MAX_FLOPS = 1e24              # more than GPT-3's whole training (3.1e23)
_NUMBER = re.compile(r"\s*[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*")


def finite_tree(v: Any) -> Any:
    """Free-form values (builder kwargs) hold no inf or nan, at any depth."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"numbers must be finite (got {x})")
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return v


FiniteKwargs = Annotated[dict[str, Any], AfterValidator(finite_tree)]  # builder kwargs, no inf/nan


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numeric_strings(cls, data: Any) -> Any:
        """Types are strict (`true` is not a number, `"16"` not an int, `16.5` not an int), with one
        allowance: a float field also reads a plain number written as a string (`'1e-3'`, as YAML
        1.1 tools and older matrix grids write it)."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if (field is not None and isinstance(value, str) and _NUMBER.fullmatch(value)
                        and float in (field.annotation, *getattr(field.annotation, "__args__", ()))):
                    data = {**data, key: float(value)}
        return data


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
    kwargs: FiniteKwargs = Field(default_factory=dict,
                                 description="dataset-specific options (e.g. synthetic sizes)")


class ModelConfig(Section):
    name: str = Field(description="model name (composer-run --list models)")
    kwargs: FiniteKwargs = Field(default_factory=dict,
                                 description="extra builder arguments (e.g. width_mult, dropout)")
    channels_last: bool = Field(
        True, description="NHWC memory format after all surgery: 1.4-1.6x faster CPU training "
                          "measured (benchmarks/README.md); false keeps NCHW")


class OptimizerConfig(Section):
    name: str = Field("sgd", description="optimizer (composer-run --list optimizers)")
    lr: float = Field(0.05, gt=0, description="(peak) learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas, each in [0, 1)")

    @field_validator("betas", mode="before")
    @classmethod
    def _betas_list(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v  # YAML and JSON have lists, not tuples

    @field_validator("betas")
    @classmethod
    def _betas_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1), e.g. [0.9, 0.999]")
        return v


class SchedulerConfig(Section):
    name: str = Field("constant", description="learning-rate schedule (composer-run --list "
                      "schedulers); it ends where the run ends")
    warmup_fraction: float = Field(0.0, ge=0, lt=1,
                                   description="linear warm-up as a fraction of planned steps "
                                   "(cosine, linear, constant)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="one_cycle: fraction of steps rising")
    div_factor: float = Field(25.0, gt=0, description="one_cycle: initial lr = lr / div_factor")
    final_div_factor: float = Field(1e4, gt=0, description="one_cycle: final lr = initial / this")
    cycle_momentum: bool = Field(True, description="one_cycle: cycle SGD's momentum (Adam's beta1) "
                                 "against the lr, max_momentum -> base_momentum -> max_momentum "
                                 "(torch's default); false keeps optimizer.momentum")
    base_momentum: float = Field(0.85, ge=0, lt=1, description="one_cycle: momentum at the peak lr")
    max_momentum: float = Field(0.95, ge=0, lt=1, description="one_cycle: momentum at the start and end")
    gamma: float = Field(0.95, gt=0, le=1, description="step/exponential: decay per step_epochs")
    step_epochs: int = Field(1, ge=1, description="step: decay every this many epochs")
    alpha_f: float = Field(0.0, ge=0, le=1, description="cosine/linear: final lr as a fraction of lr")


# one_cycle's momentum settings: refused under other schedules (optim.check_schedule) and left
# out of matrix cell hashes at their defaults (matrix/cells.HASH_NEUTRAL_DEFAULTS)
ONE_CYCLE_MOMENTUM_FIELDS = ("cycle_momentum", "base_momentum", "max_momentum")


class BudgetConfig(Section):
    flops: Optional[float] = Field(None, description="cap on training FLOPs: 1e14, '100T', '2.5G'")
    max_epochs: Optional[float] = Field(None, gt=0, description="optional cap on epochs (or '5ep')")
    max_seconds: Optional[float] = Field(None, gt=0, description="optional cap on training wall "
                                         "seconds (or '3600sec')")

    @field_validator("max_epochs", mode="before")
    @classmethod
    def _epochs_timestring(cls, v: Any) -> Any:
        return epochs_value(v)

    @field_validator("max_seconds", mode="before")
    @classmethod
    def _seconds_timestring(cls, v: Any) -> Any:
        return parse_time(v, ("sec",))[0] if isinstance(v, str) else v

    @field_validator("max_epochs", "max_seconds")
    @classmethod
    def _bounded(cls, v: Optional[float], info: Any) -> Optional[float]:
        limit, what = {"max_epochs": (MAX_EPOCHS, "epochs"),
                       "max_seconds": (MAX_SECONDS, "seconds (~115 days)")}[info.field_name]
        if v is not None and v > limit:
            raise ValueError(f"at most {limit:,} {what}: a run needs a cap that binds (set null to "
                             f"leave {what.split()[0]} uncapped when budget.flops is set)")
        return v

    @field_validator("flops", mode="before")
    @classmethod
    def _parse_flops(cls, v: Any) -> Any:
        return None if v is None else parse_flops(v)

    @model_validator(mode="after")
    def _some_cap(self) -> "BudgetConfig":
        if self.flops is None and self.max_epochs is None and self.max_seconds is None:
            raise ValueError("set at least one of budget.flops, budget.max_epochs, budget.max_seconds")
        return self


class TrainerConfig(Section):
    """Where and how the Trainer runs (resolved by `effrecipes.device`; recorded in metrics.json)."""

    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto = a GPU when CUDA is available (cuda:LOCAL_RANK per rank), "
        "else the CPU; gpu without CUDA is an error")
    precision: Literal["auto", "fp32", "amp_bf16", "amp_fp16"] = Field(
        "auto", description="auto = amp_bf16 on GPUs with bf16, amp_fp16 on older GPUs, fp32 on "
        "the CPU (amp_* on the CPU is an error); FLOPs are charged the same in every precision")
    compile: bool = Field(False, description="torch.compile the model (Composer's compile_config)")


class EvalConfig(Section):
    every_epochs: Union[float, str] = Field(
        1.0, description="validate every this many epochs (fractions allowed), or a Composer time "
        "string: '0.5ep', '500ba' (batches), '0.1dur' (a fraction of the run); and at the end")
    checkpoint: Literal["last", "best_val"] = Field(
        "last", description="which weights the test set sees: the final ones, or the best validation")
    latency_images: int = Field(1000, ge=0, description="test images timed one by one for CPU latency")
    per_class: bool = Field(False, description="save per-class precision/recall/F1 on the test set")

    @field_validator("every_epochs", mode="before")
    @classmethod
    def _interval(cls, v: Any) -> Any:
        """Epochs (a number or 'Nep') become a float, as before time strings were taken, so the
        recipe and its hash are unchanged; batches and fractions of the run stay strings."""
        if isinstance(v, str):
            x, unit = parse_time(v, ("ep", "ba", "dur"), positive=True, whole=False)
            if unit == "ba" and x != int(x):
                raise ValueError("batches ('ba') must be a whole number")
            if unit != "ep":
                return v.strip()
            v = x
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("expected a number of epochs, or a time string such as '0.5ep', "
                             "'500ba' or '0.1dur'")
        if not math.isfinite(v) or not 0 < v <= MAX_EPOCHS:
            raise ValueError(f"Input should be a finite number of epochs in (0, {MAX_EPOCHS}]")
        return float(v)

    def batches_between_evals(self, batches_per_epoch: int, planned_batches: int) -> int:
        """The validation interval in batches (at least one)."""
        if isinstance(self.every_epochs, float):
            return max(1, round(self.every_epochs * batches_per_epoch))
        x, unit = parse_time(self.every_epochs, ("ba", "dur"))
        return max(1, round(x if unit == "ba" else x * planned_batches))


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
    root: str = Field("runs", min_length=1, max_length=4000,
                      description="directory under which run directories are written")
    run_name: Optional[str] = Field(None, description="run directory name; default: the recipe name")
    save_checkpoint: bool = Field(True, description="save the final checkpoint in the run directory")
    overwrite: bool = Field(False, description="replace an existing finished run directory")

    @field_validator("root")
    @classmethod
    def _root_ok(cls, v: str) -> str:
        problem = path_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else check_name(v, "use letters, digits and . _ = + , - only "
                                                 "(no path separators)")


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
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    loggers: LoggersConfig = Field(default_factory=LoggersConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    strict: bool = Field(False, description="an algorithm that changes nothing is an error")
    reference: Optional[Reference] = Field(None, description="the paper figure this recipe reproduces")
    notes: Optional[str] = Field(None, description="free text")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        return check_name(v, "use letters, digits and . _ = + , - only")

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

def check_name(v: str, charset_hint: str) -> str:
    """A recipe or run name: it becomes a directory name, so short and path-safe."""
    if len(v) > MAX_NAME:
        raise ValueError(f"at most {MAX_NAME} characters (this one has {len(v):,}); shorten it")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+,-]*", v):
        raise ValueError(charset_hint)
    return v




def epochs_value(v: Any) -> Any:
    """An epochs field also takes a Composer time string in epochs (`'5ep'`, `'0.5ep'`); other
    units are refused: the batches per epoch are not known until the data is loaded."""
    return parse_time(v, ("ep",), whole=False)[0] if isinstance(v, str) else v


_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


def parse_flops(v: Any) -> float:
    """`1e14`, `'1e14'`, `'100T'`, `'2.5 GFLOPs'` -> float; must be finite and > 0."""
    if isinstance(v, bool):
        raise ValueError("expected a number of FLOPs such as 1e14 or '100T'")
    if isinstance(v, (int, float)):
        try:
            x = float(v)
        except OverflowError:  # an integer of hundreds of digits
            x = math.inf
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGTPE]?)(?:FLOPs?)?\s*", v)
        if not m:
            raise ValueError(f"cannot read {shorten(v, 40)!r} as FLOPs; write e.g. 1e14, '100T' or '2.5G'")
        x = float(m.group(1)) * _SUFFIX[m.group(2)]
    else:
        raise ValueError("expected a number of FLOPs such as 1e14 or '100T'")
    if not math.isfinite(x) or x <= 0:
        raise ValueError("must be a positive, finite number of FLOPs")
    if x > MAX_FLOPS:
        raise ValueError(f"at most {MAX_FLOPS:.0e} FLOPs (more than GPT-3's training): a run needs "
                         "a cap that binds")
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


def validation_error_to_recipe_error(err: ValidationError, data: Any, file: str, *,
                                     root: Any = None) -> RecipeError:
    """The first pydantic error as one line naming file, field path and (for unknown keys) valid
    keys. `root` is the schema (default: Recipe; a matrix spec passes its own); recipes name
    algorithm list items by the algorithm, other schemas use plain dotted paths."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    path = (_field_path(loc, data) if root is None else ".".join(str(p) for p in loc)) or "(top level)"
    if e["type"] == "extra_forbidden":
        valid = closest_first(str(loc[-1]), section_keys(loc, root))
        return RecipeError(f"unknown key; valid keys (closest first): {', '.join(valid)}",
                           file=file, field=path)
    if e["type"] == "missing":
        return RecipeError("required field is missing", file=file, field=path)
    msg = e["msg"].removeprefix("Value error, ")
    if "input" in e and not isinstance(e["input"], dict):
        msg = f"{msg} (got {shorten(repr(e['input']), 60)})"
    return RecipeError(msg, file=file, field=path)


# --------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[list[str], Any]:
    """`optimizer.lr=0.01` -> (['optimizer', 'lr'], 0.01); values are read as YAML (safely, with
    the recipe loader: `1e-4` is a float) and text that is not valid YAML is kept as a string."""
    shown = shorten(text, 80)
    if "=" not in text:
        raise RecipeError(f"override {shown!r} must look like key.path=value (e.g. optimizer.lr=0.01)")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if len(path) > MAX_KEY_PARTS:
        raise RecipeError(f"override {shown!r}: the key has {len(path):,} parts; recipe keys have "
                          f"at most {MAX_KEY_PARTS}")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in path):
        raise RecipeError(f"override {shown!r}: {shorten(key, 60)!r} is not a dotted key path")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except RecipeYAMLError as e:  # duplicate keys, nesting too deep: say so, never guess
        raise RecipeError(f"override {shorten(key, 60)}: {e.problem}") from None
    except yaml.YAMLError:
        value = raw
    return path, value


def set_dotted(data: dict[str, Any], path: list[str], value: Any, *, file: Optional[str] = None) -> None:
    """Set `a.b.c` in a plain dict, creating sections; a non-mapping on the way is a one-line
    error naming the override and the field."""
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise RecipeError(f"override {'.'.join(path)!r}: {part!r} is not a section", file=file,
                              field=".".join(path[:depth + 1]))
        node = nxt
    node[path[-1]] = value


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
                if not isinstance(node, dict):
                    raise RecipeError(f"override {'.'.join(path)}: {p!r} is not a mapping")
            node[path[-1]] = value
        data["algorithms"] = algos
        return
    set_dotted(data, path, value)


# --------------------------------------------------------------------------- loading

class RecipeYAMLError(yaml.constructor.ConstructorError):
    """A YAML problem the recipe loader adds: a duplicate key or nesting beyond MAX_NESTING.
    `plain` says it without quoting the file."""

    plain = "invalid YAML"


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (plain data only, no tags that build objects) with three fixes:

    - YAML 1.2 floats: PyYAML implements YAML 1.1, where `1e-4` or `5e-4` (no dot) is a *string*;
      here they are floats, in files, overrides and matrix specs alike.
    - Duplicate keys are errors (PyYAML keeps the last: a second `budget:` silently replaced the
      first, a second `algorithms:` dropped the first list).
    - Nesting is bounded (MAX_NESTING), instead of a RecursionError deep inside PyYAML.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                err = RecipeYAMLError(None, None, f"nested deeper than {MAX_NESTING} levels",
                                      self.peek_event().start_mark)
                err.plain = err.problem
                raise err
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in first:
                    err = RecipeYAMLError(
                        None, None, f"duplicate key {shorten(str(key), 60)!r} (first at line "
                        f"{first[key].line + 1}); write each key once", key_node.start_mark)
                    err.plain = f"duplicate key (first at line {first[key].line + 1})"
                    raise err
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


RecipeLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"""^(?:
     [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


MAX_YAML_NODES = 200_000  # a recipe has hundreds; aliases must not expand into billions


def _expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many nodes `node` stands for once every alias is expanded (shared nodes are counted
    once per use, computed once each, so a "billion laughs" file is measured in microseconds)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    total = 1 + sum(_expanded_nodes(c, memo) for c in children)
    memo[id(node)] = total
    return total


def _yaml_error(problem: str) -> RecipeYAMLError:
    err = RecipeYAMLError(None, None, problem, None)
    err.plain = problem
    return err


def load_yaml_text(text: str) -> Any:
    """Parse YAML text with the recipe loader: aliases may not expand beyond MAX_YAML_NODES, and
    PyYAML's own failures on odd values (`!!int abc`, `!!timestamp x`, a 5,000-digit integer) or
    nesting (RecursionError) become YAMLErrors like any syntax error."""
    loader = RecipeLoader(text)  # noqa: S506 - RecipeLoader is a SafeLoader
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_nodes(node, {}) > MAX_YAML_NODES:
            raise _yaml_error(f"aliases expand to more than {MAX_YAML_NODES:,} values; write the "
                              "values out, or use fewer aliases")
        return loader.construct_document(node)
    except RecursionError:
        raise _yaml_error("nested too deeply") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
        raise _yaml_error(f"cannot read a value ({type(e).__name__}: {shorten(str(e), 60)})") from None
    finally:
        loader.dispose()


def _open_problem(e: OSError) -> str:
    return {errno.ENOENT: "file not found", errno.ELOOP: "symlink loop (too many levels of "
            "symbolic links)", errno.EACCES: "permission denied", errno.EISDIR:
            "is a directory, expected a YAML file", errno.ENAMETOOLONG: "file name too long",
            errno.ENOTDIR: "a parent of this path is not a directory"}.get(
                e.errno or 0, f"cannot open file: {e.strerror}")


def file_kind(mode: int) -> str:
    """What a non-regular file is, for an error line ("is a FIFO", ...)."""
    return ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def read_file_bytes(path: Union[str, Path], limit: int = MAX_RECIPE_BYTES) -> bytes:
    """The bytes of a regular file, at most `limit` of them (enforced while reading, so a file that
    grows or lies about its size is still refused). FIFOs, devices (/dev/zero) and sockets are
    refused without blocking: the file is opened non-blocking and checked with fstat first."""
    p = str(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise RecipeError(_open_problem(e), file=p,
                          hint="check the path" if e.errno == errno.ENOENT else None) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise RecipeError("is a directory, expected a YAML file", file=p)
        if not stat.S_ISREG(st.st_mode):
            raise RecipeError(f"is {file_kind(st.st_mode)}; recipes are read from regular files only",
                              file=p)
        too_big = RecipeError(f"file is larger than {limit:,} bytes; recipes are limited to "
                              f"{limit:,}", file=p)
        if st.st_size > limit:
            raise too_big
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise too_big
        return b"".join(chunks)
    except OSError as e:
        raise RecipeError(f"cannot read file: {e.strerror}", file=p) from None
    finally:
        os.close(fd)


def read_yaml(path: Union[str, Path], *, quote: bool = True) -> dict[str, Any]:
    """Safe-load a YAML mapping from a regular file, turning every failure into a one-line
    RecipeError. With `quote=False` (a `base:` file) no message quotes the file's content."""
    p = Path(path)
    raw = read_file_bytes(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"not UTF-8 text (byte {e.start})", file=str(p),
                          hint="save the recipe as UTF-8") from None
    try:
        data = load_yaml_text(text)
    except RecipeYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"invalid YAML{where}: {e.problem if quote else e.plain}",
                          file=str(p)) from None
    except yaml.constructor.ConstructorError as e:
        problem = getattr(e, "problem", "") or ""
        if "constructor for the tag" in problem or "unknown tag" in problem:
            tag = problem if quote else "an unsupported tag"
            raise RecipeError(f"YAML tag refused ({tag}); recipes are plain data and never run code",
                              file=str(p)) from None
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"invalid YAML{where}{': ' + problem if quote and problem else ''}",
                          file=str(p)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise RecipeError(f"invalid YAML{where}{': ' + problem if quote else ''}",
                          file=str(p)) from None
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
    # Function-local: these modules import the schema (a cycle at import time); registries load
    # their builders (torch, Composer) only when a recipe is checked.
    from effrecipes import algorithms, optim, registry

    registry.datasets.entry(recipe.data.name, field_path="data.name", file=file)
    builder = registry.models.get(recipe.model.name, field_path="model.name", file=file)
    check_builder_kwargs(builder, recipe.model.kwargs, field="model.kwargs", file=file,
                         fixed=("in_channels", "num_classes", "image_size"))
    optim.check_optimizer(recipe.optimizer, file=file)
    registry.schedulers.entry(recipe.scheduler.name, field_path="scheduler.name", file=file)
    optim.check_schedule(recipe.scheduler, recipe.optimizer, file=file)
    for algo in recipe.algorithms:
        name, kwargs = next(iter(algo.items()))
        algorithms.check_algorithm(name, kwargs, file=file)
    algorithms.check_algorithm_conflicts(recipe.algorithm_names, file=file)


def check_builder_kwargs(builder: Any, kwargs: dict[str, Any], *, field: str, file: str,
                         fixed: tuple[str, ...] = ()) -> None:
    """Unknown or missing keyword arguments of a builder, as a one-line RecipeError.
    Builders that take **kwargs (forwarding to torchvision) are checked when built."""
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


def path_problem(text: str) -> Optional[str]:
    """What is wrong with a path written in a recipe (a NUL byte, an unknown `~user`, a component
    longer than file systems allow), or None."""
    if "\0" in text:
        return "not a valid path (it holds a NUL byte)"
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser
        return f"cannot expand {shorten(text.split('/')[0], 40)!r}: no such user"
    long = next((c for c in path.parts if len(os.fsencode(c)) > 255), None)
    if long is not None:
        return f"a path component is {len(os.fsencode(long)):,} bytes long; file systems allow 255"
    return None


def expand_path(text: str, *, file: Optional[str], field: str) -> Path:
    """A path written in a recipe, `~` expanded, or a one-line error naming the field."""
    problem = path_problem(text)
    if problem:
        raise RecipeError(problem, file=file, field=field)
    return Path(text).expanduser()


def _resolved(p: Path) -> Path:
    """`p.resolve()`, or the absolute path when resolving fails (a symlink loop raises
    RuntimeError before Python 3.13); reading it then reports the loop in one line."""
    try:
        return p.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(p))


def read_recipe_data(path: Union[str, Path], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file, resolving `base: other.yaml` (relative to the file) recursively. A base
    must be a .yaml/.yml file holding a mapping; its content is never quoted in errors."""
    p = Path(path)
    data = read_yaml(p, quote=not _seen)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise RecipeError("must be the path of a base recipe file", file=str(p), field="base")
    if not base.strip().lower().endswith((".yaml", ".yml")):
        raise RecipeError(f"{shorten(base, 80)!r} is not a recipe: a base must be a .yaml or .yml "
                          "file", file=str(p), field="base")
    base_path = _resolved(p.parent / expand_path(base.strip(), file=str(p), field="base"))
    if base_path in _seen or base_path == _resolved(p):
        raise RecipeError(f"recipes inherit from each other in a loop ({shorten(base, 80)})",
                          file=str(p), field="base")
    try:
        os.stat(base_path)
    except OSError as e:
        raise RecipeError(f"base recipe {shorten(base, 80)!r}: {_open_problem(e)} (looked at "
                          f"{shorten(str(base_path), 120)})", file=str(p), field="base") from None
    return deep_merge(read_recipe_data(base_path, _seen + (_resolved(p),)), data)


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
