"""Small Composer callbacks: per-evaluation history (against FLOPs spent) with live progress,
best-val weights, the data order, and the interrupt/divergence guard."""
from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from tqdm import tqdm

from effrecipes.models import network_of
from effrecipes.budget import FlopBudget
from effrecipes.ranks import any_rank, broadcast_from_rank0
from effrecipes.rundir import HISTORY_FIELDS, StopReason
from effrecipes.stats import fmt_flops



def _val_accuracy(state: State) -> Optional[float]:
    for metrics in state.eval_metrics.values():
        for name, metric in metrics.items():
            if "Accuracy" in name:
                return float(metric.compute()) * 100.0
    return None


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LiveProgress:
    """What a user watching a run sees, in the budget's unit: the share of the binding cap spent
    (FLOPs, or epochs/seconds when those bind), FLOPs spent / cap, the last validation accuracy,
    the lr and an ETA. On a terminal a bar redrawn at most 4 times a second; otherwise (piped to
    a file, a job log) one line per evaluation. Written to stderr: stdout keeps the summary (or
    the JSON)."""

    def __init__(self, budget: FlopBudget, stream: Any, tty: bool) -> None:
        self.budget, self.stream, self.tty = budget, stream, tty
        self._bar: Any = None
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._val: Optional[float] = None

    def _status(self, state: State) -> str:
        led, cap = self.budget.ledger, self.budget.plan.flops_cap
        lr = state.optimizers[0].param_groups[0]["lr"] if state.optimizers else None
        parts = [f"FLOPs {fmt_flops(led.flops_used)}" + (f"/{fmt_flops(cap)}" if cap else ""),
                 f"epoch {led.batches / max(self.budget.plan.batches_per_epoch, 1):.2f}"]
        if self._val is not None:
            parts.append(f"val {self._val:.2f}%")
        if lr is not None:
            parts.append(f"lr {lr:.3g}")
        return "  ".join(parts)

    def tick(self, state: State) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.25:
            return
        self._last_draw = now
        if self._bar is None:
            self._bar = tqdm(total=100.0, unit="%", file=self.stream, dynamic_ncols=True,
                             bar_format="{percentage:5.1f}% |{bar}| {desc} [{elapsed}<{remaining}]")
        self._bar.n = round(100.0 * self.budget.progress(), 2)
        self._bar.set_description_str(self._status(state), refresh=True)

    def evaluated(self, state: State, val_accuracy: Optional[float]) -> None:
        self._val = val_accuracy
        if self.tty:
            self._last_draw = 0.0
            self.tick(state)
            return
        done = self.budget.progress()
        spent = time.perf_counter() - self._t0
        eta = f"  ETA {_duration(spent * (1 - done) / done)}" if 0 < done < 1 else ""
        print(f"[{100 * done:5.1f}%] {self._status(state)}  {_duration(spent)}{eta}", file=self.stream,
              flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.n = round(100.0 * self.budget.progress(), 2)
            self._bar.close()
            self._bar = None


class History(Callback):
    """Writes one row per evaluation to history.csv (appending, flushed each time) and drives
    the live progress (one callback for both: every callback costs Composer's loop time on every
    event)."""

    def __init__(self, budget: FlopBudget, path: Path, progress: Optional[LiveProgress] = None,
                 on_write_error: Optional[Callable[[Path, OSError], None]] = None) -> None:
        self.budget, self.path, self.progress = budget, path, progress
        self.on_write_error = on_write_error
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
        logger.log_metrics({k: row[k] for k in ("flops_used", "val_accuracy", "lr", "epoch")
                            if row[k] is not None})  # W&B history keys = history.csv columns, %
        if self.progress is not None:
            self.progress.evaluated(state, acc)
        self._append(row)

    def _append(self, row: dict[str, Any]) -> None:
        """One row onto history.csv; a failed write (a full disk) is cut back to the last whole
        row and handed to `on_write_error` (the runner stops the run resumably), not raised
        through Composer's loop."""
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with self.path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
                if size == 0:
                    writer.writeheader()
                writer.writerow(row)
        except OSError as e:
            if self.on_write_error is None:
                raise
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)
            self.on_write_error(self.path, e)


    def batch_end(self, state: State, logger: Logger) -> None:
        if self.progress is not None:
            self.progress.tick(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        if self.progress is not None:
            self.progress.close()


class BestWeights(Callback):
    """Keeps a copy of the weights with the best validation accuracy (paper 000's protocol).

    The copy is taken at EVAL_START, of the weights being validated: algorithms that evaluate
    other weights than they train (EMA swaps its average in for evaluation) have swapped them
    back before a callback sees EVAL_END."""

    def __init__(self) -> None:
        self.best: Optional[float] = None
        self.state: Optional[dict[str, torch.Tensor]] = None
        self._evaluated: Optional[dict[str, torch.Tensor]] = None

    def eval_start(self, state: State, logger: Logger) -> None:
        self._evaluated = copy.deepcopy(network_of(state.model).state_dict())

    def eval_end(self, state: State, logger: Logger) -> None:
        acc = _val_accuracy(state)
        if acc is not None and (self.best is None or acc > self.best):
            self.best = acc
            self.state = self._evaluated
        self._evaluated = None


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


class EvalOnRank0Model(Callback):
    """Data-parallel runs only: at the start of every evaluation each rank takes rank 0's
    buffers (BatchNorm statistics, which each rank updated from its own last batch; the weights
    are the same on every rank), so that the shares of the validation set (`effrecipes.data.shards`)
    are all evaluated by one model. Callbacks run after algorithms, so with EMA these are the
    averaged model's buffers. Training is unchanged: DDP copies rank 0's buffers to every rank
    at the start of the next training step anyway."""

    def eval_start(self, state: State, logger: Logger) -> None:
        broadcast_from_rank0(network_of(state.model).buffers())


class RunGuard(Callback):
    """Stops a run cleanly on Ctrl-C / SIGTERM (`interrupted`) or a non-finite loss (`diverged`),
    keeping the last weights whose loss was finite.

    An interruption on the last batch of an epoch stops after that epoch's end instead: Composer's
    `stop_training()` makes the elapsed duration 1, and algorithms acting at EPOCH_END (SWA,
    layer freezing) would then act as if training were over, which a resumed run could not undo.
    """

    def __init__(self, budget: Optional[FlopBudget], snapshot_every: int = 50) -> None:
        self.budget = budget
        self.stop_requested = False
        self.snapshot_every = max(1, snapshot_every)
        self.last_good: Optional[dict[str, torch.Tensor]] = None
        self.diverged = False
        self.write_error: Optional[tuple[Path, OSError]] = None
        self._stop_at_epoch_end = False

    def request_stop(self) -> None:
        self.stop_requested = True

    def write_failed(self, path: Path, error: OSError) -> None:
        """A file of the run could not be written (a full disk): stop as if interrupted, so the
        run is saved resumably if the small resume checkpoint still fits."""
        if self.write_error is None:
            self.write_error = (path, error)
        self.request_stop()

    def batch_end(self, state: State, logger: Logger) -> None:
        losses = (state.total_loss_dict or {}).values()
        if not all(math.isfinite(float(v)) for v in losses):
            self.diverged = True
            if self.budget is not None:
                self.budget.ledger.stop_reason = StopReason.DIVERGED
            state.stop_training()
            return
        if int(state.timestamp.batch) % self.snapshot_every == 0 or self.last_good is None:
            self.last_good = copy.deepcopy(network_of(state.model).state_dict())
        # a signal or a failed write reaches one rank at a time: all stop after the same batch
        if any_rank(self.stop_requested, state.device):
            self.stop_requested = True
            if self.budget is not None and self.budget.ledger.stop_reason is None:
                self.budget.ledger.stop_reason = StopReason.INTERRUPTED
            if int(state.timestamp.batch_in_epoch) == int(state.dataloader_len or 0):
                self._stop_at_epoch_end = True
            else:
                state.stop_training()

    def epoch_end(self, state: State, logger: Logger) -> None:
        if self._stop_at_epoch_end:
            state.stop_training()
