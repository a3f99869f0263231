"""On-disk state of a matrix: the lock, per-cell records, failure records, and what is finished.

Layout of a matrix directory (`<output>/<name>/`):

    .lock                          fcntl.flock'd by the running composer-ablate (pid inside)
    spec.yaml                      the spec as last run, command-line overrides applied (provenance)
    cells/<cell_id>/cell.json      hash, overrides, status of the cell (atomic writes)
    cells/<cell_id>/<cell_id>/     the cell's run directory, written by effrecipes.runner
    failed/<cell_id>.json          error of the last failed attempt
    results.{csv,json,md}          rebuilt from the run directories

The run directory is the contract: a cell is finished exactly when its run directory holds a
`metrics.json` (the runner renames the directory into place only on success) and the recipe in
it hashes to the cell's hash. `cell.json` is a record for people and tools, never trusted over it.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from effrecipes.errors import UserError
from effrecipes.matrix.cells import Cell, Matrix, run_dir_hash
from effrecipes.files import json_dict_or_none
from effrecipes.rundir import FINISHED, METRICS_FILE, RESUME_FILE, CellStatus, status_of  # noqa: F401

DONE, DIVERGED, FAILED = CellStatus.DONE, CellStatus.DIVERGED, CellStatus.FAILED
PENDING, RUNNING, INTERRUPTED = CellStatus.PENDING, CellStatus.RUNNING, CellStatus.INTERRUPTED


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON object from a file of the matrix directory, or None when it is missing, unreadable
    (not a regular file, too big, corrupt) or not an object (`effrecipes.files`)."""
    return json_dict_or_none(path)


# --------------------------------------------------------------------------- lock

class MatrixLock:
    """Exclusive `fcntl.flock` on `<matrix_dir>/.lock`; the kernel drops it when the holder dies."""

    def __init__(self, matrix_dir: Path) -> None:
        self.path = matrix_dir / ".lock"
        self.fd: Optional[int] = None

    def acquire(self) -> "MatrixLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the matrix directory: {e.strerror}",
                            file=str(self.path.parent), hint="choose a writable output") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").split()[0]
            except (OSError, IndexError):
                holder = "?"
            os.close(fd)
            raise UserError(f"matrix is locked by another composer-ablate (pid {holder}); wait for "
                            "it to finish or stop it", file=str(self.path.parent)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {now()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "MatrixLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# --------------------------------------------------------------------------- per-cell records

def record_path(matrix: Matrix, cell: Cell) -> Path:
    return matrix.cell_dir(cell) / "cell.json"


def failed_path(matrix: Matrix, cell: Cell) -> Path:
    return matrix.matrix_dir / "failed" / f"{cell.id}.json"


def cell_record(matrix: Matrix, cell: Cell, status: str, **extra: Any) -> dict[str, Any]:
    return {"cell_id": cell.id, "hash": cell.hash, "status": status, "techniques": list(cell.techniques),
            "grid": cell.grid, "seed": cell.seed, "overrides": cell.overrides,
            "base": str(matrix.base_path), "run_dir": str(matrix.run_dir(cell)),
            "updated": now(), **extra}


def write_record(matrix: Matrix, cell: Cell, status: str, **extra: Any) -> None:
    atomic_write_json(record_path(matrix, cell), cell_record(matrix, cell, status, **extra))


def write_failed(matrix: Matrix, cell: Cell, error: str, *, error_type: str,
                 traceback: Optional[str] = None, seconds: Optional[float] = None) -> None:
    rec = cell_record(matrix, cell, FAILED, error=error, error_type=error_type,
                      seconds=seconds, traceback=traceback)
    atomic_write_json(failed_path(matrix, cell), rec)
    write_record(matrix, cell, FAILED, error=error, error_type=error_type, seconds=seconds)


def clear_failed(matrix: Matrix, cell: Cell) -> None:
    try:
        failed_path(matrix, cell).unlink()
    except FileNotFoundError:
        pass


def clean_partial(matrix: Matrix, cell: Cell) -> None:
    """Remove temp/old run directories a killed worker left behind (we hold the lock)."""
    d = matrix.cell_dir(cell)
    if not d.is_dir():
        return
    for p in d.iterdir():
        if p.name.startswith((f".{cell.id}.tmp-", f".{cell.id}.old-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(".cell.json.tmp-"):
            p.unlink(missing_ok=True)


def sweep_stale(matrix: Matrix) -> int:
    """Remove temp files/dirs (`.<name>.tmp-<pid>`, `.<name>.old-<pid>`) that killed processes left
    in the matrix directory. Only called while holding the lock, so none of them is live."""
    removed = 0
    d = matrix.matrix_dir
    places = [d, d / "failed"] + ([p for p in (d / "cells").iterdir() if p.is_dir()]
                                  if (d / "cells").is_dir() else [])
    mine = f"-{os.getpid()}"
    for place in places:
        if not place.is_dir():
            continue
        for p in place.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name) \
                    and not p.name.endswith(mine):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed += 1
    return removed


# --------------------------------------------------------------------------- what is finished

_metrics_cache: dict[str, tuple[int, Optional[str], dict[str, Any]]] = {}


def finished_metrics(matrix: Matrix, cell: Cell) -> Optional[dict[str, Any]]:
    """The cell's metrics when its run directory is finished *and* trained this cell's recipe
    (a run stopped by Ctrl-C/SIGTERM, `stop_reason: interrupted`, is not finished)."""
    m = run_metrics(matrix, cell)
    return None if m is None or m.get("stop_reason") == INTERRUPTED else m


def resumable(matrix: Matrix, cell: Cell) -> bool:
    """The run directory holds an interrupted run of this exact recipe with its resume state."""
    m = run_metrics(matrix, cell)
    return (m is not None and m.get("stop_reason") == INTERRUPTED
            and (matrix.run_dir(cell) / RESUME_FILE).exists())


def run_metrics(matrix: Matrix, cell: Cell) -> Optional[dict[str, Any]]:
    """metrics.json of the cell's run directory if that directory trained this cell's recipe."""
    run_dir = matrix.run_dir(cell)
    mpath = run_dir / METRICS_FILE
    try:
        mtime = mpath.stat().st_mtime_ns
    except OSError:
        return None
    key = str(mpath)
    cached = _metrics_cache.get(key)
    if cached is None or cached[0] != mtime:
        metrics = read_json(mpath)
        if metrics is None:
            return None
        cached = (mtime, run_dir_hash(run_dir), metrics)
        _metrics_cache[key] = cached
    return cached[2] if cached[1] == cell.hash else None


metrics_status = status_of  # of finished metrics: done or diverged


def failure(matrix: Matrix, cell: Cell) -> Optional[dict[str, Any]]:
    """The recorded failure of this exact cell (same hash), if any."""
    rec = read_json(failed_path(matrix, cell))
    return rec if rec and rec.get("hash") == cell.hash else None


def classify(matrix: Matrix, cell: Cell) -> tuple[str, str]:
    """(status, why) of a cell from disk: done/diverged, failed, interrupted (a resumable run dir),
    or pending (new, changed, or killed while running)."""
    m = finished_metrics(matrix, cell)
    if m is not None:
        return metrics_status(m), "finished run directory"
    f = failure(matrix, cell)
    if f is not None:
        return FAILED, str(f.get("error", ""))
    if resumable(matrix, cell):
        return INTERRUPTED, "interrupted (resumable)"
    if run_metrics(matrix, cell) is not None:
        return INTERRUPTED, "interrupted"
    if (matrix.run_dir(cell) / METRICS_FILE).exists():
        return PENDING, "changed (run directory holds a different recipe)"
    rec = read_json(record_path(matrix, cell))
    if rec and rec.get("status") == RUNNING:
        return PENDING, "interrupted"
    return PENDING, "new"
