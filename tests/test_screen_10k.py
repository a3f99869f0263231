"""benchmarks/screen_10k.py screens networks that `gap_custom` then trains for real: where both
can express a network, the screening loop must build the very same one (same layers, same
parameter count, same initial weights for a seed), or its numbers would not carry over."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from effrecipes.models import build_model

REPO = Path(__file__).resolve().parents[1]


def _screen():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("screen_10k", REPO / "benchmarks" / "screen_10k.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.parametrize("layers,pool,act", [("c16 m dw32 m dw56 dw48 |gd", "depthwise", "relu"),
                                             ("c16 m dw32 dw32 m dw64 dw60", "avg", "relu"),
                                             ("silu c16 m dw32 m dw56 dw48 |gd", "depthwise", "silu")])
def test_screened_network_is_gap_custom(layers: str, pool: str, act: str) -> None:
    screen = _screen()
    torch.manual_seed(0)
    screened = screen.build(layers).eval()
    torch.manual_seed(0)
    tokens = layers.removeprefix("silu ").split("|")[0].split()
    real = build_model("gap_custom", 1, 10, 28, layers=tokens, pool=pool, act=act).eval()
    assert isinstance(real.features[1], torch.nn.SiLU if act == "silu" else torch.nn.ReLU)
    assert sum(p.numel() for p in screened.parameters()) == sum(p.numel() for p in real.parameters())
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(screened(x), real(x), atol=1e-5)


def test_screen_only_tokens_and_errors() -> None:
    screen = _screen()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    plain, mid = screen.build("c8 m dw16"), screen.build("c8 m mdw16")
    assert n(mid) == n(plain) + 2 * 8  # one BatchNorm over the depthwise conv's 8 channels
    assert n(screen.build("c8 m dw8 rdw8")) == n(screen.build("c8 m dw8 dw8"))
    assert isinstance(screen.build("silu c8 m dw16").features[1], torch.nn.SiLU)
    assert isinstance(screen.build("bnfirst c8 m dw16").features[1], torch.nn.BatchNorm2d)
    for bad in ("c8 rdw16", "c8 x3"):
        with pytest.raises(SystemExit):
            screen.build(bad)
