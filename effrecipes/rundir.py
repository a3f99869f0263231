"""The run directory: the contract between a run and everything after it.

Matrix tables, reports, `--resume` and W&B's summary all read what a run wrote here, never a live
Trainer. This module is the one place that says what that is: the file names, the stop reasons
and matrix cell statuses, the typed `metrics.json` (`RunMetrics`), and its one writer and one
reader. A matrix keeps each cell's run directory at `cells/<cell_id>/<cell_id>/`.

    <run dir>/recipe.yaml      the resolved recipe (every default filled in)
    <run dir>/metrics.json     RunMetrics
    <run dir>/history.csv      one row per evaluation (HISTORY_FIELDS)
    <run dir>/checkpoint.pt    final (or best-validation) weights, CPU tensors
    <run dir>/resume.pt        full trainer state of an interrupted run
"""
from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from effrecipes.files import json_dict_or_none

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.pt"
RESUME_FILE = "resume.pt"
HISTORY_FIELDS = ["epoch", "batch", "samples", "flops_used", "train_loss", "val_accuracy", "lr",
                  "seconds"]


class StopReason(str, Enum):
    """Why a run ended (a str: it is written and compared as its value)."""

    FLOPS = "flops"              # the next step could have crossed the FLOP cap
    MAX_EPOCHS = "max_epochs"
    MAX_SECONDS = "max_seconds"
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM: resumable
    DIVERGED = "diverged"        # a non-finite loss: the last finite weights were kept

    def __str__(self) -> str:
        return self.value

    @property
    def is_cap(self) -> bool:
        return self in (StopReason.FLOPS, StopReason.MAX_EPOCHS, StopReason.MAX_SECONDS)


class CellStatus(str, Enum):
    """A matrix cell's state, derived from its run directory."""

    DONE = "done"
    DIVERGED = "diverged"        # finished: a diverged run is a result, its accuracy counts
    FAILED = "failed"
    PENDING = "pending"
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # a resumable run directory
    REPEAT = "repeat"            # the same recipe and seed as an earlier run: counted once

    def __str__(self) -> str:
        return self.value


FINISHED = (CellStatus.DONE, CellStatus.DIVERGED)


def status_of(metrics: dict[str, Any]) -> CellStatus:
    """A run's status from its metrics: diverged (a result: counted), interrupted (stopped early,
    resumable: not counted), else done."""
    stop = metrics.get("stop_reason")
    return (CellStatus.DIVERGED if stop == StopReason.DIVERGED else
            CellStatus.INTERRUPTED if stop == StopReason.INTERRUPTED else CellStatus.DONE)


class RunMetrics(BaseModel):
    """`metrics.json`. Unknown keys are kept (files from newer versions stay readable), missing
    ones are None (older files)."""

    model_config = ConfigDict(extra="allow", use_enum_values=True)

    name: str
    run_name: str
    seed: int
    dataset: str
    model: str
    algorithms: list[str]
    test_accuracy: Optional[float] = None
    best_val_accuracy: Optional[float] = None
    final_val_accuracy: Optional[float] = None
    tested_weights: str = "last"
    flops_used: float = 0.0
    flops_cap: Optional[float] = None
    stop_reason: Optional[StopReason] = None
    train_flops_per_sample: Optional[float] = None
    mean_train_flops_per_sample: Optional[float] = None
    measured_flops_per_sample: dict[str, float] = {}
    inference_flops_per_sample: Optional[float] = None
    fvcore_forward_macs_per_sample: Optional[float] = None
    eval_flops: Optional[float] = None
    extra_train_flops: float = 0.0
    max_step_flops: Optional[float] = None
    reserve_unspent_flops: float = 0.0
    params: Optional[int] = None
    model_size_bytes: Optional[int] = None
    cpu_latency_ms_per_image: Optional[float] = None
    batches: int = 0
    samples: int = 0
    epochs: float = 0.0
    planned_batches: Optional[int] = None
    train_seconds: float = 0.0
    samples_per_second: Optional[float] = None
    wall_seconds: Optional[float] = None
    algorithm_effects: dict[str, Any] = {}
    warnings: list[str] = []
    reference: Optional[dict[str, Any]] = None
    threads: Optional[int] = None
    device: Optional[str] = None
    device_name: Optional[str] = None
    precision: Optional[str] = None
    compile: Optional[bool] = None
    mfu: Optional[float] = None
    peak_flops_per_device: Optional[float] = None
    peak_flops_source: Optional[str] = None
    device_latency_ms: Optional[dict[str, Any]] = None
    per_class: Optional[list[dict[str, Any]]] = None


# Metrics a W&B run summary and a matrix table carry (in this order).
SUMMARY_FIELDS = ("test_accuracy", "best_val_accuracy", "final_val_accuracy", "flops_used",
                  "flops_cap", "stop_reason", "params", "model_size_bytes",
                  "cpu_latency_ms_per_image", "train_flops_per_sample",
                  "inference_flops_per_sample", "epochs", "train_seconds", "samples_per_second")


# Metrics a matrix's results.csv carries per cell (in this order).
TABLE_FIELDS = ("test_accuracy", "best_val_accuracy", "flops_used", "flops_cap", "stop_reason",
                "epochs", "params", "model_size_bytes", "cpu_latency_ms_per_image", "wall_seconds",
                "train_seconds", "samples_per_second")


def write_metrics(run_dir: Path, metrics: RunMetrics) -> Path:
    """Write `metrics.json` atomically (a reader never sees half a file)."""
    path = run_dir / METRICS_FILE
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(metrics.model_dump(mode="json", exclude_none=False), indent=2,
                              default=str))
    os.replace(tmp, path)
    return path


def read_metrics(run_dir: Path) -> Optional[RunMetrics]:
    """The run's metrics, or None when the file is missing, unreadable (read with the one bounded
    reader, `effrecipes.files`: a FIFO never blocks, /dev/zero is never read, any parse failure is
    None) or not metrics."""
    data = json_dict_or_none(run_dir / METRICS_FILE)
    if data is None:
        return None
    try:
        return RunMetrics.model_validate(data)
    except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
        return None


def cell_dir(matrix_dir: Path, cell_id: str) -> Path:
    """Where a matrix keeps a cell (its `cell.json` and its run directory)."""
    return matrix_dir / "cells" / cell_id


def cell_run_dir(matrix_dir: Path, cell_id: str) -> Path:
    """Where a matrix keeps a cell's run directory."""
    return cell_dir(matrix_dir, cell_id) / cell_id
