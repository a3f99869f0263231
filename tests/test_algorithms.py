"""Algorithms: registry coverage, surgery effects, no-op detection, batch changes on a real State."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from composer.core import Event, State
from composer.devices import DeviceCPU
from composer.loggers import Logger
from composer.models import ComposerClassifier

from effrecipes.algorithms import build_algorithm, describe_effects, layer_changes
from effrecipes.budget import train_step_flops
from effrecipes.models import build_model
from effrecipes.registry import algorithms

PAPER_SEVEN = ["blurpool", "squeeze_excite", "swa", "sam", "mixup", "cutout", "label_smoothing"]
OTHERS = ["channels_last", "ema", "colout", "cutmix", "progressive_resizing", "ghost_batchnorm",
          "layer_freezing", "randaugment", "augmix", "selective_backprop", "weight_standardization",
          "factorize", "gradient_clipping", "stochastic_depth", "gyro_dropout"]


def test_registry_has_paper_and_cnn_algorithms() -> None:
    assert set(PAPER_SEVEN + OTHERS) <= set(algorithms.names())


def _state(batch: tuple[torch.Tensor, torch.Tensor]) -> State:
    model = ComposerClassifier(build_model("gap_1p5k_dw", 1, 10, 12), num_classes=10)
    state = State(model=model, rank_zero_seed=0, run_name="t", device=DeviceCPU())
    state.batch = batch
    return state


def _apply(name: str, kwargs: dict, event: Event) -> tuple[torch.Tensor, torch.Tensor, State]:
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 12, 12) + 0.1, torch.randint(0, 10, (16,))
    state = _state((x.clone(), y.clone()))
    algo = build_algorithm(name, kwargs)
    assert algo.match(event, state)
    algo.apply(event, state, Logger(state))
    return x, y, state


def test_mixup_changes_the_batch() -> None:
    x, _, state = _apply("mixup", {"alpha": 0.5}, Event.BEFORE_FORWARD)
    assert not torch.equal(state.batch[0], x)


def test_cutout_changes_the_batch_with_one_square_per_image() -> None:
    x, _, state = _apply("cutout", {"length": 4}, Event.AFTER_DATALOADER)
    out = state.batch[0]
    zero = out == 0
    assert zero.any() and not torch.equal(out, x)
    masks = zero[:, 0]
    # each image loses at most a 4x4 square, and the squares differ between images
    assert int(masks.flatten(1).sum(1).max()) <= 16
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks if m.any()}) > 1


def test_cutout_length_in_pixels_or_fraction() -> None:
    px = build_algorithm("cutout", {"length": 10})
    frac = build_algorithm("cutout", {"length": 0.25})
    assert px.side(32, 32) == 10 and frac.side(32, 32) == 8


def test_blurpool_and_squeeze_excite_change_model_and_flops() -> None:
    model = build_model("gap_1p5k_dw", 1, 10, 28)
    batch = (torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    loss = torch.nn.functional.cross_entropy
    base = train_step_flops(model, loss, batch)
    for name, kw in (("blurpool", {}), ("squeeze_excite", {"min_channels": 8, "latent_channels": 0.25})):
        changes = layer_changes(model, name, kw)
        assert changes, name
        from effrecipes.algorithms import info
        surgered = __import__("copy").deepcopy(model)
        info(name).surgery(surgered, **kw)
        assert train_step_flops(surgered, loss, batch) > base, name


def test_noop_algorithms_are_reported() -> None:
    model = build_model("gap_1p5k_dw", 1, 10, 28)
    effects = describe_effects(model, [{"squeeze_excite": {}}, {"mixup": {"alpha": 0}},
                                       {"label_smoothing": {"smoothing": 0}}, {"blurpool": {}}])
    assert "min_channels=128" in effects["squeeze_excite"]["noop_reason"]
    assert effects["mixup"]["noop_reason"] and effects["label_smoothing"]["noop_reason"]
    assert effects["blurpool"]["noop_reason"] is None and effects["blurpool"]["changes"]
    # a model with no max-pool and no strided conv: BlurPool changes nothing
    flat = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU())
    eff = describe_effects(flat, [{"blurpool": {}}])["blurpool"]
    assert eff["changes"] == [] and "no strided conv" in eff["noop_reason"]


@pytest.mark.parametrize("name,cls,defaults", [
    ("cutout", "PerImageCutOut", {"per_image": True, "num_holes": 1}),
    ("swa", "SWAWithBNUpdate", {"bn_update_batches": 16, "swa_start": "0.75dur"}),
    ("mixup", "MixUp", {"alpha": 0.2}), ("label_smoothing", "LabelSmoothing", {"smoothing": 0.1}),
    ("sam", "ResumableSAM", {"rho": 0.05, "interval": 1}), ("blurpool", "BlurPool", {"min_channels": 16})])
def test_defaults_build(name: str, cls: str, defaults: dict) -> None:
    """Each name builds its class (our fixed subclasses for cutout, swa and sam) with the documented
    defaults."""
    from effrecipes.algorithms import effective_kwargs

    assert type(build_algorithm(name, {})).__name__ == cls
    kw = effective_kwargs(name, {})
    assert {k: kw[k] for k in defaults} == defaults


def test_sam_and_swa_build_without_composers_resume_warning() -> None:
    """Composer warns at construction that SAM and SWA have resume issues; effrecipes' resume of
    both is tested exact, so building them says nothing (it was printed once per matrix cell)."""
    import warnings

    from effrecipes.algorithms import build_algorithms

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        algos = build_algorithms([{"sam": {"rho": 0.05}}, {"swa": {"swa_start": "0.75dur"}}])
    from composer.algorithms import SAM, SWA

    assert isinstance(algos[0], SAM) and isinstance(algos[1], SWA)
    assert not [w for w in seen if "known issues" in str(w.message)], [str(w.message) for w in seen]


def test_swa_recomputes_batchnorm_on_the_models_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-sample loader (disk datasets, PIL transforms) gives host batches while a GPU run's
    model is on the GPU: the BatchNorm recompute must move them (`update_bn(device=...)`), or it
    fails there with a device mismatch."""
    from torch import nn

    from effrecipes.algorithms import SWAWithBNUpdate

    seen: list[Any] = []
    monkeypatch.setattr(torch.optim.swa_utils, "update_bn",
                        lambda loader, model, device=None: seen.append(device))
    swa = SWAWithBNUpdate()
    swa._bn_batches_wanted = 2
    # "meta" stands in for a GPU: the model is there, the loader's batches on the host
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).to("meta")
    batch = (torch.zeros(2, 1, 5, 5), torch.zeros(2, dtype=torch.int64))
    swa._update_bn(SimpleNamespace(train_dataloader=[batch, batch], model=net, device=DeviceCPU()))
    assert seen == [torch.device("meta")] and swa.bn_updated
