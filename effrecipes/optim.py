"""Optimizers and learning-rate schedules from the recipe.

Schedules end where the run ends. The FLOP budget re-projects Composer's `max_duration` after
every step (batches done + batches the remaining FLOPs buy), so a fraction of the duration is a
fraction of the cap: Composer's schedulers (and warm-ups, given as fractions) follow it, and
one-cycle (a torch scheduler) reads the same horizon before computing each step's lr. When the
step cost is fixed the horizon never moves and every schedule spans exactly the planned batches.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Union

import torch
from composer.optim import (ConstantWithWarmupScheduler, CosineAnnealingWithWarmupScheduler,
                            DecoupledAdamW, DecoupledSGDW,
                            LinearWithWarmupScheduler, StepScheduler)

from effrecipes.recipe import OptimizerConfig, SchedulerConfig


def build_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "decoupled_sgdw":
        return DecoupledSGDW(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return DecoupledAdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


class ElasticOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """torch's one-cycle schedule whose total step count follows a moving horizon.

    Before each lr is computed the phase boundaries are placed at `pct_start` and the end of
    `horizon()` (the budget's projected total batches), so the cycle ends where the run ends even
    when steps get cheaper or dearer; with a fixed horizon it is exactly `OneCycleLR`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, horizon: Callable[[], int],
                 pct_start: float, **kwargs: Any) -> None:
        self._horizon = horizon
        self._pct_start = pct_start
        super().__init__(optimizer, total_steps=max(int(horizon()), 1), pct_start=pct_start, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """torch's state without the horizon function (a checkpoint holds data, not code)."""
        return {k: v for k, v in super().state_dict().items() if k != "_horizon"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "_horizon"})

    def get_lr(self) -> list[float]:
        total = max(int(self._horizon()), self.last_epoch, 1)
        if total != self.total_steps:
            self.total_steps = total
            self._schedule_phases[0]["end_step"] = float(self._pct_start * total) - 1
            self._schedule_phases[-1]["end_step"] = float(total) - 1
        return super().get_lr()


def build_scheduler(cfg: SchedulerConfig, opt_cfg: OptimizerConfig, optimizer: torch.optim.Optimizer,
                    horizon: Callable[[], int], batches_per_epoch: int) -> tuple[list[Any], bool]:
    """(schedulers, step_every_batch) for Composer's Trainer. `horizon()` is the projected total
    number of batches. Always stepped every batch: Composer's `step_schedulers_every_batch=False`
    would step even its own schedulers once per epoch (a warm-up would then hold lr at 0 for the
    whole first epoch)."""
    warm = f"{cfg.warmup_fraction}dur"
    sched: Union[Any, torch.optim.lr_scheduler.LRScheduler]
    if cfg.name == "one_cycle":
        sched = ElasticOneCycleLR(optimizer, horizon=horizon, max_lr=opt_cfg.lr, pct_start=cfg.pct_start,
                                  div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor)
        return [sched], True
    if cfg.name == "constant":
        sched = ConstantWithWarmupScheduler(t_warmup=warm)
    elif cfg.name == "cosine":
        sched = CosineAnnealingWithWarmupScheduler(t_warmup=warm, alpha_f=cfg.alpha_f)
    elif cfg.name == "linear":
        sched = LinearWithWarmupScheduler(t_warmup=warm, alpha_f=cfg.alpha_f)
    elif cfg.name == "step":
        sched = StepScheduler(step_size=f"{cfg.step_epochs * batches_per_epoch}ba", gamma=cfg.gamma)
    else:  # exponential: paper 000's decay by gamma once per epoch (a staircase, as its ExponentialLR)
        sched = StepScheduler(step_size=f"{max(batches_per_epoch, 1)}ba", gamma=cfg.gamma)
    return [sched], True
