"""Small Composer callbacks: per-evaluation history (against FLOPs spent) and best-val weights."""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger

from effrecipes.models import network_of
from effrecipes.budget import FlopBudget

HISTORY_FIELDS = ["epoch", "batch", "samples", "flops_used", "train_loss", "val_accuracy", "lr",
                  "seconds"]


def _val_accuracy(state: State) -> Optional[float]:
    for metrics in state.eval_metrics.values():
        for name, metric in metrics.items():
            if "Accuracy" in name:
                return float(metric.compute()) * 100.0
    return None


class History(Callback):
    """Writes one row per evaluation to history.csv (appending, flushed each time)."""

    def __init__(self, budget: FlopBudget, path: Path) -> None:
        self.budget, self.path = budget, path
        self.rows: list[dict[str, Any]] = []
        self.best_val_accuracy: Optional[float] = None
        self.last_val_accuracy: Optional[float] = None
        self.eval_samples = 0
        self._t0 = time.perf_counter()

    def eval_end(self, state: State, logger: Logger) -> None:
        acc = _val_accuracy(state)
        ts = state.timestamp
        loss = state.total_loss_dict.get("loss/train/total") if state.total_loss_dict else None
        lr = state.optimizers[0].param_groups[0]["lr"] if state.optimizers else None
        row = {"epoch": round(int(ts.batch) / max(len(state.train_dataloader or []), 1), 4),
               "batch": int(ts.batch), "samples": int(ts.sample),
               "flops_used": self.budget.ledger.flops_used,
               "train_loss": None if loss is None else float(loss), "val_accuracy": acc, "lr": lr,
               "seconds": round(time.perf_counter() - self._t0, 3)}
        self.rows.append(row)
        if state.dataloader is not None:
            self.eval_samples += int(state.eval_timestamp.sample)
        if acc is not None:
            self.last_val_accuracy = acc
            if self.best_val_accuracy is None or acc > self.best_val_accuracy:
                self.best_val_accuracy = acc
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)


class BestWeights(Callback):
    """Keeps a copy of the weights with the best validation accuracy (paper 000's protocol)."""

    def __init__(self) -> None:
        self.best: Optional[float] = None
        self.state: Optional[dict[str, torch.Tensor]] = None

    def eval_end(self, state: State, logger: Logger) -> None:
        acc = _val_accuracy(state)
        if acc is not None and (self.best is None or acc > self.best):
            self.best = acc
            self.state = copy.deepcopy(network_of(state.model).state_dict())


class EpochSync(Callback):
    """Pins the data order to the trainer's clock: epoch k always yields the same batches, also
    after a resume (Composer re-iterates the loader to skip what was already trained)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader if hasattr(loader, "set_epoch") else None
        if self.loader is not None:
            self.loader.auto_advance = False

    def _sync(self, state: State) -> None:
        if self.loader is not None:
            self.loader.set_epoch(int(state.timestamp.epoch))

    def fit_start(self, state: State, logger: Logger) -> None:
        self._sync(state)

    def epoch_start(self, state: State, logger: Logger) -> None:
        self._sync(state)


class RunGuard(Callback):
    """Stops a run cleanly on Ctrl-C / SIGTERM (`interrupted`) or a non-finite loss (`diverged`),
    keeping the last weights whose loss was finite."""

    def __init__(self, budget: Optional[FlopBudget], snapshot_every: int = 50) -> None:
        self.budget = budget
        self.stop_requested = False
        self.snapshot_every = max(1, snapshot_every)
        self.last_good: Optional[dict[str, torch.Tensor]] = None
        self.diverged = False

    def request_stop(self) -> None:
        self.stop_requested = True

    def batch_end(self, state: State, logger: Logger) -> None:
        losses = (state.total_loss_dict or {}).values()
        if not all(math.isfinite(float(v)) for v in losses):
            self.diverged = True
            if self.budget is not None:
                self.budget.ledger.stop_reason = "diverged"
            state.stop_training()
            return
        if int(state.timestamp.batch) % self.snapshot_every == 0 or self.last_good is None:
            self.last_good = copy.deepcopy(network_of(state.model).state_dict())
        if self.stop_requested:
            if self.budget is not None and self.budget.ledger.stop_reason is None:
                self.budget.ledger.stop_reason = "interrupted"
            state.stop_training()
