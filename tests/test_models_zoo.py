"""The paper-000 model zoo: shapes, parameter and FLOP counts, one training step, no downloads.

`pytest tests/test_models_zoo.py -s` also prints the table of parameters (ours vs the paper's
Table I) and forward FLOPs per sample (FlopCounterMode: 2 per multiply-add).
"""
from __future__ import annotations

import math
import socket

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effrecipes.models import build_model, list_models
from effrecipes.models.zoo import ZOO
from effrecipes.registry import models

NAMES = list(ZOO)

# torchvision's ImageNet-1k parameter counts (3x224x224, 1000 classes), as in its docs.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "shufflenet_v2": 2_278_604,   # x1.0
    "squeezenet": 1_235_496,      # 1.1
    "mnasnet_small": 2_218_512,   # mnasnet0_5
    "mnasnet_medium": 4_383_312,  # mnasnet1_0
    "efficientnet_b0": 5_288_548,
}

# Well-known forward multiply-adds at 3x224x224 (papers / torchvision docs), in GMACs.
KNOWN_GMACS_224 = {
    "resnet18": 1.82,
    "mobilenet_v2": 0.300,
    "mobilenet_v3_large": 0.219,
    "mobilenet_v3_small": 0.056,
    "shufflenet_v2": 0.146,
    "efficientnet_b0": 0.39,
    "squeezenet": 0.35,
    "mnasnet_medium": 0.31,
}

# The (in_channels, num_classes, kwargs) at which a stock torchvision net has exactly the
# paper's Table I count (see the zoo module docstring).
PAPER_SETTING = {
    "vgg5": (3, 196, {}),
    "efficientnet_b0": (3, 1000, {}),
    "squeezenet": (3, 196, {}),
    "mobilenet_v2": (3, 196, {}),
    "mobilenet_v3_small": (1, 10, {}),
    "mobilenet_v3_large": (3, 10, {}),
    "shufflenet_v2": (3, 1000, {"width": 0.5}),
    "mnasnet_small": (3, 10, {}),
    "mnasnet_medium": (1, 10, {}),
}

# Table I parameter counts (also in shared/reference/seed_results.csv).
PAPER_TABLE_I_PARAMS = {
    "vgg5": 3_852_740, "efficientnet_b0": 5_288_548, "squeezenet": 823_044,
    "mobilenet_v2": 2_474_948, "mobilenet_v3_small": 1_527_818, "mobilenet_v3_large": 4_214_842,
    "shufflenet_v2": 1_366_792, "mnasnet_small": 950_322, "mnasnet_medium": 3_114_546,
}

# Table I, Kuzushiji-49 GFLOPs per epoch.
PAPER_K49_GFLOPS_PER_EPOCH = {
    "vgg5": 4710, "squeezenet": 474, "mobilenet_v2": 1090, "mobilenet_v3_small": 397,
    "mobilenet_v3_large": 1329, "shufflenet_v2": 418, "mnasnet_small": 391, "mnasnet_medium": 1150,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny batches: one intra-op thread is as fast and does not spin when the CPUs are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, *args, **kwargs) -> nn.Module:
    """Build on the meta device: shapes and counts only, no weight init (fast on 2 CPUs)."""
    with torch.device("meta"):
        return build_model(name, *args, **kwargs)


def forward_flops(model: nn.Module, channels: int, size: int) -> int:
    """FLOPs (2 per multiply-add) of one eval-mode forward pass on one image.

    FlopCounterMode counts the aten ops dispatched, so a meta-device model gives the same count
    as a real one without doing the arithmetic."""
    model.eval()
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model(torch.zeros(1, channels, size, size, device=device))
    assert out.shape[0] == 1 and out.ndim == 2
    return int(counter.get_total_flops())


def test_all_registered_with_meta() -> None:
    assert set(NAMES) <= set(list_models())
    assert len(NAMES) == 10
    for name in NAMES:
        info = models.entry(name).info
        assert info.family == ("reference" if name == "resnet18" else "paper000")
        assert info.default_input in ("1x28x28", "3x224x224")
        if name != "resnet18":
            assert info.paper_params == PAPER_TABLE_I_PARAMS[name]
    assert models.entry("resnet18").info.paper_params is None


@pytest.mark.parametrize("name", NAMES)
def test_shapes_small_and_large(name: str) -> None:
    torch.manual_seed(0)
    small = build_model(name, 1, 49, 28).eval()
    with torch.no_grad():
        assert small(torch.randn(2, 1, 28, 28)).shape == (2, 49)
    large = build_model(name, 3, 10, 224).eval()
    with torch.no_grad():
        assert large(torch.randn(1, 3, 224, 224)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(PAPER_SETTING))
def test_paper_param_count_reproduced(name: str) -> None:
    channels, classes, kwargs = PAPER_SETTING[name]
    model = meta_model(name, channels, classes, 224, **kwargs)
    assert n_params(model) == models.entry(name).info.paper_params


def test_params_and_flops_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for name in NAMES:
        k49 = meta_model(name, 1, 49, 28)
        k49_stock = meta_model(name, 1, 49, 28, small_stem=False)
        imagenet = meta_model(name, 3, 1000, 224)
        rows.append({
            "name": name,
            "p_k49": n_params(k49),
            "p_in1k": n_params(imagenet),
            "paper": models.entry(name).info.paper_params,
            "f28": forward_flops(k49, 1, 28),
            "f28_stock": forward_flops(k49_stock, 1, 28),
            "f224": forward_flops(imagenet, 3, 224),
        })
        assert n_params(k49_stock) == rows[-1]["p_k49"]  # the stem rule changes no parameter

    with capsys.disabled():
        print("\n" + "-" * 118)
        print(f"{'model':<20}{'params 1x28 49cl':>17}{'params 3x224 1k':>16}{'paper T.I':>11}"
              f"{'MFLOPs 1x28':>13}{'(stock stem)':>13}{'MFLOPs 3x224':>14}{'paper GF/ep':>12}"
              f"{'img/ep':>9}")
        for r in rows:
            gf = PAPER_K49_GFLOPS_PER_EPOCH.get(r["name"])
            implied = gf * 1e9 / (r["f28_stock"] / 2) if gf else None
            r["implied"] = implied
            print(f"{r['name']:<20}{r['p_k49']:>17,}{r['p_in1k']:>16,}"
                  f"{(format(r['paper'], ',') if r['paper'] else '-'):>11}"
                  f"{r['f28'] / 1e6:>13.1f}{r['f28_stock'] / 1e6:>13.1f}{r['f224'] / 1e6:>14.1f}"
                  f"{(str(gf) if gf else '-'):>12}{(f'{implied:,.0f}' if implied else '-'):>9}")
        print("img/ep = paper GFLOPs/epoch / stock-stem forward MACs at 1x28x28 "
              "(Kuzushiji-49 has 232,365 training images)")
        print("-" * 118)

    for r in rows:
        name = r["name"]
        if name in TORCHVISION_PARAMS:
            assert r["p_in1k"] == TORCHVISION_PARAMS[name], name
        if name in KNOWN_GMACS_224:
            gmacs = r["f224"] / 2 / 1e9
            assert gmacs == pytest.approx(KNOWN_GMACS_224[name], rel=0.05), name
        # sane ranges: the small-image stem costs FLOPs but stays below the 224 cost
        assert 1e6 < r["f28_stock"] <= r["f28"] < r["f224"] < 1e10, name
        assert 5e5 < r["p_k49"] < 1.2e7, name
        # Table I's Kuzushiji-49 GFLOPs/epoch fit the stock stems at ~80% of the training set
        # (ShuffleNetV2 is the paper's outlier: its count is x0.5's, its FLOPs near x1.0's)
        if r.get("implied") and name != "shufflenet_v2":
            assert 1.6e5 < r["implied"] < 2.1e5, name
    assert rows[NAMES.index("vgg5")]["p_k49"] == 3_776_753


@pytest.mark.parametrize("name", NAMES)
def test_one_sgd_step(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 1, 49, 28).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 49, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    assert math.isfinite(loss.item())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert math.isfinite(nn.functional.cross_entropy(model(x), y).item())


def test_nothing_is_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import torchvision.models._api as tv_api

    def refuse(*args, **kwargs):
        raise AssertionError("a zoo model tried to download or load pretrained weights")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(tv_api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in NAMES:
        build_model(name, 1, 49, 28)
        meta_model(name, 3, 1000, 224)
    assert list(tmp_path.iterdir()) == []


def test_stem_rule() -> None:
    resnet = meta_model("resnet18", 1, 10, 28)
    assert isinstance(resnet.maxpool, nn.Identity) and resnet.conv1.stride == (1, 1)
    assert resnet.conv1.in_channels == 1 and resnet.conv1.kernel_size == (7, 7)
    stock = meta_model("resnet18", 1, 10, 28, small_stem=False)
    assert isinstance(stock.maxpool, nn.MaxPool2d) and stock.conv1.stride == (2, 2)
    big = meta_model("resnet18", 3, 10, 64)  # 64 is not small
    assert isinstance(big.maxpool, nn.MaxPool2d) and big.conv1.stride == (2, 2)
    forced = meta_model("mobilenet_v2", 3, 10, 224, small_stem=True)
    assert forced.features[0][0].stride == (1, 1)
    shuffle = meta_model("shufflenet_v2", 1, 10, 32)
    assert isinstance(shuffle.maxpool, nn.Identity) and shuffle.conv1[0].stride == (1, 1)
    squeeze = meta_model("squeezenet", 1, 10, 28)
    assert squeeze.features[0].stride == (1, 1)
    assert sum(isinstance(m, nn.MaxPool2d) for m in squeeze.modules()) == 3  # kept


def test_width_knobs() -> None:
    assert n_params(meta_model("mobilenet_v2", 3, 1000, 224, width_mult=0.5)) == 1_968_680
    assert n_params(meta_model("mnasnet_small", 3, 1000, 224, alpha=1.0)) == 4_383_312
    assert n_params(meta_model("mnasnet_medium", 3, 1000, 224, alpha=0.5)) == 2_218_512
    assert n_params(meta_model("shufflenet_v2", 3, 1000, 224, width=2.0)) == 7_393_996
    assert n_params(meta_model("squeezenet", 3, 1000, 224, version="1_0")) == 1_248_424
    # EfficientNet-B1 is B0 with depth x1.1 (same width, 240px): torchvision's 7,794,184
    assert n_params(meta_model("efficientnet_b0", 3, 1000, 224, depth_mult=1.1)) == 7_794_184
    assert (n_params(meta_model("mobilenet_v3_small", 1, 49, 28, width_mult=0.75))
            < n_params(meta_model("mobilenet_v3_small", 1, 49, 28)))
    assert (n_params(meta_model("vgg5", 1, 49, 28, width_mult=0.5))
            < n_params(meta_model("vgg5", 1, 49, 28)))
    with pytest.raises(ValueError, match="width"):
        build_model("shufflenet_v2", 1, 10, 28, width=0.75)
    with pytest.raises(ValueError, match="version"):
        build_model("squeezenet", 1, 10, 28, version="2_0")
