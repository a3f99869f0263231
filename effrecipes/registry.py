"""One registry mechanism for every kind of component (models, datasets, algorithms, ...).

Like timm's `@register_model` and llm-foundry's registries: a snake_case name maps to a builder,
`list()` takes a glob pattern, and an unknown name raises a `RecipeError` that lists the valid
choices, closest first.
"""
from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

from effrecipes.errors import RecipeError, unknown_name_message

T = TypeVar("T")


@dataclass(frozen=True)
class ModelInfo:
    """What a model registry entry knows besides its builder."""

    family: str                        # paper004 | paper000 | reference
    default_input: str = ""            # CxHxW the model is made for ("any": adapts)
    paper_params: Optional[int] = None  # the parameter count the paper reports
    paper_params_config: str = ""      # the configuration that count is for
    paper_name: str = ""               # the model's name in the paper


@dataclass(frozen=True)
class DatasetInfo:
    """Shape and size of a registered dataset (also what `--dry-run` plans from without data)."""

    channels: int
    image_size: int
    num_classes: int
    num_train: int
    num_test: int
    folder: bool = False               # images on disk, decoded per sample


@dataclass
class Entry(Generic[T]):
    name: str
    builder: T
    description: str = ""
    info: Any = None  # the kind's typed metadata: ModelInfo, DatasetInfo, AlgoInfo, OptimizerInfo


class Registry(Generic[T]):
    """Name -> builder, with metadata and helpful errors."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._modules = modules  # imported on first lookup; they register their entries
        self._loaded = not modules

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._modules:
                importlib.import_module(mod)

    def register(self, name: str, *, description: str = "", info: Any = None) -> Callable[[T], T]:
        """Decorator: `@datasets.register("digits", description=..., info=DatasetInfo(...))`."""

        def wrap(builder: T) -> T:
            self.add(name, builder, description=description, info=info)
            return builder

        return wrap

    def add(self, name: str, builder: T, *, description: str = "", info: Any = None) -> None:
        """The same as `register`, for builders made in a loop (one per table row)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if not description:
            doc = getattr(builder, "__doc__", None) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, builder, description, info)

    def entry(self, name: str, *, field_path: str | None = None, file: str | None = None) -> Entry[T]:
        self._ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise RecipeError(unknown_name_message(self.kind, name, self._entries), file=file,
                              field=field_path) from None

    def get(self, name: str, **kw: Any) -> T:
        return self.entry(name, **kw).builder

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a glob pattern, sorted (`list_models('gap_*')`)."""
        self._ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        return [self._entries[n] for n in self.names(pattern)]


# The project's registries. Each imports the modules that fill it the first time it is read.
models: Registry = Registry("model", ("effrecipes.models",))
datasets: Registry = Registry("dataset", ("effrecipes.data",))
algorithms: Registry = Registry("algorithm", ("effrecipes.algorithms",))
optimizers: Registry = Registry("optimizer", ("effrecipes.optim",))
schedulers: Registry = Registry("scheduler", ("effrecipes.optim",))

ALL = {"models": models, "datasets": datasets, "algorithms": algorithms, "optimizers": optimizers,
       "schedulers": schedulers}
