"""Whitened stem: the first convolution set from the training images' patch statistics.

Fast small-budget CIFAR-10 training (hlb-CIFAR10, airbench) starts its network with a whitening
layer: the filters of the first convolution are the eigenvectors of the covariance of the input's
k x k patches, each scaled by 1 / sqrt(eigenvalue + eps) and used with both signs, so the stem's
outputs are decorrelated and of equal variance from the first step instead of after the first
epochs. With `freeze: true` the filters stay fixed, and the stem's weight gradient is no longer
computed: on a small network at a fixed FLOP cap that buys more steps.

The covariance is training compute: it is counted with the budget's own counter and charged to
the cap (`extra_train_flops`, charged when training starts), and fewer images are used when the
cap would not leave room for one training step after it.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from composer.algorithms.factorize.factorize_modules import FactorizedConv2d
from composer.core import Algorithm, Event, State
from composer.loggers import Logger
from composer.utils import dist
from torch import nn

from effrecipes.budget import count_flops
from effrecipes.models import network_of
from effrecipes.ranks import broadcast_from_rank0, sum_over_ranks, sum_tensor_over_ranks

log = logging.getLogger(__name__)


def first_conv(model: nn.Module) -> Optional[tuple[str, nn.Conv2d]]:
    """The network's first `Conv2d` in module order (its stem) with its path, or None."""
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return path, m
    return None


def unsuitable(model: nn.Module) -> Optional[str]:
    """Why the model's stem cannot be whitened, or None when it can."""
    found = first_conv(model)
    if found is None:
        return "the model has no Conv2d to whiten"
    path, conv = found
    if torch.nn.utils.parametrize.is_parametrized(conv, "weight"):
        return (f"the first conv's weight ({path}) is parametrised (weight_standardization?): "
                "filters written to it would be recomputed from the original")
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    if getattr(parent, "blur_first", False) or isinstance(parent, FactorizedConv2d):
        return (f"the first conv ({path}) sits inside a {type(parent).__name__}: its input is not "
                "the images' patches")
    k = conv.kernel_size[0] * conv.kernel_size[1]
    dims = conv.in_channels * k
    if conv.groups != 1:
        return f"the first conv ({path}) is grouped (groups={conv.groups}); whitening needs a full conv"
    if conv.out_channels > 2 * dims:
        return (f"the first conv ({path}) has {conv.out_channels} filters, more than the "
                f"2 x {dims} a whitening of its {conv.in_channels}x{conv.kernel_size[0]}x"
                f"{conv.kernel_size[1]} patches gives")
    return None


def freeze_stem(model: nn.Module, freeze: bool = False, **_: Any) -> None:
    """With `freeze`, the stem's weight takes no gradient (the plan then measures the cheaper
    step; applied by the algorithm at INIT and to the planning copy)."""
    found = first_conv(model)
    if freeze and found is not None and unsuitable(model) is None:
        found[1].weight.requires_grad_(False)


# unfolded patches held at once (floats): 256 MB, however large the images and the kernel
PATCH_CHUNK = 1 << 26


def patch_moments(images: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of p p^T over every valid k x k patch p, number of patches) for N x C x H x W images,
    unfolded a few images at a time (a 224-pixel image has 47K 7x7x3 patches)."""
    dims = conv.weight[0].numel()
    second = torch.zeros(dims, dims, device=images.device)
    count = 0
    per_image = max(1, dims * max(1, images.shape[2] * images.shape[3]))
    step = max(1, PATCH_CHUNK // per_image)
    for i in range(0, len(images), step):
        patches = F.unfold(images[i:i + step], conv.kernel_size, dilation=conv.dilation)  # n x dims x L
        flat = patches.transpose(1, 2).reshape(-1, dims)
        second += flat.T @ flat
        count += flat.shape[0]
    return second, torch.tensor(float(count), device=images.device)


def moment_flops_per_image(shape: tuple[int, ...], conv: nn.Conv2d) -> float:
    """What `patch_moments` costs per C x H x W image in the budget's count (one matmul)."""
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    patches = max(0, shape[1] - dh * (kh - 1)) * max(0, shape[2] - dw * (kw - 1))
    dims = shape[0] * kh * kw
    return 2.0 * patches * dims * dims


def whitening_filters(second_moment: torch.Tensor, count: float, out_channels: int,
                      shape: tuple[int, ...], eps: float) -> torch.Tensor:
    """`out_channels` filters: the top eigenvectors of the patch covariance, scaled by
    1 / sqrt(eigenvalue + eps), each with both signs (largest eigenvalues first)."""
    cov = (second_moment / count).double()
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    m = math.ceil(out_channels / 2)
    top = eigenvectors.flip(1)[:, :m]
    scale = (eigenvalues.flip(0)[:m].clamp_min(0) + eps).rsqrt()
    w = (top * scale).T.reshape(m, *shape)
    return torch.cat([w, -w])[:out_channels]


class WhitenStem(Algorithm):
    """Sets the first conv's filters to a whitening of the training images' patches (module
    docstring) when a run starts; a resumed run keeps its checkpoint's weights.

    `images`: how many training images (per rank; their patch statistics are summed over the
    ranks, so every rank sets the same filters) estimate the covariance; `eps` keeps the smallest
    eigenvalues from blowing the filters up; `freeze`: the filters stay as set.
    """

    def __init__(self, images: int = 5000, eps: float = 5e-4, freeze: bool = False) -> None:
        if images < 1:
            raise ValueError("images must be >= 1")
        if eps <= 0:
            raise ValueError("eps must be > 0")
        self.images, self.eps, self.freeze = int(images), float(eps), bool(freeze)
        self.extra_train_flops = 0.0
        self.images_used = 0
        self.end_warning: Optional[str] = None
        self._budget: Any = None

    def bind_budget(self, budget: Any) -> None:
        self._budget = budget

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.FIT_START)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        net = network_of(state.model)
        if event == Event.INIT:
            freeze_stem(net, self.freeze)
            return
        reason = unsuitable(net)
        if reason is not None:
            self.end_warning = f"algorithm whiten_stem changed nothing: {reason}"
            return
        if int(state.timestamp.batch) > 0 or state.train_dataloader is None:
            return  # resumed: the checkpoint holds the filters
        self._whiten(state, net)

    def _affordable(self, per_image: float) -> int:
        """Images whose statistics the cap can pay for and still leave one training step."""
        if per_image <= 0:  # images smaller than the kernel: no valid patch
            return 0
        if self._budget is None or self._budget.plan.flops_cap is None:
            return self.images
        room = self._budget.remaining_flops() - self._budget.plan.step_flops
        return max(0, min(self.images, int(room // (per_image * dist.get_world_size()))))

    def _whiten(self, state: State, net: nn.Module) -> None:
        _, conv = first_conv(net)  # type: ignore[misc]
        dims = conv.weight[0].numel()
        second = torch.zeros(dims, dims, device=conv.weight.device)
        count = torch.zeros((), device=conv.weight.device)
        loader = state.train_dataloader
        epoch = getattr(loader, "epoch", None)
        if epoch is not None and hasattr(loader, "set_epoch"):
            loader.set_epoch(int(state.timestamp.epoch))  # the first images training will see
        # a torch DataLoader draws its shuffle (and its workers' seeds) from its own generator: this
        # pass would move training's order, and a resumed run (which skips it) would not replay it
        gen = getattr(loader, "generator", None)
        gen_state = gen.get_state() if isinstance(gen, torch.Generator) else None
        used, limit, local, per_image = 0, None, 0.0, 1.0
        for batch in loader:  # batch by batch: the images are never all held at once
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if limit is None:
                per_image = moment_flops_per_image(tuple(x.shape[1:]), conv)
                limit = self._affordable(per_image)
            x = x[:limit - used].to(device=conv.weight.device, dtype=torch.float32)
            if len(x) == 0:
                break
            moments: list[torch.Tensor] = []
            local += count_flops(lambda: moments.extend(patch_moments(x, conv)))
            second += moments[0]
            count += moments[1]
            used += len(x)
            if used >= limit:
                break
        if epoch is not None:
            loader.epoch = epoch  # and the data order of training is not moved by this pass
        if gen_state is not None:
            gen.set_state(gen_state)
        self.extra_train_flops += sum_over_ranks(local, state.device)
        sum_tensor_over_ranks(second)
        sum_tensor_over_ranks(count)
        self.images_used = int(sum_over_ranks(used, state.device))
        if float(count) < dims:
            why = ("the images are smaller than the stem's kernel" if per_image <= 0
                   else "the FLOP cap left no room for the patch statistics")
            self.end_warning = f"algorithm whiten_stem changed nothing: {why}"
            return
        w = whitening_filters(second, float(count), conv.out_channels, tuple(conv.weight.shape[1:]),
                              self.eps)
        with torch.no_grad():
            conv.weight.copy_(w.to(conv.weight.dtype))
        # the ranks solved the same summed moments; rank 0's filters are taken all the same, so an
        # eigensolver that picks another sign on another device cannot split the model
        broadcast_from_rank0([conv.weight.data])
        log.info("whiten_stem: %d filters from %d images%s", conv.out_channels, self.images_used,
                 " (frozen)" if self.freeze else "")
