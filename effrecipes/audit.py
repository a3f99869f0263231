"""An independent check of the FLOP ledger, for tests and `benchmarks/budget_accuracy.py`.

The ledger (`effrecipes.budget.FlopBudget`) counts per-batch windows, caches fixed step costs by
input shape and trusts algorithms' cost declarations. The audit shares none of that: it wraps
the whole of `Trainer.fit` in one more `FlopCounterMode` and counts everything the fit does.
With no validation split nothing inside `fit` is evaluation, so the audit's total is all the
training work, and it must equal the ledger's `flops_used`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from composer import Trainer
from torch import nn
from torchvision.models.resnet import Bottleneck

from effrecipes.budget import flop_counter_mode

# Arguments that make each algorithm act on a small GAP CNN (defaults for the others), and the
# models where the default one has nothing the algorithm changes.
AUDIT_ARGS: dict[str, dict[str, Any]] = {
    "squeeze_excite": {"min_channels": 8, "latent_channels": 0.5},
    "blurpool": {"min_channels": 4},
    "factorize": {"min_channels": 8, "min_features": 8},
    "cutout": {"length": 4},
    "swa": {"swa_start": "0.5dur", "update_interval": "1ep", "bn_update_batches": 4},
    "ghost_batchnorm": {"ghost_batch_size": 8},
    "gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0},
    "progressive_resizing": {"initial_scale": 0.5, "finetune_fraction": 0.2, "size_increment": 2},
    "stochastic_depth": {"target_layer_name": "ResNetBottleneck", "drop_rate": 0.5},
}

# Beyond one run per registered algorithm: the cases whose cost is not one pass per step.
AUDIT_EXTRA_CASES: dict[str, list[dict[str, Any]]] = {
    "sam_interval_2": [{"sam": {"interval": 2}}],
    "selective_backprop_keep_0.9": [{"selective_backprop": {"keep": 0.9}}],
    "swa_batch_interval_swaps_mid_run": [{"swa": {"swa_start": "0.3dur", "swa_end": "0.7dur",
                                                  "update_interval": "2ba", "bn_update_batches": 4}}],
    "whiten_stem_frozen": [{"whiten_stem": {"images": 64, "freeze": True}}],
    "seven_together": [{"sam": {"interval": 2}}, {"selective_backprop": {"keep": 0.9}},
                       {"layer_freezing": {}}, {"colout": {}}, {"swa": AUDIT_ARGS["swa"]},
                       {"progressive_resizing": AUDIT_ARGS["progressive_resizing"]},
                       {"stochastic_depth": AUDIT_ARGS["stochastic_depth"]}],
}


def bottleneck_net(in_channels: int, num_classes: int, image_size: int = 0) -> nn.Module:
    """Two torchvision ResNet bottlenecks: the block Composer's stochastic depth targets (the
    GAP CNNs have none). Registered by the tests and the benchmark as `test_bottleneck_net`."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                         Bottleneck(16, 4), Bottleneck(16, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))


def audit_cases(names: list[str]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(case id, algorithms list): one case per algorithm name, then the extra cases."""
    return [(n, [{n: AUDIT_ARGS.get(n, {})}]) for n in names] + list(AUDIT_EXTRA_CASES.items())


@contextlib.contextmanager
def counting_fit() -> Iterator[list[float]]:
    """Inside the block every `Trainer.fit` runs under an outer FLOP counter; the list receives
    each fit's total."""
    totals: list[float] = []
    real = Trainer.fit

    def fit(trainer: Trainer, *args: Any, **kwargs: Any) -> Any:
        with flop_counter_mode() as counter:
            out = real(trainer, *args, **kwargs)
        totals.append(float(counter.get_total_flops()))
        return out

    Trainer.fit = fit  # type: ignore[method-assign]
    try:
        yield totals
    finally:
        Trainer.fit = real  # type: ignore[method-assign]
