"""The import contract in pyproject.toml covers every module: a new core module cannot slip past
`lint-imports` by not being listed."""
from __future__ import annotations

import pkgutil
import tomllib

import effrecipes
from tests.conftest import REPO


def test_every_core_module_is_in_the_import_contract() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    core = next(c for c in config["contracts"] if c["name"].startswith("core"))
    top = {f"effrecipes.{m.name}" for m in pkgutil.iter_modules(effrecipes.__path__)}
    upper = {"effrecipes.cli", "effrecipes.matrix", "effrecipes.report"}
    assert set(core["source_modules"]) == top - upper
    assert set(core["forbidden_modules"]) == upper
