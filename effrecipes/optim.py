"""Optimizers and learning-rate schedules from the recipe.

Schedules span exactly the planned number of batches: Composer's schedulers are functions of
the fraction of `max_duration` elapsed, and one-cycle (a torch scheduler) is built with the
exact total step count and stepped every batch.
"""
from __future__ import annotations

from typing import Any, Iterable, Union

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


def build_scheduler(cfg: SchedulerConfig, opt_cfg: OptimizerConfig, optimizer: torch.optim.Optimizer,
                    total_batches: int, batches_per_epoch: int) -> tuple[list[Any], bool]:
    """(schedulers, step_every_batch) for Composer's Trainer. Always stepped every batch: every
    schedule here is defined in batches, and Composer's `step_schedulers_every_batch=False` would
    step even its own schedulers once per epoch (a warm-up would then hold lr at 0 for the whole
    first epoch)."""
    warm = f"{int(round(cfg.warmup_fraction * total_batches))}ba"
    sched: Union[Any, torch.optim.lr_scheduler.LRScheduler]
    if cfg.name == "one_cycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=opt_cfg.lr, total_steps=max(total_batches, 1), pct_start=cfg.pct_start,
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
