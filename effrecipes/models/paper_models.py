"""Registers the GAP CNNs of paper 004 (Tables 1-2) by name."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from effrecipes.models.gap_cnn import CIFAR_SPECS, MNIST_SPECS, PAPER_PARAMS, GapCNN, parse_layers
from effrecipes.registry import ModelInfo, models


def _register(name: str, spec: Any, bias: bool, table: str, default_input: str) -> None:
    def build(in_channels: int, num_classes: int, image_size: int = 0,
              dropout: float = 0.0) -> nn.Module:
        return GapCNN(spec, in_channels, num_classes, bias=bias, dropout=dropout)

    build.__doc__ = f"GAP CNN of paper 004 Table {table} ({PAPER_PARAMS[name]:,} params)"
    models.add(name, build, info=ModelInfo("paper004", default_input, PAPER_PARAMS[name]))


for _name, _spec in MNIST_SPECS.items():
    _register(_name, _spec, bias=False, table="1", default_input="1x28x28")
for _name, _spec in CIFAR_SPECS.items():
    _register(_name, _spec, bias=True, table="2", default_input="3x32x32")


# recipes/fashion_mnist_10k.yaml's network (9,872 params on 1x28x28, 10 classes)
DEFAULT_CUSTOM_LAYERS = ("c16", "m", "dw32", "dw32", "m", "dw64", "dw60")


def gap_custom(in_channels: int, num_classes: int, image_size: int = 0, *,
               layers: Sequence[str] = DEFAULT_CUSTOM_LAYERS, bias: bool = False,
               dropout: float = 0.0, pool: str = "avg", act: str = "relu", norm: str = "after_act",
               dw_act: bool = False) -> nn.Module:
    """GAP CNN from a recipe's layer list (model.kwargs.layers: [c16, m, dw32/2, dw56k5, ...]; pool: avg | depthwise; act: relu | silu | gelu)

    pool: avg is global average pooling; depthwise learns one weight per channel and position of
    the last feature map (GapCNN's docstring says why). act: the activation of every block; norm:
    after_act | before_act, where each block's BatchNorm sits; dw_act: BatchNorm + activation
    after each depthwise conv too (MobileNet's separable block)."""
    return GapCNN(parse_layers(list(layers)), in_channels, num_classes, bias=bias, dropout=dropout,
                  pool=pool, image_size=image_size, act=act, norm=norm, dw_act=dw_act)


models.add("gap_custom", gap_custom, info=ModelInfo("paper004", "any"))
