"""Model zoo: every model is registered by name in `effrecipes.registry.models`.

A builder takes `(in_channels, num_classes, image_size, **kwargs)` and returns an `nn.Module`
that maps `N x C x H x W` float images to `N x num_classes` logits.
"""
from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from effrecipes.models import paper_models  # noqa: F401  (registers the GAP CNNs)
from effrecipes.models import zoo  # noqa: F401
from effrecipes.registry import models


def build_model(name: str, in_channels: int, num_classes: int, image_size: int,
                **kwargs: Any) -> nn.Module:
    """Build a registered model by name."""
    return models.get(name)(in_channels=in_channels, num_classes=num_classes,
                            image_size=image_size, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a glob pattern (like timm.list_models)."""
    return models.names(pattern)


def network_of(model: nn.Module) -> nn.Module:
    """The image -> logits network inside a trainer's model: unwraps DistributedDataParallel
    (Composer wraps the model when running on several ranks) and ComposerClassifier."""
    from composer.models import ComposerClassifier  # lazy: Composer (~3 s), unused by --list models

    if isinstance(model, DistributedDataParallel):
        model = model.module
    if isinstance(model, ComposerClassifier):
        model = model.module
    return model
