"""whiten_stem: the first conv set to a whitening of the training images' patches, charged to the cap."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effrecipes.whitening as wh
from effrecipes import algorithms as algos
from effrecipes.cli import main
from effrecipes.data import build_data
from effrecipes.errors import RecipeError
from effrecipes.recipe import load_recipe
from effrecipes.whitening import (moment_flops_per_image, patch_moments, unsuitable,
                                  whitening_filters)
from tests.conftest import tiny_recipe, write_recipe


def _correlated_images(n: int = 64, size: int = 12) -> torch.Tensor:
    """Smoothed noise: neighbouring pixels strongly correlated, as in real images."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, 1, size + 4, size + 4, generator=g)
    return F.avg_pool2d(noise, 5, stride=1) * 3 + 0.5


def test_filters_decorrelate_the_patches_and_come_in_sign_pairs() -> None:
    x = _correlated_images()
    conv = nn.Conv2d(1, 16, 3, bias=False)
    second, count = patch_moments(x, conv)
    w = whitening_filters(second, float(count), 16, (1, 3, 3), eps=1e-6)
    assert torch.equal(w[:8], -w[8:])
    out = F.conv2d(x, w.float()[:8])  # the 8 leading components, every valid position
    flat = out.transpose(0, 1).reshape(8, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(8), atol=2e-3)
    # the raw patches are far from white: the same check on the identity filters fails
    raw = F.unfold(x, 3).transpose(1, 2).reshape(-1, 9)
    assert not torch.allclose(raw.T @ raw / len(raw), torch.eye(9), atol=0.5)


def test_an_odd_filter_count_takes_the_larger_half_of_the_pairs() -> None:
    second, count = patch_moments(_correlated_images(8), nn.Conv2d(1, 5, 3))
    w = whitening_filters(second, float(count), 5, (1, 3, 3), eps=1e-4)
    assert w.shape == (5, 1, 3, 3) and torch.equal(w[3:5], -w[0:2])


def test_unsuitable_stems_are_named() -> None:
    assert unsuitable(nn.Sequential(nn.Linear(2, 2))) == "the model has no Conv2d to whiten"
    assert "grouped" in unsuitable(nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)))
    assert "more than the 2 x 9" in unsuitable(nn.Sequential(nn.Conv2d(1, 19, 3)))
    assert unsuitable(nn.Sequential(nn.Conv2d(1, 18, 3))) is None


def _run(tmp_path: Path, name: str, **overrides: object) -> tuple[dict, dict]:
    recipe = tiny_recipe(tmp_path, **{"output.run_name": name, **overrides})
    assert main([str(write_recipe(tmp_path, recipe, f"{name}.yaml")), "--quiet"]) == 0
    run = tmp_path / "runs" / name
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    return json.loads((run / "metrics.json").read_text()), ckpt["model"]


def test_a_frozen_stem_is_the_whitening_of_the_first_training_images(tmp_path: Path) -> None:
    """The run's stem equals the filters computed here from the same loader's first 48 images,
    the statistics are charged to the cap (one matmul per image), and the frozen stem makes every
    step cheaper, so the cap buys more steps."""
    images = 48
    m, weights = _run(tmp_path, "frozen", algorithms=[{"whiten_stem": {"images": images, "freeze": True}}])
    plain, _ = _run(tmp_path, "plain", algorithms=[])
    recipe = load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path), "data.yaml"))
    torch.manual_seed(0)
    data = build_data(recipe.data, recipe.seed)
    x = torch.cat([b[0] for b in data.train])[:images]
    conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    second, count = patch_moments(x, conv)
    expected = whitening_filters(second, float(count), 8, (1, 3, 3), eps=5e-4).float()
    assert torch.allclose(weights["features.0.weight"], expected, atol=1e-5)
    assert m["extra_train_flops"] == images * moment_flops_per_image((1, 12, 12), conv) == images * 100 * 81 * 2
    assert m["flops_used"] <= m["flops_cap"]
    assert m["train_flops_per_sample"] < plain["train_flops_per_sample"]
    assert m["batches"] > plain["batches"]


def test_a_cap_with_little_room_uses_fewer_images(tmp_path: Path) -> None:
    """At a cap of 1.2 steps (a step costs 6.85e6 FLOPs here), the statistics of the whole epoch's
    128 images (2.07e6) do not fit beside one step: the run takes the images that do, and the cap
    holds."""
    cap = 8.2e6
    m, _ = _run(tmp_path, "small", **{"budget.flops": cap, "algorithms": [{"whiten_stem": {}}]})
    assert m["train_flops_per_sample"] * 16 == pytest.approx(6.85e6, rel=0.01)
    per_image = 100 * 81 * 2
    assert 0 < m["extra_train_flops"] < 128 * per_image and m["extra_train_flops"] % per_image == 0
    assert m["flops_used"] <= cap and m["batches"] == 1


def test_a_stem_that_cannot_be_whitened_is_reported_or_refused(tmp_path: Path) -> None:
    layers = {"model.name": "gap_custom", "model.kwargs": {"layers": ["c32", "m", "dw16"]}}
    m, _ = _run(tmp_path, "wide", **layers, algorithms=[{"whiten_stem": {}}])
    assert any("whiten_stem changes nothing" in w and "32 filters" in w for w in m["warnings"]), m["warnings"]
    recipe = tiny_recipe(tmp_path, **layers, algorithms=[{"whiten_stem": {}}], strict=True)
    assert main([str(write_recipe(tmp_path, recipe, "strict.yaml")), "--quiet"]) == 2


def test_describe_names_the_stem() -> None:
    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU())
    effect = algos.describe_effects(net, [{"whiten_stem": {"images": 100, "freeze": True}}])
    assert effect["whiten_stem"]["changes"] == ["0: 16 filters whitened from up to 100 training images, frozen"]
    with pytest.raises(RecipeError, match="algorithms.whiten_stem"):
        algos.check_algorithm("whiten_stem", {"images": 0})


def test_moments_are_summed_a_few_images_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large images are unfolded in chunks (a 224-pixel image has 47K patches); the sums match
    one pass over all images."""
    import effrecipes.whitening as wh

    x = _correlated_images(10)
    conv = nn.Conv2d(1, 8, 3)
    whole = patch_moments(x, conv)
    monkeypatch.setattr(wh, "PATCH_CHUNK", 9 * 144 * 3)  # three images per chunk
    chunked = patch_moments(x, conv)
    assert float(chunked[1]) == float(whole[1]) == 10 * 100
    assert torch.allclose(chunked[0], whole[0], rtol=1e-5)


def test_filters_are_the_top_components_scaled_with_eps() -> None:
    second, count = patch_moments(_correlated_images(), nn.Conv2d(1, 6, 3))
    eps = 0.5  # large enough to matter for every component
    w = whitening_filters(second, float(count), 6, (1, 3, 3), eps).reshape(6, 9)
    ev, vec = torch.linalg.eigh((second / count).double())
    for i in range(3):  # the 3 largest eigenvalues, largest first, norm 1/sqrt(ev + eps)
        v, lam = vec[:, -1 - i], ev[-1 - i]
        assert abs(float(w[i] @ v)) == pytest.approx(1 / math.sqrt(lam + eps), rel=1e-6)


def test_the_room_is_shared_by_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wh.dist, "get_world_size", lambda: 4)
    budget = SimpleNamespace(plan=SimpleNamespace(flops_cap=1e6, step_flops=2e5), remaining_flops=lambda: 1e6)
    algo = wh.WhitenStem(images=10_000)
    algo.bind_budget(budget)
    n = algo._affordable(1000.0)
    assert n == 200 and 4 * n * 1000.0 <= 1e6 - 2e5
    assert algo._affordable(0.0) == 0  # images smaller than the kernel: no patch, no division by 0


def test_a_stem_inside_a_factorized_conv_is_reported() -> None:
    """Composer's Factorize splits a conv into two: the first sees the images' patches only
    through the second's input projection, so there is nothing to whiten there."""
    from composer.algorithms.factorize.factorize_modules import FactorizedConv2d

    model = nn.Sequential(FactorizedConv2d(3, 16, 3, latent_channels=4), nn.ReLU())
    reason = wh.unsuitable(model)
    assert reason is not None and "sits inside a FactorizedConv2d" in reason
    assert wh.unsuitable(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU())) is None


def test_a_stem_other_algorithms_rewrite_is_refused_or_reported(tmp_path: Path) -> None:
    """Weight standardisation would undo the whitening (a conflict); a stem BlurPool wraps sees
    blurred images (reported, and not frozen, whatever the order in the recipe); a kernel larger
    than the images has no patch (reported)."""
    both = tiny_recipe(tmp_path, algorithms=[{"whiten_stem": {}}, {"weight_standardization": {}}])
    assert main([str(write_recipe(tmp_path, both, "ws.yaml")), "--quiet"]) == 2
    strided = {"model.name": "gap_custom", "model.kwargs": {"layers": ["c8/2", "dw16", "m", "dw16"]}}
    m, weights = _run(tmp_path, "blur", **strided, algorithms=[
        {"whiten_stem": {"images": 48, "freeze": True}}, {"blurpool": {"min_channels": 1}}])
    assert any("sits inside a BlurConv2d" in w for w in m["warnings"]), m["warnings"]
    blur_only, _ = _run(tmp_path, "blur_only", **strided, algorithms=[{"blurpool": {"min_channels": 1}}])
    assert m["train_flops_per_sample"] == blur_only["train_flops_per_sample"]  # nothing frozen
    # blurring after the conv leaves it the images' patches: whitened and frozen, although BlurPool,
    # listed after it, replaces that conv at INIT (whiten_stem acts after every other algorithm)
    after = {"blurpool": {"min_channels": 1, "blur_first": False}}
    m, _ = _run(tmp_path, "blur_after", **strided, algorithms=[{"whiten_stem": {"images": 48, "freeze": True}}, after])
    plain, _ = _run(tmp_path, "blur_after_only", **strided, algorithms=[after])
    assert not [w for w in m["warnings"] if "whiten_stem" in w], m["warnings"]
    assert m["train_flops_per_sample"] < plain["train_flops_per_sample"]  # the stem's weight gradient is gone
    big = {"model.name": "gap_custom", "model.kwargs": {"layers": ["c8k13", "dw16", "m", "dw16"]}}
    m, _ = _run(tmp_path, "big", **big, algorithms=[{"whiten_stem": {"images": 48}}])
    assert any("smaller than the stem's kernel" in w for w in m["warnings"]), m["warnings"]
