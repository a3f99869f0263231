"""The GAP CNNs of paper 004 have exactly the paper's parameter counts (Tables 1-3)."""
import pytest
import torch

from effrecipes.models import build_model, list_models
from effrecipes.models.gap_cnn import PAPER_PARAMS


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_param_count_matches_paper(name: str) -> None:
    channels, size = (3, 32) if name.startswith("gap_143k") else (1, 28)
    model = build_model(name, channels, 10, size)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]
    out = model(torch.zeros(2, channels, size, size))
    assert out.shape == (2, 10)


def test_registered_and_listed() -> None:
    assert set(PAPER_PARAMS) <= set(list_models("gap_*"))
    assert list_models("gap_143k*") == ["gap_143k", "gap_143k_dw"]


def test_any_input_size_and_classes() -> None:
    model = build_model("gap_1p5k_dw", 3, 7, 8)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 7)


def test_gap_custom_from_layer_tokens() -> None:
    """A recipe describes a GapCNN as data; strides shrink the map; counts follow the layers."""
    from effrecipes.models.gap_cnn import parse_layers

    model = build_model("gap_custom", 1, 10, 28, layers=["c16/2", "dw32", "m", "dw64", "tb12"])
    feats = model.features(torch.zeros(1, 1, 28, 28))
    assert feats.shape == (1, 12, 7, 7)  # 28 -> 14 (stride) -> 7 (pool)
    # 3x3 conv 1->16 (144) + BN 32 | dw 16*9 + pw 16*32 + BN 64 | dw 32*9 + pw 32*64 + BN 128
    # | tb 64*12 | classifier 12*10
    assert sum(p.numel() for p in model.parameters()) == (
        144 + 32 + 144 + 512 + 64 + 288 + 2048 + 128 + 768 + 120)
    same = build_model("gap_custom", 1, 10, 28, layers=["c8", "dw12", "tb8", "m", "dw12", "dw16",
                                                         "tb12", "m", "dw15"])
    assert sum(p.numel() for p in same.parameters()) == PAPER_PARAMS["gap_1p5k_dw"]
    assert parse_layers([" c8 ", " m"]) == [("c", 8, 1), ("m",)]
    for bad in (["c8", "dw"], ["tb8/2"], "c8", [], ["c0"], ["dw8k4"], ["tb8k3"], ["dw8k"], ["dw8/2k5"],
                ["dw8k05"], ["c16k9999"], ["c16k0"]):
        with pytest.raises(ValueError):
            parse_layers(bad)  # type: ignore[arg-type]


def test_gap_custom_kernel_size_token() -> None:
    """`k5` gives a block's 3x3 conv (a dw block's depthwise one) a 5x5 kernel: the padding keeps
    the map's size, with or without a stride, and the parameters grow by what the kernel adds."""
    from effrecipes.models.gap_cnn import parse_layers

    assert parse_layers(["c16k5/2", "dw56k5", "dw48"]) == [("c", 16, 2, 5), ("dw", 56, 1, 5), ("dw", 48, 1)]
    three = build_model("gap_custom", 1, 10, 28, layers=["c16", "m", "dw32", "m", "dw56", "dw48"],
                        pool="depthwise")
    five = build_model("gap_custom", 1, 10, 28, layers=["c16k5", "m", "dw32", "m", "dw56k5", "dw48"],
                       pool="depthwise")
    assert five.features(torch.zeros(2, 1, 28, 28)).shape == (2, 48, 7, 7)
    # the stem: 1 x 16 x (25 - 9); dw56's depthwise conv over 32 channels: 32 x (25 - 9)
    assert sum(p.numel() for p in five.parameters()) - sum(p.numel() for p in three.parameters()) \
        == 16 * 16 + 32 * 16
    strided = build_model("gap_custom", 1, 10, 28, layers=["c8k7/2", "dw16k5/2"])
    assert strided.features(torch.zeros(1, 1, 28, 28)).shape == (1, 16, 7, 7)
    from effrecipes.models.gap_cnn import GapCNN
    with pytest.raises(ValueError, match="odd"):  # a hand-written spec: padding k // 2 needs odd k
        GapCNN([("dw", 8, 2, 4)], 1, 10, bias=False)


@pytest.mark.parametrize("layers,side", [(["c16", "m", "dw32", "m", "dw48"], 7),
                                         (["c8/2", "dw16", "m", "dw24/2"], 4)])
def test_gap_custom_depthwise_pool(layers: list[str], side: int) -> None:
    """pool: depthwise learns one weight per channel and position of the last map (its kernel is
    the map's size, worked out from the layers' pools and strides) for C*side^2 + 2C parameters
    more than average pooling, and tells positions apart where average pooling cannot."""
    avg = build_model("gap_custom", 1, 10, 28, layers=layers)
    learned = build_model("gap_custom", 1, 10, 28, layers=layers, pool="depthwise")
    c = learned.classifier.in_channels
    conv = learned.pool[0]
    assert conv.kernel_size == (side, side) and conv.groups == c
    assert avg.features(torch.zeros(1, 1, 28, 28)).shape[-1] == side
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(learned) == n(avg) + c * side * side + 2 * c
    # the same feature map, mirrored: average pooling cannot tell the two apart, learned pooling can
    torch.manual_seed(0)
    feats = torch.randn(1, c, side, side)
    for model in (avg, learned):
        model.eval()
    head = lambda m, f: m.classifier(m.pool(f)).flatten(1)  # noqa: E731
    assert torch.allclose(head(avg, feats), head(avg, feats.flip(-1)), atol=1e-6)
    assert not torch.allclose(head(learned, feats), head(learned, feats.flip(-1)), atol=1e-3)
    assert learned(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # another input size (progressive resizing, ColOut) is pooled to the trained map's size first
    for size in (20, 36):
        x = torch.randn(2, 1, size, size)
        f = learned.features(x)
        assert f.shape[-1] != side
        expected = head(learned, torch.nn.functional.adaptive_avg_pool2d(f, side))
        assert torch.allclose(learned(x), expected, atol=1e-6)


@pytest.mark.parametrize("act,kind", [("relu", torch.nn.ReLU), ("silu", torch.nn.SiLU),
                                      ("gelu", torch.nn.GELU)])
def test_gap_custom_activation(act: str, kind: type) -> None:
    """model.kwargs.act puts its activation after every conv block; activations are elementwise,
    so the budget's count (matmuls and convs) charges every choice the same FLOPs."""
    from effrecipes.budget import train_step_flops

    layers = ["c8", "m", "dw16"]
    model = build_model("gap_custom", 1, 10, 28, layers=layers, act=act)
    acts = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU, torch.nn.GELU))]
    assert len(acts) == 2 and all(type(m) is kind for m in acts)
    batch = (torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    relu = build_model("gap_custom", 1, 10, 28, layers=layers)
    loss = torch.nn.functional.cross_entropy
    assert train_step_flops(model, loss, batch) == train_step_flops(relu, loss, batch) > 0


@pytest.mark.parametrize("norm,dw_act", [("after_act", False), ("before_act", False),
                                         ("after_act", True), ("before_act", True)])
def test_gap_custom_block_layout(norm: str, dw_act: bool) -> None:
    """model.kwargs.norm puts each block's BatchNorm after (the paper) or before its activation;
    dw_act gives the depthwise conv of a DW block its own BatchNorm and activation (2*C more
    parameters). The budget's count charges every layout the same FLOPs."""
    from effrecipes.budget import train_step_flops

    layers = ["c8", "m", "dw16"]
    model = build_model("gap_custom", 1, 10, 28, layers=layers, act="silu", norm=norm, dw_act=dw_act)
    kinds = [type(m).__name__ for m in model.features]
    a, b = ("BatchNorm2d", "SiLU") if norm == "before_act" else ("SiLU", "BatchNorm2d")
    dw = ["Conv2d", a, b] if dw_act else ["Conv2d"]
    assert kinds == ["Conv2d", a, b, "MaxPool2d", *dw, "Conv2d", a, b]
    plain = build_model("gap_custom", 1, 10, 28, layers=layers, act="silu")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(model) == n(plain) + (2 * 8 if dw_act else 0)
    batch = (torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    loss = torch.nn.functional.cross_entropy
    assert train_step_flops(model, loss, batch) == train_step_flops(plain, loss, batch) > 0
