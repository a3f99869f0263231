"""Decisions data-parallel ranks must take together.

Under `composer -n N` every rank runs its own callbacks. A rank that stops one batch earlier than
another leaves it waiting forever in the next gradient all-reduce, and ranks that charge different
FLOPs (stochastic depth draws its own skips per rank) project different ends and learning rates.
So a stop that one rank can see alone (Ctrl-C, a write failure, its own clock, its own ledger) is
agreed with `any_rank(s)`, and FLOPs a rank counts for itself are summed over the ranks with
`sum_over_ranks`. Both are free for a single process; under DDP each is one small collective.

What the ranks evaluate must be one model, too: DDP copies rank 0's BatchNorm statistics to the
other ranks only when a training forward pass starts, and every rank then updates them from its
own batch, so after any training step the ranks' statistics differ slightly. Each rank evaluates
its own share of the validation and test sets (`effrecipes.data.shards`), so before evaluating
they take rank 0's (`broadcast_from_rank0`), the model that rank 0 saves.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from composer.devices import Device
from composer.utils import dist


def _reduce(values: Sequence[float], op: str, device: Device) -> list[float]:
    t = device.tensor_to_device(torch.tensor([float(v) for v in values], dtype=torch.float64))
    dist.all_reduce(t, reduce_operation=op)
    return [float(v) for v in t.tolist()]


def any_ranks(flags: Sequence[bool], device: Device) -> list[bool]:
    """For each flag: true on every rank when it is true on any rank (one collective for all).

    Every rank must call it at the same point (the same batch): it is a collective.
    `device` is the Trainer's (`state.device`): NCCL reduces CUDA tensors, gloo CPU ones."""
    if dist.get_world_size() <= 1:
        return [bool(f) for f in flags]
    return [v > 0.0 for v in _reduce([1.0 if f else 0.0 for f in flags], "MAX", device)]


def any_rank(flag: bool, device: Device) -> bool:
    """`any_ranks` for one flag."""
    return any_ranks([flag], device)[0]


def sum_over_ranks(value: float, device: Device) -> float:
    """The sum of `value` over all ranks (the value itself for a single process)."""
    if dist.get_world_size() <= 1:
        return float(value)
    return _reduce([value], "SUM", device)[0]


def sum_tensor_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all ranks, in place (as it is for a single process). `t` must live where
    the process group reduces (CUDA for NCCL, the CPU for gloo): the training device."""
    if dist.get_world_size() > 1:
        dist.all_reduce(t, reduce_operation="SUM")
    return t


def broadcast_from_rank0(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite each tensor, in place, with rank 0's (nothing for a single process). The tensors
    must live where the process group communicates (the training device) and be the same on every
    rank in number, shape and dtype (a model's buffers or state_dict values)."""
    if dist.get_world_size() <= 1:
        return
    for t in tensors:
        dist.broadcast(t, src=0)
