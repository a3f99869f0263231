"""Composer's image-classification algorithms, by snake_case name.

Each entry maps a recipe name to a Composer `Algorithm` class (two are thin subclasses that fix
known pitfalls, see `PerImageCutOut` and `SWAWithBNUpdate`). Entries also say what an algorithm
changes, so a run can report — or, with `strict: true`, refuse — an algorithm that changes nothing
(e.g. SqueezeExcite with its default `min_channels=128` on a 16-channel model).

Composer algorithms deliberately not registered (they do not apply to CNN image classification):
alibi, gated_linear_units, seq_length_warmup (language models), low_precision_layernorm /
low_precision_groupnorm (GPU autocast norm layers), no_op_model (a test helper).
"""
from __future__ import annotations

import copy
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import composer.functional as cf
import torch
from composer.algorithms import (EMA, SAM, SWA, AugMix, BlurPool, ChannelsLast, ColOut, CutMix,
                                 CutOut, Factorize, GhostBatchNorm, GradientClipping, GyroDropout,
                                 LabelSmoothing, LayerFreezing, MixUp, ProgressiveResizing,
                                 RandAugment, SelectiveBackprop, SqueezeExcite, StochasticDepth,
                                 WeightStandardization)
from composer.algorithms.cutout.cutout import cutout_batch
from composer.algorithms.ghost_batchnorm.ghost_batchnorm import _GhostBatchNorm as GhostBatchNormBase
from composer.core import Algorithm, Event, State
from composer.loggers import Logger
from torch import nn

from effrecipes.algorithm_args import check_args
from effrecipes.budget import AlgoCost, count_flops
from effrecipes.models import network_of
from effrecipes.ranks import sum_over_ranks
from effrecipes.errors import RecipeError
from effrecipes.registry import algorithms
from effrecipes import whitening
from effrecipes.whitening import WhitenStem

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- fixed algorithms

class PerImageCutOut(CutOut):
    """CutOut with an independent square per image.

    Composer's `CutOut` cuts the *same* square from every image of a batch; the CutOut paper
    (and paper 004, "random masks of 10x10 pixels") sample one per image. `length` may be a
    fraction of the image side (< 1, as in Composer) or a size in pixels (>= 1, as in the paper).
    """

    def __init__(self, num_holes: int = 1, length: float = 0.5, uniform_sampling: bool = False,
                 per_image: bool = True) -> None:
        if num_holes < 0:
            raise ValueError("num_holes must be >= 0")
        if length < 0:
            raise ValueError("length must be >= 0 (a fraction < 1 or pixels >= 1)")
        super().__init__(num_holes=num_holes, length=length if length < 1 else 0.5,
                         uniform_sampling=uniform_sampling)
        self.length = length
        self.per_image = per_image

    def side(self, h: int, w: int) -> int:
        return int(self.length) if self.length >= 1 else int(min(h, w) * self.length)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        x = state.batch_get_item(self.input_key)
        state.batch_set_item(self.input_key, self.cut(x))

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """Zero `num_holes` squares per image (vectorised; centres may fall near the border)."""
        n, _, h, w = x.shape
        side = self.side(h, w)
        if side <= 0 or self.num_holes <= 0:
            return x
        if not self.per_image:
            return cutout_batch(x, self.num_holes, side / min(h, w), self.uniform_sampling)
        keep = torch.ones(n, 1, h, w, dtype=x.dtype, device=x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        for _ in range(self.num_holes):
            if self.uniform_sampling:
                cy = torch.randint(-side // 2, h + side // 2, (n, 1, 1), device=x.device)
                cx = torch.randint(-side // 2, w + side // 2, (n, 1, 1), device=x.device)
            else:
                cy = torch.randint(0, h, (n, 1, 1), device=x.device)
                cx = torch.randint(0, w, (n, 1, 1), device=x.device)
            y0, x0 = cy - side // 2, cx - side // 2
            hole = (ys >= y0) & (ys < y0 + side) & (xs >= x0) & (xs < x0 + side)
            keep = keep * (~hole).unsqueeze(1).to(x.dtype)
        return x * keep


class FinalEMA(EMA):
    """Composer's EMA validates with the averaged weights but leaves the training weights in the
    model after fit, so the test, the checkpoint and the latency would measure weights that were
    never validated. The average is swapped in at FIT_END and kept through the evaluation Composer
    runs after it, as Composer itself does for checkpoints (a resumed run swaps the training
    weights back at its first BATCH_START)."""

    _fit_ended = False  # not saved: a resumed fit starts with the training weights

    def match(self, event: Event, state: State) -> bool:
        return (event == Event.FIT_END and self.ema_started) or super().match(event, state)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.FIT_END:
            self._fit_ended = True
            self._ensure_ema_weights_active(state)
            return
        if event == Event.EVAL_END and self._fit_ended:
            return  # Composer's evaluation after FIT_END must not swap the training weights back
        super().apply(event, state, logger)


class SWAWithBNUpdate(SWA):
    """SWA that recomputes BatchNorm statistics after swapping in the averaged weights, and swaps
    at the end of a run that a cap stopped mid-epoch.

    Composer's SWA copies BatchNorm buffers from the moment averaging began; when `swa_end` falls
    at the end of training (always the case on short runs with `update_interval` in epochs) the
    averaged model keeps stale statistics and accuracy can collapse to chance. After the swap we
    run up to `bn_update_batches` training batches forward (no gradients) through
    `torch.optim.swa_utils.update_bn`.

    Budget protocol (see `effrecipes.budget.FlopBudget`): the recompute is training compute, so
    it is counted here (`extra_train_flops`), held back from the cap while averaging is under way
    (`pending_train_flops`), and limited to what the cap still allows. The end-of-run swap
    (`finish_training`) is called by the budget only when a cap ended the run: an interrupted run
    keeps averaging when it is resumed.
    """

    def __init__(self, swa_start: str = "0.75dur", swa_end: str = "0.97dur",
                 update_interval: str = "1ep", schedule_swa_lr: bool = False,
                 anneal_strategy: str = "linear", anneal_steps: int = 10,
                 swa_lr: Optional[float] = None, bn_update_batches: int = 16) -> None:
        super().__init__(swa_start=swa_start, swa_end=swa_end, update_interval=update_interval,
                         schedule_swa_lr=schedule_swa_lr, anneal_strategy=anneal_strategy,
                         anneal_steps=anneal_steps, swa_lr=swa_lr)
        if bn_update_batches < 0:
            raise ValueError("bn_update_batches must be >= 0")
        self.bn_update_batches = bn_update_batches
        self.extra_train_flops = 0.0
        self.bn_updated = False
        self.end_warning: Optional[str] = None  # said to the user when the run ends
        self._bn_batches_wanted = bn_update_batches
        self._budget: Any = None

    # -- budget protocol ---------------------------------------------------
    def bind_budget(self, budget: Any) -> None:
        self._budget = budget

    def _bn_batch_flops(self) -> float:
        plan = self._budget.plan
        return plan.forward_flops_per_sample * plan.global_batch_size

    def pending_train_flops(self) -> float:
        """The recompute still to come while averaging is under way (0 before it starts)."""
        if self._budget is None or not self.swa_started or self.swa_completed:
            return 0.0
        return min(self._bn_batches_wanted, self._budget.plan.batches_per_epoch) * self._bn_batch_flops()

    def finish_training(self, state: State) -> None:
        """A budget stops training mid-epoch, so the EPOCH_END at which Composer would swap in the
        average may never come: swap here instead, so SWA is never silently a no-op."""
        if self.swa_completed:
            return
        if not self.swa_started or self.swa_model is None:
            self.end_warning = (f"algorithm swa changed nothing: training ended before "
                                f"swa_start={self.swa_start}")
            return
        state.model.load_state_dict(self.swa_model.module.state_dict())  # type: ignore[union-attr]
        self.swa_completed = True
        log.info("SWA: swapped in the averaged weights at the end of training")
        self._update_bn(state)

    # -- Composer's events -------------------------------------------------
    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:  # after surgery algorithms listed before this one
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in state.model.modules())
            self._bn_batches_wanted = self.bn_update_batches if has_bn else 0
        was_completed = self.swa_completed
        super().apply(event, state, logger)
        if self.swa_completed and not was_completed:
            self._update_bn(state)

    def _update_bn(self, state: State) -> None:
        """Recompute BatchNorm statistics over up to `bn_update_batches` training batches (at most
        one epoch, and no more than the FLOP cap still allows: a swap at BATCH_END comes before the
        budget charges that batch's step, which the room leaves out)."""
        loader = state.train_dataloader
        allowed = min(self._bn_batches_wanted, len(loader) if loader is not None else 0)
        if allowed and self._budget is not None and self._bn_batch_flops() > 0:
            room = self._budget.room_for_extra_flops()
            allowed = min(allowed, max(0, int(room // self._bn_batch_flops())))
            if allowed < 1:
                self.end_warning = ("swa: the FLOP cap left no room to recompute BatchNorm "
                                    "statistics; the averaged weights keep stale ones")
        if allowed < 1 or loader is None:
            return
        batches = []
        for i, batch in enumerate(loader):
            if i >= allowed:
                break
            batches.append(batch[0] if isinstance(batch, (tuple, list)) else batch)
        net = network_of(state.model)
        # the batches of a per-sample loader are still on the host when the model is on a GPU
        device = next(net.parameters()).device
        flops = count_flops(lambda: torch.optim.swa_utils.update_bn(batches, net, device=device))
        # every rank recomputes its own share (stochastic depth skips differ by rank): charge the sum
        self.extra_train_flops += sum_over_ranks(flops, state.device)
        self.bn_updated = True
        log.info("SWA: recomputed BatchNorm statistics over %d batches", len(batches))


class ResumableSAM(SAM):
    """SAM that resumes exactly.

    Composer's `SAMOptimizer` decides on every `interval`-th step (its `global_step`) to run the
    second pass, and its state_dict holds only SAM's own perturbations, not the wrapped
    optimizer's (SGD's momentum buffers). A resumed run restarted the counter at 0 (with
    `interval: 2` the steps that run SAM flipped, so it spent different FLOPs) and lost the
    momentum. Both are saved with the algorithm and put back on the optimizers SAM wraps after
    the checkpoint is loaded (AFTER_LOAD).
    """

    def __init__(self, rho: float = 0.05, epsilon: float = 1.0e-12, interval: int = 1) -> None:
        super().__init__(rho=rho, epsilon=epsilon, interval=interval)
        self._loaded: dict[str, Any] = {}
        self._optimizers: tuple[Any, ...] = ()

    def apply(self, event: Event, state: State, logger: Optional[Logger]) -> Optional[int]:
        out = super().apply(event, state, logger)
        self._optimizers = tuple(state.optimizers)
        for i, opt in enumerate(self._optimizers):
            opt.global_step = self._loaded.get("global_step", 0)
            if i < len(self._loaded.get("base_optimizers", ())):
                opt.base_optimizer.load_state_dict(self._loaded["base_optimizers"][i])
        return out

    def step_cost_key(self, state: State) -> str:
        """Names the coming step for the FLOP budget: SAMOptimizer runs its second pass when
        `(global_step + 1) % interval == 0` (a step whose loss is exactly 0 skips it, and is then
        charged a pass it did not run: the budget errs below the cap, never above it)."""
        step = int(getattr(state.optimizers[0], "global_step", 0))
        return " 2 passes" if (step + 1) % self.interval == 0 else ""

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(),
                "global_step": int(self._optimizers[0].global_step) if self._optimizers else 0,
                "base_optimizers": [opt.base_optimizer.state_dict() for opt in self._optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loaded = dict(state)


class KeyedLayerFreezing(LayerFreezing):
    """Composer's LayerFreezing, naming each step's cost class for the FLOP budget.

    Composer freezes layers only at epoch ends, so within an epoch every step costs the same: the
    frozen set names the cost (`step_cost_key`), and the budget counts one step per set instead
    of every step (a counted step runs about twice as slowly on a small CPU model)."""

    def step_cost_key(self, state: State) -> str:
        mask = 0
        for i, p in enumerate(state.model.parameters()):
            if not p.requires_grad:
                mask |= 1 << i
        return f" frozen:{mask:x}" if mask else ""


class KeyedSelectiveBackprop(SelectiveBackprop):
    """Composer's SelectiveBackprop, telling the FLOP budget in advance which steps it acts on.

    It decides at AFTER_DATALOADER from the elapsed duration and the batch index, both already
    fixed at BEFORE_DATALOADER: a step it will act on (a scoring pass over the whole batch, then
    training on part of it) is counted; the other steps are plain and charged from the cache."""

    def step_cost_key(self, state: State) -> Optional[str]:
        return None if self.match(Event.AFTER_DATALOADER, state) else ""


# --------------------------------------------------------------------------- registry entries

@dataclass(frozen=True)
class AlgoInfo:
    """How an algorithm acts, for dry-run reports and no-op detection."""

    acts_on: str                       # model | batch | loss | optimizer | weights | data | schedule
    surgery: Optional[Callable[..., None]] = None   # functional form applied to a model copy
    defaults: Optional[dict[str, Any]] = None       # our defaults where they differ from Composer's
    noop: Optional[Callable[[dict[str, Any]], Optional[str]]] = None  # kwargs -> reason if no-op
    cost: Callable[[dict[str, Any]], AlgoCost] = lambda kw: AlgoCost()  # effective kwargs -> cost
    worst_case: Optional[Callable[[nn.Module], None]] = None  # puts a surgered copy in its dearest state
    dataset_transform: bool = False    # needs the per-sample (VisionDataset) data path
    # (model, effective kwargs) -> (what it will change, why it changes nothing), for an algorithm
    # whose change a module comparison cannot see (it sets weights when training starts)
    describe: Optional[Callable[[nn.Module, dict[str, Any]], tuple[list[str], Optional[str]]]] = None
    # runs after every other algorithm of the recipe: it sets or freezes a layer that another
    # algorithm's surgery at INIT (Composer runs INIT in list order) could replace
    acts_last: bool = False


# --------------------------------------------------------------------------- cost models
# What each algorithm does to the cost of training (effective constructor kwargs in, AlgoCost
# out). Everything here is a declaration for the budget: it still counts real FLOPs.

def _sam_cost(kw: dict[str, Any]) -> AlgoCost:
    """Two forward+backward passes on every `interval`-th step, one on the others; the
    algorithm names which one is coming (`ResumableSAM.step_cost_key`)."""
    n = max(int(kw["interval"]), 1)
    return AlgoCost(passes=1 + 1 / n, max_passes=2.0, keyed=n > 1, may_grow=n > 1)


def _selective_backprop_cost(kw: dict[str, Any]) -> AlgoCost:
    """Between `start` and `end`, selective backprop scores the whole batch with a forward pass
    (AFTER_DATALOADER) and trains on the `keep` fraction with the highest loss, except on every
    `interrupt`-th step (0: never interrupted), which trains normally."""
    n = int(kw["interrupt"])
    share = 1.0 if n == 0 else (n - 1) / n
    active = max(0.0, min(1.0, kw["end"]) - max(0.0, kw["start"])) * share
    return AlgoCost(mean_factor=1 - active + active * kw["keep"], scoring_forwards=1.0,
                    keyed=True, may_grow=True)


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


def _progressive_resizing_cost(kw: dict[str, Any]) -> AlgoCost:
    """Images grow during training: each new input shape is counted once, steps grow."""
    return AlgoCost(mean_factor=progressive_resizing_cost_factor(**kw), may_grow=True)


def _colout_cost(kw: dict[str, Any]) -> AlgoCost:
    """A fixed number of rows and columns dropped per batch: one smaller input shape."""
    return AlgoCost(mean_factor=(1 - kw["p_row"]) * (1 - kw["p_col"]) if kw.get("batch", True) else 1.0)


def _layer_freezing_cost(kw: dict[str, Any]) -> AlgoCost:
    """Frozen layers skip their weight gradients (a frozen prefix its input gradients too): steps
    only get cheaper, never dearer, and only when Composer freezes more layers (at epoch ends), so
    the budget counts one step per frozen set (`KeyedLayerFreezing.step_cost_key`)."""
    return AlgoCost(keyed=True)


def _no_block_dropped(model: nn.Module) -> None:
    """The dearest step of stochastic depth skips no block."""
    for m in model.modules():
        if hasattr(m, "drop_rate"):
            m.drop_rate = torch.zeros_like(torch.as_tensor(m.drop_rate, dtype=torch.float32))


def _stochastic_depth_cost(kw: dict[str, Any]) -> AlgoCost:
    """'block' mode skips whole residual blocks at random: the step cost changes every step."""
    block = kw.get("stochastic_method") == "block" and kw.get("drop_rate", 0) > 0
    return AlgoCost(varies=block, may_grow=block)


def _whiten_stem_effect(model: nn.Module, kw: dict[str, Any]) -> tuple[list[str], Optional[str]]:
    reason = whitening.unsuitable(model)
    if reason is not None:
        return [], reason
    path, conv = whitening.first_conv(model)  # type: ignore[misc]
    return [f"{path}: {conv.out_channels} filters whitened from up to {kw['images']} training images"
            + (", frozen" if kw["freeze"] else "")], None


def _surgery(fn_name: str) -> Callable[..., None]:
    def apply(model: nn.Module, **kwargs: Any) -> None:
        fn = getattr(cf, fn_name)
        params = inspect.signature(fn).parameters
        fn(model, **{k: v for k, v in kwargs.items() if k in params})
    return apply


def _zero(key: str, what: str) -> Callable[[dict[str, Any]], Optional[str]]:
    return lambda kw: f"{key}={kw[key]} {what}" if key in kw and not kw[key] else None


_ALGOS: list[tuple[str, type, AlgoInfo, str]] = [
    ("augmix", AugMix, AlgoInfo("data", dataset_transform=True), "AugMix image augmentation"),
    ("blurpool", BlurPool, AlgoInfo("model", _surgery("apply_blurpool")),
     "anti-aliased downsampling: blur before strided convs / max-pools"),
    ("channels_last", ChannelsLast, AlgoInfo("model"), "NHWC memory format for convs"),
    ("colout", ColOut, AlgoInfo("batch", noop=lambda kw: "p_row=p_col=0 drops nothing"
                                if kw.get("p_row", 0.15) == 0 and kw.get("p_col", 0.15) == 0 else None,
                                cost=_colout_cost),
     "drop random rows and columns of images"),
    ("cutmix", CutMix, AlgoInfo("batch"), "paste a box from another image and mix labels"),
    ("cutout", PerImageCutOut, AlgoInfo("batch", noop=lambda kw: "length=0 or num_holes=0 cuts nothing"
                                        if kw.get("length", 0.5) == 0 or kw.get("num_holes", 1) == 0
                                        else None),
     "mask a random square per image (length: fraction <1 or pixels >=1)"),
    ("ema", FinalEMA, AlgoInfo("weights"), "exponential moving average of weights, validated, tested and saved"),
    ("factorize", Factorize, AlgoInfo("model", _surgery("apply_factorization")),
     "low-rank factorisation of large convs/linears"),
    ("ghost_batchnorm", GhostBatchNorm, AlgoInfo("model", _surgery("apply_ghost_batchnorm")),
     "BatchNorm over small ghost batches"),
    ("gradient_clipping", GradientClipping, AlgoInfo("optimizer"), "clip gradients (norm/value/adaptive)"),
    ("gyro_dropout", GyroDropout, AlgoInfo("model"), "replace Dropout with GyroDropout"),
    ("label_smoothing", LabelSmoothing, AlgoInfo("loss", noop=_zero("smoothing", "smooths nothing")),
     "smooth one-hot targets"),
    ("layer_freezing", KeyedLayerFreezing, AlgoInfo("optimizer", cost=_layer_freezing_cost),
     "progressively freeze early layers"),
    ("mixup", MixUp, AlgoInfo("batch", noop=_zero("alpha", "mixes nothing")),
     "mix pairs of images and their labels"),
    ("progressive_resizing", ProgressiveResizing,
     AlgoInfo("batch", cost=_progressive_resizing_cost,
              noop=lambda kw: "initial_scale=1 never resizes" if kw.get("initial_scale", 0.5) >= 1 else None),
     "train on smaller images first"),
    ("randaugment", RandAugment, AlgoInfo("data", dataset_transform=True), "RandAugment image augmentation"),
    ("sam", ResumableSAM, AlgoInfo("optimizer", noop=_zero("rho", "perturbs nothing"), cost=_sam_cost),
     "sharpness-aware minimisation (two passes per step)"),
    ("selective_backprop", KeyedSelectiveBackprop, AlgoInfo("batch", cost=_selective_backprop_cost,
                                                       noop=lambda kw: "keep=1 drops nothing"
                                                       if kw.get("keep", 0.5) >= 1 else None),
     "backprop only the highest-loss examples"),
    ("squeeze_excite", SqueezeExcite, AlgoInfo("model", _surgery("apply_squeeze_excite")),
     "squeeze-and-excitation after convs (set min_channels for small CNNs)"),
    ("stochastic_depth", StochasticDepth, AlgoInfo("model", _surgery("apply_stochastic_depth"),
                                                   cost=_stochastic_depth_cost,
                                                   worst_case=_no_block_dropped),
     "randomly skip residual blocks (ResNet bottlenecks)"),
    ("swa", SWAWithBNUpdate, AlgoInfo("weights"), "stochastic weight averaging (+ BatchNorm recompute)"),
    ("whiten_stem", WhitenStem, AlgoInfo("model", whitening.freeze_stem, describe=_whiten_stem_effect,
                                         acts_last=True),
     "first conv set to a whitening of the training images' patches (optionally frozen)"),
    ("weight_standardization", WeightStandardization,
     AlgoInfo("model", _surgery("apply_weight_standardization")), "standardise conv weights"),
]

for _name, _cls, _info, _desc in _ALGOS:
    algorithms.add(_name, _cls, description=_desc, info=_info)

# Pairs that must not be combined, with the reason.
CONFLICTS: dict[frozenset[str], str] = {
    frozenset({"mixup", "cutmix"}): "both replace the targets with mixed labels; use one",
    frozenset({"randaugment", "augmix"}): "both are full augmentation policies on the same images; use one",
    frozenset({"swa", "ema"}): "both replace the final weights with an average; use one",
    frozenset({"whiten_stem", "weight_standardization"}): "weight standardisation re-normalises "
    "(and parametrises) the stem's filters, so the whitening would be undone; use one",
}


def info(name: str) -> AlgoInfo:
    return algorithms.entry(name).info


def check_algorithm(name: str, kwargs: dict[str, Any], *, file: str = "<recipe>") -> None:
    """Unknown name or bad kwargs -> RecipeError naming `algorithms.<name>` and the valid choices."""
    algorithms.entry(name, field_path=f"algorithms.{name}", file=file)
    check_args(name, kwargs, file=file)  # types and ranges (effrecipes/algorithm_args.py)
    try:  # and the constructor's own checks, as a backstop
        build_algorithm(name, kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, NotImplementedError,
            ZeroDivisionError) as e:
        raise RecipeError(f"invalid arguments: {e}", file=file, field=f"algorithms.{name}") from None


def check_algorithm_conflicts(names: list[str], *, file: str = "<recipe>") -> None:
    for pair, why in CONFLICTS.items():
        if pair <= set(names):
            a, b = sorted(pair)
            raise RecipeError(f"{a} and {b} conflict: {why}", file=file, field="algorithms")


def cost_of(spec: list[dict[str, dict[str, Any]]]) -> AlgoCost:
    """The combined cost model of a recipe's algorithms (each declared in its registry entry)."""
    return AlgoCost.combine([info(name).cost(effective_kwargs(name, kw))
                             for item in spec for name, kw in item.items()])


# Composer warns at construction that SAM and SWA "have known issues" resuming from its own
# checkpoints; effrecipes' --resume of both is tested to end exactly like the uninterrupted run
# (tests/test_faults.py for SAM, tests/test_budget_exact.py for SWA), so the warning would only
# mislead (it was printed once per matrix cell). Filtered here, where every path (validation,
# planning, training) builds an algorithm.
_RESUME_WARNINGS = r"(SAM|SWA) has known issues"


def build_algorithm(name: str, kwargs: dict[str, Any]) -> Algorithm:
    entry = algorithms.entry(name)
    merged = {**(entry.info.defaults or {}), **kwargs}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RESUME_WARNINGS, category=UserWarning)
        return entry.builder(**merged)


def _in_run_order(spec: list[dict[str, dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
    """The recipe's order, with the algorithms that act last (`AlgoInfo.acts_last`: whiten_stem,
    whose frozen stem a later blurpool or factorize surgery would replace) moved to the end."""
    return sorted(spec, key=lambda item: any(info(name).acts_last for name in item))


def build_algorithms(spec: list[dict[str, dict[str, Any]]]) -> list[Algorithm]:
    return [build_algorithm(name, kw) for item in _in_run_order(spec) for name, kw in item.items()]


# --------------------------------------------------------------------------- what changed

def _module_signature(model: nn.Module) -> dict[str, tuple[str, frozenset[str]]]:
    """Module path -> (type name, public instance attributes): surgery either swaps a module's
    class or patches it in place (stochastic depth keeps torchvision's Bottleneck and adds
    `drop_rate` and a new `forward`)."""
    return {name: (type(m).__name__, frozenset(k for k in vars(m) if not k.startswith("_")))
            for name, m in model.named_modules()}


def _describe_change(old: tuple[str, frozenset[str]], new: tuple[str, frozenset[str]]) -> str:
    added = sorted(new[1] - old[1])
    return f"{old[0]} -> {new[0]}" + (f" (+{', '.join(added)})" if added else "")


def layer_changes(model: nn.Module, name: str, kwargs: dict[str, Any]) -> list[str]:
    """Apply one surgery algorithm to a copy of `model`; list the layers it added/replaced."""
    surgery = info(name).surgery
    if surgery is None:
        return []
    probe = copy.deepcopy(model)
    before = _module_signature(probe)
    surgery(probe, **kwargs)
    after = _module_signature(probe)
    changed = [f"{k}: {_describe_change(before[k], after[k])}" for k in before
               if k in after and before[k] != after[k]]
    added = [f"{k}: + {after[k][0]}" for k in after if k not in before]
    # report top-level changes only (a replaced module's children are implied)
    out: list[str] = []
    for item in changed + added:
        path = item.split(":")[0]
        if not any(path.startswith(p.split(":")[0] + ".") for p in out):
            out.append(item)
    if name == "weight_standardization" and not out:
        n = sum(1 for m in probe.modules() if torch.nn.utils.parametrize.is_parametrized(m))
        out = [f"{n} conv weights parametrised"] if n else []
    return out


def describe_effects(model: nn.Module, spec: list[dict[str, dict[str, Any]]],
                     sample: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> dict[str, dict[str, Any]]:
    """For each algorithm: what it acts on, the layers it changed, and a reason if it changes nothing."""
    effects: dict[str, dict[str, Any]] = {}
    for item in spec:
        for name, kwargs in item.items():
            inf = info(name)
            merged = {**(inf.defaults or {}), **kwargs}
            algo = build_algorithm(name, kwargs)
            changes: list[str] = []
            reason: Optional[str] = None
            if inf.describe is not None:
                changes, reason = inf.describe(model, effective_kwargs(name, kwargs))
            elif inf.surgery is not None:
                changes = layer_changes(model, name, effective_kwargs(name, kwargs))
                if not changes:
                    reason = _surgery_noop_reason(name, model, algo)
            elif name == "channels_last":
                changes = ["all 4-D parameters to channels_last memory format"]
            elif name == "gyro_dropout":
                n = sum(1 for m in model.modules() if isinstance(m, nn.Dropout))
                changes = [f"{n} Dropout layers -> GyroDropout"] if n else []
                reason = None if n else "the model has no nn.Dropout layer to replace"
            if reason is None and inf.noop is not None:
                reason = inf.noop(merged)
            if reason is None and name == "cutout" and sample is not None:
                x = sample[0][:8]
                if torch.equal(algo.cut(x.clone()), x):  # type: ignore[attr-defined]
                    reason = "masks no pixel on these images (length too small?)"
            effects[name] = {"acts_on": inf.acts_on, "changes": changes, "noop_reason": reason}
    return effects


def inference_module(model: nn.Module) -> nn.Module:
    """Undo training-only wrappers that change nothing at inference, in place: a ghost BatchNorm
    becomes the BatchNorm it wraps (in eval mode both normalise with the running statistics), so
    the trained model accepts batches of any size (latency is timed at batch 1)."""
    for name, child in model.named_children():
        if isinstance(child, GhostBatchNormBase):
            setattr(model, name, child.batchnorm)
        else:
            inference_module(child)
    return model


def dearest_step_model(model: nn.Module, spec: list[dict[str, dict[str, Any]]]) -> nn.Module:
    """Put a surgered copy in the state whose training step costs the most (e.g. stochastic depth
    dropping no block), so the planned step bounds every real one."""
    for item in spec:
        for name in item:
            worst = info(name).worst_case
            if worst is not None:
                worst(model)
    return model


def apply_surgery(model: nn.Module, spec: list[dict[str, dict[str, Any]]]) -> nn.Module:
    """Apply every model-surgery algorithm of `spec` to `model` in place, in the order the
    Trainer's algorithm objects run (`_in_run_order`), with the same effective arguments."""
    for item in _in_run_order(spec):
        for name, kwargs in item.items():
            surgery = info(name).surgery
            if surgery is not None:
                surgery(model, **effective_kwargs(name, kwargs))
    return model


def effective_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """An algorithm's constructor arguments with every default filled in."""
    inf = info(name)
    merged = {**(inf.defaults or {}), **kwargs}
    return _ctor_kwargs(build_algorithm(name, kwargs), merged)


def _ctor_kwargs(algo: Algorithm, merged: dict[str, Any]) -> dict[str, Any]:
    """The algorithm's effective constructor arguments (defaults included)."""
    params = inspect.signature(type(algo).__init__).parameters
    out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    for k in list(out):
        if hasattr(algo, k):
            out[k] = getattr(algo, k)
    out.update(merged)
    return out


def _surgery_noop_reason(name: str, model: nn.Module, algo: Algorithm) -> str:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    widest = max((m.out_channels for m in convs), default=0)
    if name == "squeeze_excite":
        return (f"no conv has >= min_channels={getattr(algo, 'min_channels', '?')} output channels "
                f"(widest here: {widest}); set algorithms.squeeze_excite.min_channels")
    if name == "blurpool":
        strided = sum(1 for m in convs if max(m.stride) > 1)
        pools = sum(1 for m in model.modules() if isinstance(m, nn.MaxPool2d))
        return (f"no strided conv with >= min_channels={getattr(algo, 'min_channels', '?')} and "
                f"no max-pool to replace (strided convs: {strided}, max-pools: {pools})")
    if name == "factorize":
        return "no conv/linear is large enough (see min_channels/min_features)"
    if name == "ghost_batchnorm":
        return "the model has no BatchNorm layer"
    if name == "stochastic_depth":
        return "the model has no layer of the target_layer_name type"
    return "the model has no layer this algorithm modifies"

