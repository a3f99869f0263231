"""Shared fixtures: small recipes on synthetic or real-format files, written to tmp dirs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A recipe that trains in a second or two: synthetic 1x12x12 images, the 1.5K model."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"name": "synthetic", "batch_size": 16, "eval_batch_size": 64, "val_fraction": 0.2,
                 "kwargs": {"num_train": 160, "num_test": 64, "channels": 1, "image_size": 12,
                            "num_classes": 4}},
        "model": {"name": "gap_1p5k_dw"},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "budget": {"flops": 2e8},
        "eval": {"latency_images": 4},
        "loggers": {"progress_bar": False},
        "output": {"root": str(tmp_path / "runs"), "run_name": "tiny"},  # a fixed name to read back
    }
    for key, value in overrides.items():
        node = recipe
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return recipe


def write_recipe(tmp_path: Path, recipe: dict[str, Any], name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> dict[str, Any]:
    return tiny_recipe(tmp_path)


def record_lrs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make every runner Trainer record the learning rate of each training batch into the list."""
    from composer.core import Callback

    from effrecipes import runner

    lrs: list[float] = []

    class Record(Callback):
        def before_train_batch(self, state: Any, logger: Any) -> None:
            lrs.append(state.optimizers[0].param_groups[0]["lr"])

    real = runner.Trainer

    def with_record(*a: Any, **k: Any) -> Any:
        k["callbacks"] = list(k.get("callbacks") or []) + [Record()]
        return real(*a, **k)

    monkeypatch.setattr(runner, "Trainer", with_record)
    return lrs
