"""The GAP CNNs of "Training Efficient CNNs" (Ethiraj & Bolla), Tables 1-2, exactly.

The tables give layer widths but not every detail; the parameter counts pin the rest down
(the test suite asserts each one against the paper):
  * MNIST models: convolutions without bias, BatchNorm after every 3x3 block; the 1x1
    transition blocks ("TB") and the 1x1 classifier have no BatchNorm.
  * CIFAR-10 models: convolutions with bias (the depthwise half of a DW block too), BatchNorm
    after every 3x3 block; the 1x1 classifier has neither.
  * A "DW (c_in, c_out)/3x3" block is a depthwise 3x3 conv (groups=c_in) followed by a pointwise
    1x1 conv, with one BatchNorm after the pair.
Padding is not given in the paper; we use padding=1 on every 3x3 conv so the networks accept any
input size (28x28, 32x32, larger) and the final feature map is never empty.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

# A layer spec: ("c", out) 3x3 conv block, ("dw", out) depthwise-separable block,
# ("tb", out) 1x1 transition conv, ("m",) 2x2 max-pool; an optional third item is the 3x3
# conv's stride (("c", 16, 2) halves the resolution for a quarter of the next layers' cost), an
# optional fourth its kernel size (("dw", 56, 1, 5): a 5x5 depthwise conv sees more of a small map
# for 16 more parameters and MACs per position and input channel).
Spec = Sequence[Union[tuple[str, int], tuple[str, int, int], tuple[str, int, int, int], tuple[str]]]


POOLS = ("avg", "depthwise")
# where a 3x3 block's BatchNorm sits: after the activation (the paper's "conv, ReLU, BN") or before
# it (the usual "conv, BN, ReLU"); both cost the same parameters and, in the budget's count, FLOPs
NORMS = ("after_act", "before_act")
# the activation after every conv block; elementwise, so it costs no FLOPs in the budget's count
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True), "silu": lambda: nn.SiLU(inplace=True), "gelu": nn.GELU}


def final_size(spec: Spec, image_size: int) -> int:
    """Side of the last feature map for a square input: convs keep it (an odd kernel k, padding
    k // 2) or divide it by their stride, 2x2 max-pools halve it (floor), 1x1 transitions keep it."""
    s = image_size
    for item in spec:
        if item[0] == "m":
            s //= 2
        elif item[0] in ("c", "dw") and len(item) > 2:
            s = (s - 1) // int(item[2]) + 1  # type: ignore[misc]
    return s


class LearnedPool(nn.Sequential):
    """A depthwise conv as large as the last feature map, then BatchNorm (`pool: depthwise`).

    Its weights are tied to positions of the map the recipe's image size gives. A map of another
    size (progressive resizing, ColOut, evaluation at another resolution) is first average-pooled
    to that size, so each weight keeps its place relative to the image, not a crash mid-run."""

    def __init__(self, channels: int, side: int, bias: bool) -> None:
        super().__init__(nn.Conv2d(channels, channels, side, groups=channels, bias=bias),
                         nn.BatchNorm2d(channels))
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.side, self.side):
            x = F.adaptive_avg_pool2d(x, self.side)
        return super().forward(x)


class GapCNN(nn.Module):
    """Conv blocks -> global pooling -> 1x1 conv classifier (no dense layers).

    `pool="avg"` is the papers' global average pooling. `pool="depthwise"` learns the pooling: a
    depthwise conv as large as the last feature map (one weight per channel and position, then
    BatchNorm; MobileFaceNet's "global depthwise convolution"), so the classifier can tell where
    in the image a feature fired, for C*H*W extra parameters and as many MACs per image.
    `norm` places each block's BatchNorm after (the paper) or before its activation; `dw_act`
    gives a DW block's depthwise conv its own activation and BatchNorm (MobileNet's separable
    block: one more nonlinearity per block for 2*C parameters and no FLOPs in the budget's count).
    """

    def __init__(self, spec: Spec, in_channels: int, num_classes: int, bias: bool,
                 dropout: float = 0.0, pool: str = "avg", image_size: int = 0,
                 act: str = "relu", norm: str = "after_act", dw_act: bool = False) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act {act!r} is not one of {', '.join(ACTIVATIONS)}")
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
        activation = ACTIVATIONS[act]

        def act_norm(channels: int) -> list[nn.Module]:
            if norm == "before_act":
                return [nn.BatchNorm2d(channels), activation()]
            return [activation(), nn.BatchNorm2d(channels)]

        layers: list[nn.Module] = []
        c = in_channels
        for item in spec:
            kind = item[0]
            if kind == "m":
                layers.append(nn.MaxPool2d(2))
                continue
            out = int(item[1])  # type: ignore[misc]
            stride = int(item[2]) if len(item) > 2 else 1  # type: ignore[misc]
            k = int(item[3]) if len(item) > 3 else 3  # type: ignore[misc]
            if k % 2 == 0:  # padding k // 2 keeps the size only for odd kernels (final_size)
                raise ValueError(f"layer {tuple(item)}: the kernel size must be odd")
            if kind == "c":
                layers += [nn.Conv2d(c, out, k, stride=stride, padding=k // 2, bias=bias), *act_norm(out)]
            elif kind == "dw":
                layers.append(nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=bias))
                if dw_act:  # MobileNet's separable block: the depthwise conv gets its own BN + act
                    layers += act_norm(c)
                layers += [nn.Conv2d(c, out, 1, bias=bias), *act_norm(out)]
            elif kind == "tb":
                layers += [nn.Conv2d(c, out, 1, bias=bias)]
            else:  # pragma: no cover - specs are constants below
                raise ValueError(f"unknown layer kind {kind!r}")
            if dropout and kind in ("c", "dw"):
                layers.append(nn.Dropout2d(dropout))
            c = out
        self.features = nn.Sequential(*layers)
        if pool == "avg":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
        elif pool == "depthwise":
            side = final_size(spec, image_size)
            if side < 1:
                raise ValueError(f"pool 'depthwise' needs the input size; got image_size {image_size}")
            self.pool = LearnedPool(c, side, bias)
        else:
            raise ValueError(f"pool {pool!r} is not one of {', '.join(POOLS)}")
        self.classifier = nn.Conv2d(c, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x))).flatten(1)


# Table 1 (MNIST). Widths as printed in the paper.
MNIST_SPECS: dict[str, Spec] = {
    "gap_25k": [("c", 8), ("c", 16), ("m",), ("c", 32), ("c", 64), ("m",)],
    "gap_7k": [("c", 8), ("c", 12), ("tb", 8), ("m",), ("c", 12), ("c", 16), ("tb", 12), ("m",),
               ("c", 15), ("c", 15)],
    "gap_7k_dw": [("c", 10), ("dw", 12), ("tb", 10), ("m",), ("c", 13), ("c", 16), ("tb", 12),
                  ("m",), ("c", 15), ("c", 15)],
    "gap_5k": [("c", 8), ("c", 12), ("tb", 8), ("m",), ("c", 12), ("c", 16), ("tb", 12), ("m",),
               ("c", 15)],
    "gap_5k_dw": [("c", 8), ("dw", 12), ("tb", 8), ("m",), ("c", 13), ("c", 18), ("tb", 12),
                  ("m",), ("c", 16)],
    "gap_1p5k_dw": [("c", 8), ("dw", 12), ("tb", 8), ("m",), ("dw", 12), ("dw", 16), ("tb", 12),
                    ("m",), ("dw", 15)],
}

# Table 2 (CIFAR-10).
CIFAR_SPECS: dict[str, Spec] = {
    "gap_143k": [("c", 16), ("c", 16), ("m",), ("c", 32), ("c", 32), ("m",), ("c", 64), ("c", 64),
                 ("m",), ("c", 120)],
    "gap_143k_dw": [("c", 16), ("c", 16), ("m",), ("dw", 32), ("c", 32), ("m",), ("dw", 64),
                    ("c", 64), ("m",), ("dw", 128), ("dw", 192), ("dw", 260)],
}

# Parameter counts printed in the paper (for 1-channel MNIST / 3-channel CIFAR-10, 10 classes).
PAPER_PARAMS: dict[str, int] = {
    "gap_25k": 25_144, "gap_7k": 7_767, "gap_7k_dw": 7_611, "gap_5k": 5_712,
    "gap_5k_dw": 5_616, "gap_1p5k_dw": 1_560, "gap_143k": 143_208, "gap_143k_dw": 143_396,
}


_TOKEN = re.compile(r"^(c|dw|tb)(\d+)(?:k([1-9]\d*))?(?:/(\d+))?$|^m$")
MAX_KERNEL = 15  # larger kernels than the maps these networks see are a typo, not a design


def parse_layers(tokens: Sequence[str]) -> list[tuple[Any, ...]]:
    """`["c16", "m", "dw32/2", "dw56k5", "tb12"]` -> a Spec. Recipes describe a GapCNN as data:
    `c<N>` 3x3 conv block, `dw<N>` depthwise-separable block, `tb<N>` 1x1 transition, `m` 2x2
    max-pool, `/2` a stride on the 3x3 conv, `k5` a 5x5 kernel instead (any odd size; padding
    keeps the map's size). Raises ValueError naming the bad token."""
    if isinstance(tokens, str) or not tokens:
        raise ValueError("layers must be a non-empty list such as [c16, m, dw32, dw64]")
    spec: list[tuple[Any, ...]] = []
    for tok in tokens:
        tok = str(tok).strip()
        m = _TOKEN.match(tok)
        if not m:
            raise ValueError(f"layer {tok!r} is not c<N>, dw<N>, tb<N> (optionally k<kernel>, "
                             "/<stride>) or m")
        if tok == "m":
            spec.append(("m",))
            continue
        kind, width, stride = m.group(1), int(m.group(2)), int(m.group(4) or 1)
        if width < 1 or stride < 1 or (stride > 1 and kind == "tb"):
            raise ValueError(f"layer {tok!r}: width and stride must be >= 1; tb takes no stride")
        if m.group(3) is None:
            spec.append((kind, width, stride))
            continue
        kernel = int(m.group(3))
        if kind == "tb" or kernel % 2 == 0 or kernel > MAX_KERNEL:
            raise ValueError(f"layer {tok!r}: the kernel size must be odd and at most {MAX_KERNEL} "
                             "(k3, k5, k7); tb is 1x1")
        spec.append((kind, width, stride, kernel))
    return spec
