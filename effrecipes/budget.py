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
from composer.core import Callback, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from effrecipes.ranks import any_ranks, sum_over_ranks
from effrecipes.rundir import StopReason


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


def forward_flops_per_sample(model: nn.Module, sample_shape: tuple[int, ...], batch: int = 2) -> float:
    """Inference FLOPs for one image (eval mode, no grad), measured on `batch` images (some
    layers, such as ghost BatchNorm, refuse batches smaller than their own)."""
    probe = copy.deepcopy(model).eval()
    x = torch.zeros((batch, *sample_shape))
    with torch.no_grad():
        return count_flops(lambda: probe(x)) / batch


def fvcore_forward_macs_per_sample(model: nn.Module, sample_shape: tuple[int, ...],
                                   batch: int = 1) -> Optional[float]:
    """fvcore's count (1 per multiply-add, forward): an independent second opinion."""
    try:
        from fvcore.nn import FlopCountAnalysis  # lazy: heavy, optional (see below)
    except ImportError:  # optional: the device image for benchmarks/gpu.py has no fvcore
        return None
    probe = copy.deepcopy(model).eval()
    analysis = FlopCountAnalysis(probe, torch.zeros((batch, *sample_shape)))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return float(analysis.total()) / batch


def train_step_flops(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor],
                     batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """FLOPs of one forward + loss + backward pass on a copy of the model."""
    probe = copy.deepcopy(model).train()
    x, y = batch

    def step() -> None:
        out = probe(x)
        loss_fn(out, y).backward()

    return float(count_flops(step))


@dataclass(frozen=True)
class AlgoCost:
    """What an algorithm does to the cost of a training step, declared by its registry entry
    (`effrecipes.algorithms`), so the budget and the runner never test an algorithm's name.

    The budget counts real FLOPs; these declarations only say when counting must be repeated
    (`varies`), how large the next step can be (`max_passes`, `scoring_forwards`, `may_grow`) and
    how many steps the cap is expected to buy (`passes`, `mean_factor`), which sets the schedule's
    first horizon before real costs are known.
    """

    passes: float = 1.0            # mean forward+backward passes per step (SAM every n steps: 1 + 1/n)
    max_passes: float = 1.0        # passes on the most expensive step (SAM: 2)
    scoring_forwards: float = 0.0  # extra forward passes over the whole batch on a step (selective backprop)
    mean_factor: float = 1.0       # expected mean cost of a pass / a full-size pass (resizing, ColOut, ...)
    varies: bool = False           # the cost of a step changes during training: count every step
    may_grow: bool = False         # the next step may cost more than the last one
    keyed: bool = False            # the cost changes, but the algorithm names each step's cost class
    #                                before its batch is loaded (`step_cost_key`): count once per class

    @staticmethod
    def combine(costs: "list[AlgoCost]") -> "AlgoCost":
        """Several algorithms together: passes and size factors multiply, extra passes add."""
        out = AlgoCost()
        for c in costs:
            out = AlgoCost(passes=out.passes * c.passes, max_passes=out.max_passes * c.max_passes,
                           scoring_forwards=out.scoring_forwards + c.scoring_forwards,
                           mean_factor=out.mean_factor * c.mean_factor,
                           varies=out.varies or c.varies, may_grow=out.may_grow or c.may_grow,
                           keyed=out.keyed or c.keyed)
        return out


@dataclass
class BudgetPlan:
    """What one step costs, and how many steps the caps are expected to afford.

    `planned_batches` is an estimate for a run whose step cost varies; the run itself ends when
    the next step would cross the cap (`FlopBudget`), and Composer's duration is re-projected
    every step so that schedules end where the run ends.
    """

    flops_cap: Optional[float]
    step_flops: float                 # the most expensive step, all ranks (global batch)
    mean_step_flops: float            # the expected mean step, all ranks
    train_flops_per_sample: float     # step_flops / global batch
    forward_flops_per_sample: float   # inference, eval mode
    fvcore_forward_macs_per_sample: Optional[float]
    global_batch_size: int
    batches_per_epoch: int
    planned_batches: int
    planned_epochs: float
    binding_cap: str                  # flops | max_epochs | max_seconds (the cap expected to bind)
    max_epoch_batches: Optional[int] = None   # the max_epochs cap in batches
    cost: AlgoCost = field(default_factory=AlgoCost)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_budget(*, flops_cap: Optional[float], max_epochs: Optional[float],
                max_seconds: Optional[float], pass_flops: float, forward_flops_per_sample: float,
                fvcore_macs: Optional[float], global_batch_size: int, batches_per_epoch: int,
                cost: AlgoCost = AlgoCost()) -> BudgetPlan:
    """Turn the caps into an expected number of batches (exact when the step cost is fixed).

    `pass_flops` is one measured forward+backward pass over a full-size global batch; the cost
    model turns it into the most expensive step (the stop rule's bound) and the expected mean.
    """
    if batches_per_epoch < 1:
        raise ValueError("the training set is smaller than one batch")
    scoring = cost.scoring_forwards * forward_flops_per_sample * global_batch_size
    step = pass_flops * cost.max_passes + scoring
    mean = pass_flops * cost.passes * cost.mean_factor + scoring
    candidates: list[tuple[float, str]] = []
    if flops_cap is not None:
        candidates.append((math.floor(flops_cap / mean * (1 + 1e-12)), "flops"))
    epoch_batches = None
    if max_epochs is not None:
        epoch_batches = math.floor(max_epochs * batches_per_epoch)
        candidates.append((epoch_batches, "max_epochs"))
    if not candidates:  # only max_seconds: plan "as many as fit", stop on time
        candidates.append((10**12, "max_seconds"))
    batches, binding = min(candidates, key=lambda c: c[0])
    batches = int(batches)
    return BudgetPlan(flops_cap=flops_cap, step_flops=step, mean_step_flops=mean,
                      train_flops_per_sample=step / global_batch_size,
                      forward_flops_per_sample=forward_flops_per_sample,
                      fvcore_forward_macs_per_sample=fvcore_macs,
                      global_batch_size=global_batch_size, batches_per_epoch=batches_per_epoch,
                      planned_batches=batches, planned_epochs=batches / batches_per_epoch,
                      binding_cap=binding, max_epoch_batches=epoch_batches, cost=cost)


@dataclass
class BudgetLedger:
    """What has been spent; saved with checkpoints so a resumed run carries it over."""

    flops_used: float = 0.0
    batches: int = 0
    samples: int = 0
    extra_flops: float = 0.0          # training work outside the steps (SWA's BatchNorm recompute)
    eval_flops: float = 0.0
    measured_step_flops: dict[str, float] = field(default_factory=dict)  # shape -> per-sample
    max_step_flops: float = 0.0       # the most expensive step charged so far
    reserve_unspent: float = 0.0      # held back for work still to come that cost less in the end
    stop_reason: Optional[StopReason] = None
    train_seconds: float = 0.0

    def as_plain(self) -> dict[str, Any]:
        """Plain data for checkpoints (loadable with torch's safe unpickler)."""
        return {**asdict(self), "stop_reason": None if self.stop_reason is None else str(self.stop_reason)}


class FlopBudget(Callback):
    """Charges all training work, stops before the cap, and keeps Composer's duration honest.

    Counting: a `FlopCounterMode` window opens at BEFORE_DATALOADER (so work an algorithm starts
    right after loading, such as selective backprop's scoring pass, is inside it) and closes at
    BATCH_END (after SAM's second pass and the optimizer step). A step whose cost is fixed is
    counted on the first batch of each input shape and charged from that cache afterwards, so the
    counter costs nothing per batch; when the cost model says the cost varies, every step is
    counted. An algorithm whose cost changes in a way it can name before the batch is loaded
    (`AlgoCost.keyed`: layer freezing's frozen set, SAM's two-pass steps, selective backprop's
    plain steps) is cached per input shape and that name instead, and only the steps it cannot
    name are counted. Algorithms that train outside the steps (SWA's BatchNorm recompute) measure that
    work themselves and expose it as `extra_train_flops`; it is charged as it happens.

    Stop rule: at BATCH_END, training stops when the next step could cross the cap — the next
    step is bounded by the last one, or by the most expensive step when the cost may grow — with
    FLOPs an algorithm still has to spend (`pending_train_flops()`) held back. Evaluation is
    never charged.

    Duration: Composer's `max_duration` (which LR schedules, SWA, progressive resizing and layer
    freezing read as "dur") is re-projected after every step as the batches done plus the batches
    the remaining FLOPs buy at the recent mean step cost, so one "dur" is the whole cap.

    Algorithm protocol (duck-typed, all optional): `extra_train_flops` (float, cumulative),
    `pending_train_flops() -> float`, `bind_budget(budget)`, `finish_training(state)` (called once
    when a cap ends the run, never on an interruption or divergence), `step_cost_key(state) ->
    Optional[str]` (at BEFORE_DATALOADER: a name for the coming step's cost class, the same name
    only for steps of the same cost at the same input shape; None when the step must be counted).
    """

    RECENT = 8  # steps in the running mean that projects the remaining batches

    def __init__(self, plan: BudgetPlan, *, max_seconds: Optional[float] = None,
                 algorithms: tuple[Any, ...] = (), ledger: Optional[BudgetLedger] = None) -> None:
        self.plan = plan
        self.max_seconds = max_seconds
        self.algorithms = tuple(algorithms)
        self.ledger = ledger or BudgetLedger()
        self._counter: Optional[FlopCounterMode] = None
        self._extra_at_open = 0.0
        self._extra_charged = 0.0
        self._recent: list[float] = []
        self._t0 = 0.0
        self._seconds_before = self.ledger.train_seconds
        self._batch_size = 0
        self._shape_key = ""
        self._step_key: Optional[str] = ""
        self.projected_batches = plan.planned_batches
        self._resumed_horizon: Optional[int] = None
        self._pending_at_stop: Optional[tuple[float, float]] = None
        self._step_in_flight = False  # a batch was loaded and its step is not charged yet
        # bound now, so an algorithm that works at FIT_START (before this callback's fit_start,
        # algorithms run first) already sees the cap: whiten_stem's patch statistics
        for algo in self.algorithms:
            if hasattr(algo, "bind_budget"):
                algo.bind_budget(self)

    # -- what algorithms report -------------------------------------------
    def progress(self) -> float:
        """The share of the binding cap spent (0..1): the largest of FLOPs / cap, batches / the
        max_epochs cap and seconds / max_seconds."""
        shares = [0.0]
        if self.plan.flops_cap:
            shares.append(self.ledger.flops_used / self.plan.flops_cap)
        if self.plan.max_epoch_batches:
            shares.append(self.ledger.batches / self.plan.max_epoch_batches)
        if self.max_seconds:
            shares.append(self.ledger.train_seconds / self.max_seconds)
        return min(1.0, max(shares))

    def _extra_total(self) -> float:
        return float(sum(getattr(a, "extra_train_flops", 0.0) for a in self.algorithms))

    def pending_flops(self) -> float:
        """FLOPs algorithms will still spend on training (held back from the cap)."""
        return float(sum(a.pending_train_flops() for a in self.algorithms
                         if hasattr(a, "pending_train_flops")))

    def remaining_flops(self) -> float:
        """FLOPs left under the cap (inf without one)."""
        cap = self.plan.flops_cap
        return math.inf if cap is None else cap - self.ledger.flops_used

    def room_for_extra_flops(self) -> float:
        """What an algorithm may spend now: the FLOPs left, less the step in flight (loaded, not yet
        charged: algorithms run before this callback at BATCH_END), bounded by the dearest step."""
        return self.remaining_flops() - (self.plan.step_flops if self._step_in_flight else 0.0)

    def _charge_extra(self) -> None:
        total = self._extra_total()
        new = total - self._extra_charged
        if new > 0:
            self.ledger.flops_used += new
            self.ledger.extra_flops += new
        self._extra_charged = total

    # -- counting window --------------------------------------------------
    def _close_window(self) -> Optional[float]:
        if self._counter is None:
            return None
        self._counter.__exit__(None, None, None)
        total = float(self._counter.get_total_flops())
        self._counter = None
        return total - (self._extra_total() - self._extra_at_open)  # extras are charged apart

    def _open_window(self) -> None:
        self._extra_at_open = self._extra_total()
        self._counter = flop_counter_mode()
        self._counter.__enter__()

    def cost_key(self, shape: str) -> Optional[str]:
        """The cache key of the coming step's cost: the input shape and the algorithms' names for
        its cost class; None when the step must be counted."""
        return None if self._step_key is None else shape + self._step_key

    def _name_step(self, state: State) -> Optional[str]:
        """The algorithms' names for the coming step's cost class ('' when the cost is fixed)."""
        if self.plan.cost.varies:
            return None
        if not self.plan.cost.keyed:
            return ""
        parts = []
        for algo in self.algorithms:
            name = getattr(algo, "step_cost_key", None)
            part = name(state) if name is not None else ""
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)

    def _known(self, shape: str) -> bool:
        key = self.cost_key(shape)
        return key is not None and key in self.ledger.measured_step_flops

    def before_dataloader(self, state: State, logger: Logger) -> None:
        self._close_window()  # a batch Composer skipped (resume spins the loader): nothing trained
        self._step_key = self._name_step(state)
        if not self._known(self._shape_key):
            self._open_window()

    def after_dataloader(self, state: State, logger: Logger) -> None:
        x = state.batch_get_item(0)
        self._batch_size = int(x.shape[0])
        self._step_in_flight = True
        self._shape_key = "x".join(str(d) for d in x.shape[1:])
        if self._counter is None and not self._known(self._shape_key):
            self._open_window()  # a new input shape on a cached run: nothing trained yet

    def batch_end(self, state: State, logger: Logger) -> None:
        world = dist.get_world_size()
        n = self._batch_size
        local = self._close_window()
        self._step_in_flight = False
        key = self.cost_key(self._shape_key)
        if local is not None:  # counted (an unnamed step is kept for the report only, never reused)
            # every rank counts the same steps (the keys are rank-independent); their FLOPs may
            # differ (stochastic depth draws per rank), so data-parallel runs charge their sum
            cost = sum_over_ranks(local, state.device)
            report_key = key if key is not None else f"{self._shape_key} (last counted step)"
            self.ledger.measured_step_flops[report_key] = cost / max(n * world, 1)
        else:  # not counted: only a named step whose cost is known is left uncounted
            assert key is not None
            cost = self.ledger.measured_step_flops[key] * n * world
        self.ledger.max_step_flops = max(self.ledger.max_step_flops, cost)
        self.ledger.flops_used += cost
        self.ledger.batches += 1
        self.ledger.samples += n * world
        self._charge_extra()
        self._recent = (self._recent + [cost])[-self.RECENT:]
        self.ledger.train_seconds = self._seconds_before + (time.perf_counter() - self._t0)
        logger.log_metrics({"flops_used": self.ledger.flops_used})  # history.csv's name
        self._decide(state, cost)

    def epoch_end(self, state: State, logger: Logger) -> None:
        # The window opened for a batch the exhausted loader never gave: nothing trained in it
        # (SWA's epoch-end work inside it reports itself as extra_train_flops).
        self._close_window()
        self._charge_extra()

    # -- stop rule and duration -------------------------------------------
    def next_step_bound(self, last_cost: float) -> float:
        """The most the next step can cost."""
        if self.plan.cost.may_grow:
            return max(last_cost, self.plan.step_flops, self.ledger.max_step_flops)
        return last_cost

    def _decide(self, state: State, last_cost: float) -> None:
        if self.ledger.stop_reason is not None:  # already stopping (interrupted, diverged)
            return
        cap = self.plan.flops_cap
        pending = self.pending_flops()
        flops_stop = (cap is not None
                      and self.ledger.flops_used + self.next_step_bound(last_cost) + pending > cap)
        time_stop = self.max_seconds is not None and self.ledger.train_seconds >= self.max_seconds
        # each rank decides on its own ledger and clock: the ranks agree (one collective, only with
        # several ranks), or one that stopped would leave the others waiting for it forever
        flops_stop, time_stop = any_ranks((flops_stop, time_stop), state.device)
        if flops_stop:
            self._stop(state, StopReason.FLOPS)
            self._pending_at_stop = (pending, self.ledger.flops_used)
            return
        if time_stop:
            self._stop(state, StopReason.MAX_SECONDS)
            return
        self._project(state, pending)

    def _project(self, state: State, pending: float) -> None:
        """Set Composer's max_duration to the batches done plus those the rest of the cap buys."""
        done = self.ledger.batches
        horizon = self.plan.planned_batches
        if self.plan.flops_cap is not None and self._recent:
            mean = sum(self._recent) / len(self._recent)
            left = (self.plan.flops_cap - self.ledger.flops_used - pending) / mean
            horizon = done + max(1, math.floor(left * (1 + 1e-12)))
        if self.plan.max_epoch_batches is not None:
            horizon = min(horizon, self.plan.max_epoch_batches)
        if self.plan.flops_cap is None and self.plan.max_epoch_batches is None:
            return  # only max_seconds: nothing to project
        if horizon != self.projected_batches:
            self.projected_batches = horizon
            state.max_duration = Time(horizon, TimeUnit.BATCH)

    def _stop(self, state: State, reason: StopReason) -> None:
        if self.ledger.stop_reason is None:
            self.ledger.stop_reason = reason
        state.stop_training()

    # -- lifecycle --------------------------------------------------------
    def fit_start(self, state: State, logger: Logger) -> None:
        self._t0 = time.perf_counter()
        self._charge_extra()  # work algorithms did at FIT_START (whiten_stem's statistics)
        if self._resumed_horizon is not None:  # where the interrupted run had projected its end
            self.projected_batches = int(self._resumed_horizon)
            state.max_duration = Time(self.projected_batches, TimeUnit.BATCH)
        elif state.max_duration is not None:
            self.projected_batches = int(state.max_duration.value)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._close_window()
        if self.ledger.stop_reason is None:
            epochs = self.plan.max_epoch_batches
            self.ledger.stop_reason = (StopReason.MAX_EPOCHS if epochs is not None
                                       and self.ledger.batches >= epochs
                                       else StopReason(self.plan.binding_cap))
        if StopReason(self.ledger.stop_reason).is_cap:
            for algo in self.algorithms:
                if hasattr(algo, "finish_training"):
                    algo.finish_training(state)
        self._charge_extra()
        if self._pending_at_stop is not None:  # e.g. SWA's recompute under stochastic depth
            pending, used = self._pending_at_stop
            self.ledger.reserve_unspent = max(0.0, pending - (self.ledger.flops_used - used))
        self.ledger.train_seconds = self._seconds_before + (time.perf_counter() - self._t0)

    def state_dict(self) -> dict[str, Any]:
        return {"ledger": self.ledger.as_plain(), "recent": list(self._recent),
                "projected_batches": self.projected_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ledger = BudgetLedger(**state["ledger"])
        self.ledger.stop_reason = None  # a resumed run decides afresh why it ends
        self._recent = list(state.get("recent", []))
        self._resumed_horizon = state.get("projected_batches")
        self._seconds_before = self.ledger.train_seconds
