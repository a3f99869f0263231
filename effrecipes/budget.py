"""The FLOP budget: measure what a training step costs, plan the steps, charge and stop.

Convention (stated in the README): FLOPs as counted by `torch.utils.flop_counter.FlopCounterMode`
(2 FLOPs per multiply-add; convolutions, matmuls and their backward kernels; with torch's
grouped-convolution backward formula corrected, see `conv_backward_flop_grouped`), forward + backward,
measured on a real training step of the model *after* algorithm surgery. Element-wise work
(activations, BatchNorm, optimizer updates, augmentation) is not counted, as in every FLOP
counter. fvcore's count (1 per multiply-add, forward only) is reported beside it.

The budget knows FLOPs, batches and shapes only: it does not know the CLI, W&B or the matrix.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


_torch_conv_backward_flop = flop_counter.conv_backward_flop.__wrapped__  # shapes in, FLOPs out


def conv_backward_flop_grouped(grad_out_shape: Any, x_shape: Any, w_shape: Any, bias: Any,
                               stride: Any, padding: Any, dilation: Any, transposed: bool,
                               output_padding: Any, groups: int, output_mask: Any,
                               out_shape: Any = None) -> int:
    """torch's convolution-backward formula with the weight gradient divided by `groups`.

    torch 2.7's FlopCounterMode counts the weight gradient of a grouped convolution as if it were
    dense (it ignores `groups`), so a depthwise 3x3 conv over 32 channels counts 34x its forward
    pass for one step instead of 3x. Each output channel's weight gradient only sees its group's
    C_in / groups input channels.
    """
    args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
            output_padding, groups)
    grad_input = (_torch_conv_backward_flop(*args, [True, False, False], out_shape)
                  if output_mask[0] else 0)
    grad_weight = (_torch_conv_backward_flop(*args, [False, True, False], out_shape)
                   if output_mask[1] else 0)
    return int(grad_input + grad_weight // max(int(groups), 1))


FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flop_grouped}


def flop_counter_mode() -> FlopCounterMode:
    """The project's counter: FlopCounterMode with the grouped-convolution fix."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of everything `fn` runs, by the project's convention."""
    with flop_counter_mode() as counter:
        fn()
    return int(counter.get_total_flops())


def forward_flops_per_sample(model: nn.Module, sample_shape: tuple[int, ...]) -> float:
    """Inference FLOPs for one image (eval mode, no grad)."""
    probe = copy.deepcopy(model).eval()
    x = torch.zeros((2, *sample_shape))
    with torch.no_grad():
        return count_flops(lambda: probe(x)) / 2


def fvcore_forward_macs_per_sample(model: nn.Module, sample_shape: tuple[int, ...]) -> Optional[float]:
    """fvcore's count (1 per multiply-add, forward): an independent second opinion."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:  # pragma: no cover - fvcore is a dependency
        return None
    probe = copy.deepcopy(model).eval()
    analysis = FlopCountAnalysis(probe, torch.zeros((1, *sample_shape)))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return float(analysis.total())


def train_step_flops(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor],
                     batch: tuple[torch.Tensor, torch.Tensor], passes: float = 1.0) -> float:
    """FLOPs of forward + loss + backward on a copy of the model, times `passes` (SAM: 2)."""
    probe = copy.deepcopy(model).train()
    x, y = batch

    def step() -> None:
        out = probe(x)
        loss_fn(out, y).backward()

    return count_flops(step) * passes


@dataclass
class BudgetPlan:
    """How many batches the caps afford, and why."""

    flops_cap: Optional[float]
    step_flops: float                 # one training batch, all ranks (global batch)
    train_flops_per_sample: float
    forward_flops_per_sample: float   # inference, eval mode
    fvcore_forward_macs_per_sample: Optional[float]
    global_batch_size: int
    batches_per_epoch: int
    planned_batches: int
    planned_epochs: float
    binding_cap: str                  # flops | max_epochs | max_seconds (the cap that sets the plan)
    reserved_flops: float = 0.0       # e.g. SWA's BatchNorm recompute forward passes
    cost_factor: float = 1.0          # expected mean step cost / full-size step cost

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_budget(*, flops_cap: Optional[float], max_epochs: Optional[float],
                max_seconds: Optional[float], step_flops: float, train_flops_per_sample: float,
                forward_flops_per_sample: float, fvcore_macs: Optional[float],
                global_batch_size: int, batches_per_epoch: int, reserved_flops: float = 0.0,
                cost_factor: float = 1.0) -> BudgetPlan:
    """Turn the caps into an exact number of batches (airbench-style: the loop stops there)."""
    if batches_per_epoch < 1:
        raise ValueError("the training set is smaller than one batch")
    candidates: list[tuple[float, str]] = []
    if flops_cap is not None:
        usable = flops_cap - reserved_flops
        candidates.append((math.floor(usable / (step_flops * cost_factor)) if usable > 0 else 0, "flops"))
    if max_epochs is not None:
        candidates.append((math.floor(max_epochs * batches_per_epoch), "max_epochs"))
    if not candidates:  # only max_seconds: plan "as many as fit", stop on time
        candidates.append((10**12, "max_seconds"))
    batches, binding = min(candidates, key=lambda c: c[0])
    batches = int(batches)
    return BudgetPlan(flops_cap=flops_cap, step_flops=step_flops,
                      train_flops_per_sample=train_flops_per_sample,
                      forward_flops_per_sample=forward_flops_per_sample,
                      fvcore_forward_macs_per_sample=fvcore_macs,
                      global_batch_size=global_batch_size, batches_per_epoch=batches_per_epoch,
                      planned_batches=batches, planned_epochs=batches / batches_per_epoch,
                      binding_cap=binding, reserved_flops=reserved_flops, cost_factor=cost_factor)


@dataclass
class BudgetLedger:
    """What has been spent; saved with checkpoints so a resumed run carries it over."""

    flops_used: float = 0.0
    batches: int = 0
    samples: int = 0
    extra_forward_flops: float = 0.0
    eval_flops: float = 0.0
    measured_step_flops: dict[str, float] = field(default_factory=dict)  # shape -> per-sample
    stop_reason: Optional[str] = None
    train_seconds: float = 0.0


class FlopBudget(Callback):
    """Charges every training batch by its real size and input shape, and stops before the cap.

    The FLOP counter runs on the first batch of each new input shape (and on every batch when an
    algorithm makes the cost vary, e.g. selective backprop or layer freezing); other batches are
    charged from the cached per-sample cost, so the counter adds no per-batch overhead. At
    BATCH_END, if the next batch would cross the cap, training stops there: the run never exceeds
    the cap and ends within one batch of it.
    """

    def __init__(self, plan: BudgetPlan, *, max_seconds: Optional[float] = None,
                 dynamic_cost: bool = False, extra_forward_sources: tuple[Any, ...] = (),
                 ledger: Optional[BudgetLedger] = None) -> None:
        self.plan = plan
        self.max_seconds = max_seconds
        self.dynamic_cost = dynamic_cost
        self.extra_sources = extra_forward_sources  # objects with .extra_forward_samples
        self.ledger = ledger or BudgetLedger()
        self._counter: Optional[FlopCounterMode] = None
        self._shape_key = ""
        self._t0 = 0.0
        self._seconds_before = self.ledger.train_seconds
        self._charged_extra = {id(s): 0 for s in extra_forward_sources}
        self.max_step_flops = plan.step_flops

    # -- charging ---------------------------------------------------------
    def after_dataloader(self, state: State, logger: Logger) -> None:
        x = state.batch_get_item(0)
        self._shape_key = "x".join(str(d) for d in x.shape[1:])
        if self.dynamic_cost or self._shape_key not in self.ledger.measured_step_flops:
            self._counter = flop_counter_mode()
            self._counter.__enter__()

    def batch_end(self, state: State, logger: Logger) -> None:
        n = int(state.batch_get_item(0).shape[0])
        world = dist.get_world_size()
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            local = float(self._counter.get_total_flops())
            self._counter = None
            self.ledger.measured_step_flops[self._shape_key] = local / max(n, 1)
            cost = local * world
        else:
            cost = self.ledger.measured_step_flops[self._shape_key] * n * world
        self.max_step_flops = max(self.max_step_flops, cost)
        self.ledger.flops_used += cost
        self.ledger.batches += 1
        self.ledger.samples += n * world
        self._charge_extra_forward()
        self.ledger.train_seconds = self._seconds_before + (time.perf_counter() - self._t0)
        logger.log_metrics({"budget/flops_used": self.ledger.flops_used})
        self._maybe_stop(state, cost)

    def _charge_extra_forward(self) -> None:
        for src in self.extra_sources:
            done = int(getattr(src, "extra_forward_samples", 0))
            new = done - self._charged_extra[id(src)]
            if new > 0:
                extra = new * self.plan.forward_flops_per_sample * dist.get_world_size()
                self.ledger.flops_used += extra
                self.ledger.extra_forward_flops += extra
                self._charged_extra[id(src)] = done

    def _maybe_stop(self, state: State, last_cost: float) -> None:
        cap = self.plan.flops_cap
        if cap is not None:
            # the next batch may be larger than this one (progressive resizing grows images)
            next_cost = max(last_cost, self.max_step_flops if self.dynamic_cost else last_cost)
            pending_reserve = self._pending_reserve()
            if self.ledger.flops_used + next_cost + pending_reserve > cap:
                self._stop(state, "flops")
                return
        if self.max_seconds is not None and self.ledger.train_seconds >= self.max_seconds:
            self._stop(state, "max_seconds")

    def _pending_reserve(self) -> float:
        """Reserved FLOPs not yet spent (e.g. SWA's BatchNorm recompute still to come)."""
        if not self.plan.reserved_flops:
            return 0.0
        spent = sum(int(getattr(s, "extra_forward_samples", 0)) for s in self.extra_sources)
        return 0.0 if spent else self.plan.reserved_flops

    def _stop(self, state: State, reason: str) -> None:
        if self.ledger.stop_reason is None:
            self.ledger.stop_reason = reason
        state.stop_training()

    # -- lifecycle --------------------------------------------------------
    def fit_start(self, state: State, logger: Logger) -> None:
        self._t0 = time.perf_counter()

    def fit_end(self, state: State, logger: Logger) -> None:
        if self._counter is not None:  # training ended inside a batch
            self._counter.__exit__(None, None, None)
            self._counter = None
        self._charge_extra_forward()  # e.g. SWA's BatchNorm recompute at the end of training
        if self.ledger.stop_reason is None:
            self.ledger.stop_reason = self.plan.binding_cap

    def state_dict(self) -> dict[str, Any]:
        return {"ledger": asdict(self.ledger)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ledger = BudgetLedger(**state["ledger"])
        self.ledger.stop_reason = None  # a resumed run decides afresh why it ends
        self._seconds_before = self.ledger.train_seconds


def swa_reserve_flops(bn_update_batches: int, batch_size: int, forward_per_sample: float,
                      world_size: int = 1) -> float:
    """FLOPs SWA's BatchNorm recompute will spend (forward passes over training batches)."""
    return bn_update_batches * batch_size * forward_per_sample * world_size


def progressive_resizing_cost_factor(initial_scale: float = 0.5, delay_fraction: float = 0.5,
                                     finetune_fraction: float = 0.2, **_: Any) -> float:
    """Mean step cost relative to full size under Composer's progressive-resizing schedule.

    FLOPs of a conv net scale with pixels (scale^2): initial scale for `delay_fraction` of
    training, a linear ramp to 1, then full size for `finetune_fraction`.
    """
    s0 = min(max(initial_scale, 0.0), 1.0)
    ramp = max(0.0, 1.0 - delay_fraction - finetune_fraction)
    ramp_mean = (s0 * s0 + s0 + 1.0) / 3.0  # mean of s^2 for s linear from s0 to 1
    return delay_fraction * s0 * s0 + ramp * ramp_mean + finetune_fraction

