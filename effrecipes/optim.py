"""Optimizers and learning-rate schedules, registered by name (`composer-run --list optimizers`,
`--list schedulers`): each a builder with `@optimizers.register` / `@schedulers.register`.

torch and Composer are imported inside the builders, when a run builds them: listing or
validating names stays fast (well under a second; importing torch alone takes ~3 s here).

Schedules end where the run ends. The FLOP budget re-projects Composer's `max_duration` after
every step (batches done + batches the remaining FLOPs buy), so a fraction of the duration is a
fraction of the cap: Composer's schedulers (and warm-ups, given as fractions) follow it, and
one-cycle (a torch scheduler) reads the same horizon before computing each step's lr. When the
step cost is fixed the horizon never moves and every schedule spans exactly the planned batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    import torch

from effrecipes.errors import RecipeError
from effrecipes.recipe import ONE_CYCLE_MOMENTUM_FIELDS, OptimizerConfig, SchedulerConfig
from effrecipes.registry import optimizers, schedulers


@dataclass(frozen=True)
class OptimizerInfo:
    """Which of the recipe's optimizer settings the optimizer uses: any other one set away from
    its default is an error (`check_optimizer`), never silently ignored."""

    uses: frozenset[str]  # of "momentum", "nesterov", "betas"


SGD_LIKE = OptimizerInfo(frozenset({"momentum"}))
ADAM_LIKE = OptimizerInfo(frozenset({"betas"}))


@optimizers.register("sgd", description="torch SGD with momentum (nesterov optional)",
                     info=OptimizerInfo(frozenset({"momentum", "nesterov"})))
def _sgd(cfg: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import torch  # heavy: at build time only (see the module docstring)

    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)


@optimizers.register("adam", description="torch Adam (L2 weight decay)", info=ADAM_LIKE)
def _adam(cfg: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import torch  # heavy: at build time only

    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@optimizers.register("adamw", description="torch AdamW (decoupled weight decay)", info=ADAM_LIKE)
def _adamw(cfg: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    import torch  # heavy: at build time only

    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


@optimizers.register("decoupled_sgdw", description="Composer's SGD with decoupled weight decay",
                     info=SGD_LIKE)
def _decoupled_sgdw(cfg: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    from composer.optim import DecoupledSGDW  # heavy: at build time only

    return DecoupledSGDW(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@optimizers.register("decoupled_adamw", description="Composer's AdamW with weight decay scaled by lr",
                     info=ADAM_LIKE)
def _decoupled_adamw(cfg: OptimizerConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    from composer.optim import DecoupledAdamW  # heavy: at build time only

    return DecoupledAdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def check_optimizer(cfg: OptimizerConfig, *, file: str = "<recipe>") -> None:
    """Unknown name, or a setting the chosen optimizer ignores, as a one-line RecipeError.
    Compared with the defaults (not 'was it written'), so a resolved recipe - every default
    filled in - validates again, and a grid switching a momentum-SGD base to adam works."""
    uses = optimizers.entry(cfg.name, field_path="optimizer.name", file=file).info.uses
    defaults = OptimizerConfig.model_fields
    if "momentum" not in uses and cfg.momentum != defaults["momentum"].default:
        why = f"momentum={cfg.momentum} is ignored by {cfg.name} (use betas); remove optimizer.momentum or use name: sgd"
    elif "nesterov" not in uses and cfg.nesterov:
        why = f"nesterov is ignored by {cfg.name}; remove optimizer.nesterov or use name: sgd"
    elif "betas" not in uses and cfg.betas != defaults["betas"].default:
        why = (f"betas are ignored by {cfg.name} (use momentum); remove optimizer.betas or use an "
               "adam optimizer")
    else:
        return
    raise RecipeError(why, file=file, field="optimizer")


def check_schedule(scheduler: SchedulerConfig, opt: OptimizerConfig, *, file: str = "<recipe>") -> None:
    """A momentum setting that would change nothing, as a one-line RecipeError. torch's one-cycle
    (`cycle_momentum`, its default) sets SGD's momentum (Adam's beta1) itself on every step, so
    under it an `optimizer.momentum` or `betas[0]` other than the default would train exactly like
    the default; and the one-cycle momentum fields mean nothing to another schedule."""
    defaults = SchedulerConfig.model_fields
    momentum_fields = [k for k in ONE_CYCLE_MOMENTUM_FIELDS if getattr(scheduler, k) != defaults[k].default]
    if scheduler.name != "one_cycle":
        if momentum_fields:
            raise RecipeError(f"{momentum_fields[0]} is used by scheduler one_cycle only; remove it",
                              file=file, field=f"scheduler.{momentum_fields[0]}")
        return
    if not scheduler.cycle_momentum:
        if [k for k in momentum_fields if k != "cycle_momentum"]:
            raise RecipeError("base_momentum and max_momentum are not used with cycle_momentum: false "
                              "(optimizer.momentum is); remove them", file=file, field="scheduler")
        return
    uses = optimizers.entry(opt.name, field_path="optimizer.name", file=file).info.uses
    opt_defaults = OptimizerConfig.model_fields
    cycle = (f"which sets it itself on every step ({scheduler.max_momentum} -> "
             f"{scheduler.base_momentum} -> {scheduler.max_momentum})")
    fix = ("set scheduler.base_momentum / max_momentum instead, or scheduler.cycle_momentum: false "
           "to keep it")
    if "momentum" in uses and opt.momentum != opt_defaults["momentum"].default:
        raise RecipeError(f"momentum={opt.momentum} is ignored by scheduler one_cycle, {cycle}; {fix}",
                          file=file, field="optimizer.momentum")
    if "betas" in uses and opt.betas[0] != opt_defaults["betas"].default[0]:
        raise RecipeError(f"betas[0]={opt.betas[0]} is ignored by scheduler one_cycle, {cycle}; {fix}",
                          file=file, field="optimizer.betas")


def build_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return optimizers.get(cfg.name, field_path="optimizer.name")(cfg, list(params))


Horizon = Callable[[], int]  # the budget's projected total number of batches


def _warmup_schedule(composer_class: str, decays: bool) -> Callable[..., Any]:
    """A Composer schedule with a linear warm-up over `warmup_fraction` of the run ("dur": the
    FLOP horizon), then constant or decaying to alpha_f x lr."""
    def build(cfg: SchedulerConfig, opt: OptimizerConfig, optimizer: torch.optim.Optimizer,
              horizon: Horizon, batches_per_epoch: int) -> Any:
        import composer.optim  # heavy: at build time only

        kwargs = {"alpha_f": cfg.alpha_f} if decays else {}
        return getattr(composer.optim, composer_class)(t_warmup=f"{cfg.warmup_fraction}dur", **kwargs)
    return build


schedulers.add("constant", _warmup_schedule("ConstantWithWarmupScheduler", decays=False),
               description="constant lr after an optional linear warm-up")
schedulers.add("cosine", _warmup_schedule("CosineAnnealingWithWarmupScheduler", decays=True),
               description="cosine decay to alpha_f x lr after an optional warm-up")
schedulers.add("linear", _warmup_schedule("LinearWithWarmupScheduler", decays=True),
               description="linear decay to alpha_f x lr after an optional warm-up")


@schedulers.register("one_cycle", description="one-cycle (torch), its cycle following the FLOP horizon; "
                     "it cycles SGD momentum (Adam beta1) 0.95 -> 0.85 -> 0.95 unless cycle_momentum: false")
def _one_cycle(cfg: SchedulerConfig, opt: OptimizerConfig, optimizer: torch.optim.Optimizer,
               horizon: Horizon, batches_per_epoch: int) -> Any:
    from effrecipes.one_cycle import ElasticOneCycleLR  # torch: at build time only

    return ElasticOneCycleLR(optimizer, horizon=horizon, max_lr=opt.lr, pct_start=cfg.pct_start,
                             div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor,
                             cycle_momentum=cfg.cycle_momentum, base_momentum=cfg.base_momentum,
                             max_momentum=cfg.max_momentum)


@schedulers.register("step", description="lr x gamma every step_epochs epochs")
def _step(cfg: SchedulerConfig, opt: OptimizerConfig, optimizer: torch.optim.Optimizer,
          horizon: Horizon, batches_per_epoch: int) -> Any:
    from composer.optim import StepScheduler  # heavy: at build time only

    return StepScheduler(step_size=f"{cfg.step_epochs * batches_per_epoch}ba", gamma=cfg.gamma)


@schedulers.register("exponential", description="lr x gamma once per epoch (paper 000's staircase)")
def _exponential(cfg: SchedulerConfig, opt: OptimizerConfig, optimizer: torch.optim.Optimizer,
                 horizon: Horizon, batches_per_epoch: int) -> Any:
    from composer.optim import StepScheduler  # heavy: at build time only

    return StepScheduler(step_size=f"{max(batches_per_epoch, 1)}ba", gamma=cfg.gamma)


def build_scheduler(cfg: SchedulerConfig, opt_cfg: OptimizerConfig, optimizer: torch.optim.Optimizer,
                    horizon: Horizon, batches_per_epoch: int) -> tuple[list[Any], bool]:
    """(schedulers, step_every_batch) for Composer's Trainer. Always stepped every batch:
    Composer's `step_schedulers_every_batch=False` would step even its own schedulers once per
    epoch (a warm-up would then hold lr at 0 for the whole first epoch)."""
    build = schedulers.get(cfg.name, field_path="scheduler.name")
    return [build(cfg, opt_cfg, optimizer, horizon, batches_per_epoch)], True
