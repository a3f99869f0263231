"""Every registered model trains under a FLOP cap through the real runner (synthetic 1x28x28)."""
from __future__ import annotations

from pathlib import Path

import pytest

from effrecipes.recipe import validate_recipe
from effrecipes.registry import models
from effrecipes.runner import prepare, run
from tests.conftest import tiny_recipe


FAST = {"mobilenet_v3_small", "mnasnet_small"}  # the zoo's cheapest; the rest run with -m slow


def _param(name: str) -> object:
    heavy = models.entry(name).info.family != "paper004" and name not in FAST
    return pytest.param(name, marks=pytest.mark.slow) if heavy else name


@pytest.mark.parametrize("name", [_param(n) for n in models.names()])
def test_model_trains_under_a_cap(tmp_path: Path, name: str) -> None:
    data = tiny_recipe(tmp_path, **{"model.name": name, "data.batch_size": 4, "data.eval_batch_size": 16,
                                    "data.kwargs": {"num_train": 20, "num_test": 8, "channels": 1,
                                                    "image_size": 28, "num_classes": 5},
                                    "eval.latency_images": 1, "eval.every_epochs": 10,
                                    "budget.flops": 1e15})
    step = prepare(validate_recipe(data)).plan.step_flops
    data["budget"] = {"flops": 2.5 * step}
    result = run(validate_recipe(data), quiet=True)
    m = result.metrics
    assert m["batches"] == 2 and m["stop_reason"] == "flops"
    assert m["flops_used"] <= 2.5 * step
