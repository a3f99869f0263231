"""Running a matrix: one function runs a cell (`run_cell`), two executors call it.

- local: `concurrent.futures.ProcessPoolExecutor` (spawn) with N workers; each worker gets
  `EFFRECIPES_THREADS = max(1, cores // N)` so workers do not oversubscribe the cores.
- ray: each cell is a `ray.remote(num_cpus=..., num_gpus=...)` task calling `run_cell`. A task
  with `num_gpus` > 0 sees only its assigned GPU(s) (Ray sets CUDA_VISIBLE_DEVICES), so a recipe
  with `trainer.device: auto` trains on that GPU (`cuda:0` inside the task); with
  `--gpus-per-cell 0` the cell runs with `$EFFRECIPES_DEVICE=cpu`, so `auto` means the CPU even on
  a GPU node (whatever Ray does to CUDA_VISIBLE_DEVICES), and `trainer.device: gpu` is an error.

The parent process is the only writer of matrix state (cell.json, failed/, results.*); workers
only write their run directory through `effrecipes.runner.run`. It holds `<matrix_dir>/.lock`
for the whole run.
"""
from __future__ import annotations

import ctypes
import fnmatch
import inspect
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, TextIO

from effrecipes.errors import UserError
from effrecipes.wandb_mode import OFFLINE_HINT_SAID, offline_hint
from effrecipes.matrix.cells import Cell, Matrix, check_valid
from effrecipes.matrix.results import summary_table, write_results
from effrecipes.matrix.reuse import copy_run, find_reusable
from effrecipes.matrix.spec import spec_as_run
from effrecipes.recipe import validate_recipe
from effrecipes.matrix.state import (DIVERGED, DONE, FAILED, FINISHED, INTERRUPTED, PENDING,
                                     RUNNING, MatrixLock, atomic_write_json, atomic_write_text,
                                     classify, clean_partial, clear_failed, finished_metrics,
                                     metrics_status, read_json, record_path, resumable,
                                     sweep_stale, write_failed, write_record)

log = logging.getLogger(__name__)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: Optional[int] = None) -> Optional[int]:
    """Torch threads for each of `workers` local workers: cores // workers, so workers never
    oversubscribe the cores. None for a single worker: it may use every core, and leaving
    $EFFRECIPES_THREADS unset keeps the runner's own rule (1 thread for tiny steps, where more
    threads are much slower; all cores otherwise)."""
    cores = cores or available_cores()
    if max(1, workers) == 1:
        return None
    return max(1, cores // workers)


# --------------------------------------------------------------------------- the cell function

_IN_CELL = False
_PARENT: Optional[int] = None  # the composer-ablate process, recorded when the worker starts


def _parent_gone() -> bool:
    return _PARENT is not None and os.getppid() != _PARENT


def _on_sigterm(signum: int, frame: Any) -> None:
    """Worker SIGTERM outside training (the runner handles it during training): abandon the cell
    being prepared; an idle worker ignores it so the pool survives, unless its parent is gone
    (then nothing can ever send it work: it exits)."""
    if _IN_CELL:
        raise KeyboardInterrupt
    if _parent_gone():
        os._exit(0)


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the composer-ablate process dies, even by SIGKILL (the
    worker then stops after its batch and saves a resumable cell, as on Ctrl-C); without this,
    orphaned workers kept training cells that the next run would mark as running."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(threads: Optional[int]) -> None:
    global _PARENT
    _PARENT = os.getppid()
    _die_with_parent()
    if threads:
        os.environ["EFFRECIPES_THREADS"] = str(threads)
    else:
        os.environ.pop("EFFRECIPES_THREADS", None)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ[OFFLINE_HINT_SAID] = "1"  # the matrix says it once, not every cell
    # Lazy: torch and Composer, paid once per worker, not in a cell's time; the parent process
    # never imports them (Composer's import-time signal handlers would replace its own).
    import effrecipes.runner  # noqa: F401

    # After the import: Composer installs SIGINT/SIGTERM handlers that sys.exit() when imported.
    # Ctrl-C reaches the whole process group: the parent decides what to do and forwards SIGTERM.
    # (During training the runner's own SIGINT/SIGTERM handler stops after the batch and saves.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)


def run_cell(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one cell's recipe (in a worker process or a Ray task); never raises for a failed run.

    payload: {"cell_id", "recipe": resolved recipe as a JSON-able dict, "threads": int,
    "resume": bool (continue an interrupted run directory), "gpus": GPUs reserved for the cell
    (Ray only; 0 = train on the CPU)}. Returns {"cell_id", "ok", "seconds"}
    plus "status"/"run_dir" on success, "interrupted", or "error"/"error_type"/"traceback".
    """
    global _IN_CELL
    t0 = time.perf_counter()
    cid = payload["cell_id"]
    if payload.get("threads"):
        os.environ["EFFRECIPES_THREADS"] = str(payload["threads"])
    if "gpus" in payload:  # a Ray task: a worker process may run cells with and without GPUs
        from effrecipes.device import DEVICE_ENV  # lazy: device imports torch (see _init_worker)

        if payload["gpus"] > 0:
            os.environ.pop(DEVICE_ENV, None)
        else:
            os.environ[DEVICE_ENV] = "cpu"
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ[OFFLINE_HINT_SAID] = "1"  # Ray tasks too
    logging.getLogger("effrecipes").setLevel(logging.ERROR)  # warnings are kept in metrics.json
    _IN_CELL = True
    try:
        from effrecipes import runner  # lazy: torch and Composer (see _init_worker)

        recipe = validate_recipe(payload["recipe"], file=f"cell {cid}")
        result = None
        if payload.get("resume") and "resume" in inspect.signature(runner.run).parameters:
            try:
                result = runner.run(recipe, quiet=True, resume=True)
            except UserError as e:  # not resumable after all: train it from scratch
                log.warning("cell %s: cannot resume (%s); training it again", cid, e)
        if result is None:
            result = runner.run(recipe, quiet=True)
        m = result.metrics
        status = INTERRUPTED if m.get("stop_reason") == INTERRUPTED else metrics_status(m)
        return {"cell_id": cid, "ok": status != INTERRUPTED, "status": status,
                "interrupted": status == INTERRUPTED, "run_dir": str(result.run_dir),
                "seconds": time.perf_counter() - t0, "test_accuracy": m.get("test_accuracy")}
    except KeyboardInterrupt:
        return {"cell_id": cid, "ok": False, "interrupted": True, "seconds": time.perf_counter() - t0}
    except UserError as e:
        return {"cell_id": cid, "ok": False, "error": str(e), "error_type": type(e).__name__,
                "traceback": None, "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - any failure of one cell is recorded, the matrix goes on
        msg = " ".join(str(e).split()) or "(no message)"
        return {"cell_id": cid, "ok": False, "error": f"{type(e).__name__}: {msg}",
                "error_type": type(e).__name__, "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - t0}
    finally:
        _IN_CELL = False
        if _parent_gone():  # the cell was saved (resumable); nobody is left to send more work
            os._exit(0)


# --------------------------------------------------------------------------- progress

class Progress:
    """Cells done / running / failed / skipped; one line per update when not a TTY."""

    def __init__(self, total: int, skipped: int, stream: Optional[TextIO] = None,
                 tty: Optional[bool] = None, quiet: bool = False) -> None:
        self.total, self.skipped = total, skipped
        self.done = self.diverged = self.failed = self.interrupted = 0
        self.running: set[str] = set()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._status_shown = False

    @property
    def pending(self) -> int:
        return (self.total - self.skipped - self.done - self.diverged - self.failed
                - self.interrupted - len(self.running))

    def counts(self) -> str:
        return (f"done {self.done}, diverged {self.diverged}, running {len(self.running)}, "
                f"failed {self.failed}, skipped {self.skipped}, pending {self.pending}"
                + (f", interrupted {self.interrupted}" if self.interrupted else ""))

    def status(self) -> str:
        fin = self.skipped + self.done + self.diverged + self.failed + self.interrupted
        return f"[{fin}/{self.total}] {self.counts()}"

    def _emit(self, event: Optional[str]) -> None:
        """TTY: events scroll above one status line redrawn in place; otherwise one line per
        update (status | event)."""
        if self.quiet:
            return
        if self.tty:
            if event:
                self.stream.write("\r\033[K" + event + "\n")
            self.stream.write("\r\033[K" + self.status())
            self._status_shown = True
        else:
            self.stream.write(f"{self.status()} | {event}\n")
        self.stream.flush()

    def start(self, cid: str, note: str = "") -> None:
        self.running.add(cid)
        self._emit(None if self.tty else f"started {cid}{f' ({note})' if note else ''}")

    def finish(self, cid: str, status: str, detail: str = "") -> None:
        self.running.discard(cid)
        if status == DONE:
            self.done += 1
        elif status == DIVERGED:
            self.diverged += 1
        elif status == FAILED:
            self.failed += 1
        elif status == INTERRUPTED:
            self.interrupted += 1
        sep = ": " if status == FAILED else " "
        self._emit(f"{status} {cid}{(sep + detail) if detail else ''}")

    def close(self) -> None:
        if self.tty and self._status_shown and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------- executors



class LocalExecutor:
    """N spawn worker processes; a crashed worker re-queues (once) only the cells in flight."""

    def __init__(self, workers: int, threads: Optional[int],
                 notice: Callable[[str], None] = lambda text: None) -> None:
        self.workers = max(1, workers)
        self.threads = threads
        self.window = self.workers
        self.notice = notice

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.threads,))

    @staticmethod
    def _signal_workers(pool: ProcessPoolExecutor, sig: int) -> None:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                os.kill(proc.pid, sig)
            except (ProcessLookupError, AttributeError):
                pass

    def run(self, payloads: list[dict[str, Any]], started: Callable[[dict[str, Any]], None],
            finished: Callable[[dict[str, Any]], None]) -> None:
        queue = list(payloads)
        crashes: dict[str, int] = {}
        pool = self._pool()
        inflight: dict[Future, dict[str, Any]] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < self.window:
                    p = queue.pop(0)
                    p["threads"] = self.threads
                    started(p)
                    inflight[pool.submit(run_cell, p)] = p
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                lost: list[dict[str, Any]] = []
                for fut in done:
                    p = inflight.pop(fut)
                    try:
                        res = fut.result()
                    except BrokenProcessPool:
                        lost.append(p)
                        continue
                    finished(res)
                if lost:  # a worker died: the pool is gone, and with it every cell in flight
                    lost += list(inflight.values())
                    inflight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    for p in reversed(lost):
                        crashes[p["cell_id"]] = crashes.get(p["cell_id"], 0) + 1
                        if crashes[p["cell_id"]] >= 2:
                            finished({"cell_id": p["cell_id"], "ok": False, "error_type": "WorkerDied",
                                      "error": "a worker process died twice while running this cell "
                                      "(killed, out of memory, or crashed)", "traceback": None})
                        else:
                            finished({"cell_id": p["cell_id"], "requeue": True})
                            queue.insert(0, p)
                    pool = self._pool()
        except KeyboardInterrupt:
            self._stop(pool, inflight, finished)
            raise
        finally:
            pool.shutdown(wait=not inflight, cancel_futures=True)

    def _stop(self, pool: ProcessPoolExecutor, inflight: dict[Future, dict[str, Any]],
              finished: Callable[[dict[str, Any]], None]) -> None:
        """First Ctrl-C: running cells stop after their current batch and save a resumable run
        directory (the runner's SIGTERM handling); a second Ctrl-C kills the workers."""
        if not inflight:
            return
        self.notice(f"interrupted: stopping {len(inflight)} running cell(s) after their current "
                    "batch so they can resume (Ctrl-C again to kill them)")
        self._signal_workers(pool, signal.SIGTERM)
        try:
            while inflight:
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    p = inflight.pop(fut)
                    try:
                        res = fut.result()
                    except BaseException:  # noqa: BLE001 - the worker went away
                        res = {"cell_id": p["cell_id"], "ok": False, "interrupted": True}
                    finished(res)
        except KeyboardInterrupt:
            self._signal_workers(pool, signal.SIGKILL)
            for p in inflight.values():
                finished({"cell_id": p["cell_id"], "ok": False, "interrupted": True})
            inflight.clear()


class RayExecutor:
    """Each cell is a Ray task (`num_cpus`, `num_gpus` per cell) calling `run_cell`."""

    def __init__(self, address: Optional[str], cpus_per_cell: float, gpus_per_cell: float,
                 window: Optional[int], notice: Callable[[str], None] = lambda text: None) -> None:
        try:
            import ray  # noqa: F401  (optional dependency: the ray extra)
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'effrecipes[ray]'") from None
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus, self.gpus = cpus_per_cell, gpus_per_cell
        self.window = window
        self.notice = notice
        self.started_ray = False

    def __enter__(self) -> "RayExecutor":
        import ray  # optional dependency (the ray extra), checked in __init__

        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, log_to_driver=False)
                else:
                    ray.init(include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UserError(f"cannot connect to Ray at {self.address or 'a local instance'}: "
                                f"{' '.join(str(e).split())[:200]}",
                                hint="check --ray-address / RAY_ADDRESS") from None
            self.started_ray = True
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if self.gpus > gpus:  # an autoscaling cluster may add GPU nodes later: warn, do not refuse
            self.notice(f"warning: --gpus-per-cell {self.gpus:g} but the Ray cluster has {gpus:g} "
                        "GPUs now; cells wait until GPUs join (--gpus-per-cell 0 trains on CPUs)")
        if self.window is None:
            cpus = float(ray.cluster_resources().get("CPU", 1))
            self.window = max(1, int(cpus // max(self.cpus, 1e-9)))
            if self.gpus > 0:  # e.g. 8 cells at once on an 8-GPU node with --gpus-per-cell 1
                self.window = max(1, min(self.window, int(gpus // self.gpus)))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started_ray:
            import ray  # optional dependency (the ray extra)
            ray.shutdown()

    def run(self, payloads: list[dict[str, Any]], started: Callable[[dict[str, Any]], None],
            finished: Callable[[dict[str, Any]], None]) -> None:
        import ray  # optional dependency (the ray extra)

        remote = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(run_cell)
        threads = max(1, int(self.cpus))
        queue = list(payloads)
        inflight: dict[Any, dict[str, Any]] = {}
        try:
            while queue or inflight:
                while queue and len(inflight) < (self.window or 1):
                    p = queue.pop(0)
                    p["threads"] = threads
                    p["gpus"] = self.gpus
                    started(p)
                    inflight[remote.remote(p)] = p
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    p = inflight.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - task crashed / worker died
                        res = {"cell_id": p["cell_id"], "ok": False, "error_type": type(e).__name__,
                               "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
                               "traceback": str(e)}
                    finished(res)
        except KeyboardInterrupt:
            if inflight:
                self.notice(f"interrupted: cancelling {len(inflight)} running Ray task(s)")
            for ref, p in list(inflight.items()):
                ray.cancel(ref)
                finished({"cell_id": p["cell_id"], "ok": False, "interrupted": True})
            inflight.clear()
            raise


# --------------------------------------------------------------------------- orchestration

@dataclass
class MatrixOutcome:
    counts: dict[str, int]
    ran: int
    skipped: int
    failed_ids: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)


def select(matrix: Matrix, only: Optional[Iterable[str]]) -> list[Cell]:
    pats = [p for p in (only or []) if p]
    if not pats:
        return list(matrix.cells)
    chosen = [c for c in matrix.cells if any(fnmatch.fnmatchcase(c.id, p) for p in pats)]
    if not chosen:
        raise UserError(f"--only {' '.join(pats)} matches none of the {len(matrix.cells)} cells "
                        f"(e.g. {matrix.cells[0].id}); patterns are globs such as 'blurpool*' or "
                        "'*__s0'")
    return chosen


def plan_work(matrix: Matrix, cells: list[Cell], retry_failed: bool
              ) -> tuple[list[Cell], list[tuple[Cell, str]], dict[str, str]]:
    """(cells to run, (cell, status) skipped, why each runs)."""
    to_run, skipped, why = [], [], {}
    for c in cells:
        status, reason = classify(matrix, c)
        if status in FINISHED or (status == FAILED and not retry_failed):
            skipped.append((c, status))
        else:
            to_run.append(c)
            why[c.id] = "retry failed" if status == FAILED else reason
    return to_run, skipped, why


def _write_provenance(matrix: Matrix) -> None:
    """spec.yaml (the spec as run, command-line overrides applied) and matrix.json (the cells)."""
    try:
        atomic_write_text(matrix.matrix_dir / "spec.yaml",
                          spec_as_run(matrix.spec_path, matrix.spec_overrides, matrix.base_path))
    except (OSError, UserError):  # the spec file went away or changed since: provenance only
        pass
    atomic_write_json(matrix.matrix_dir / "matrix.json", {
        "name": matrix.spec.name, "spec": str(matrix.spec_path.resolve()),
        "base": str(matrix.base_path), "view": matrix.spec.view, "mode": matrix.spec.algorithms.mode,
        "techniques": matrix.techniques, "grid": matrix.grid_keys, "seeds": matrix.spec.seeds,
        "cells": [{"cell_id": c.id, "hash": c.hash, "overrides": c.overrides} for c in matrix.cells]})


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _InterruptSignals:
    """While a matrix runs, Ctrl-C and SIGTERM raise KeyboardInterrupt in the parent (Composer's
    import-time handlers would sys.exit() instead), so running cells can stop and save."""

    def __enter__(self) -> "_InterruptSignals":
        self.old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, _raise_interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class MatrixRun:
    """One invocation of composer-ablate on a matrix: the bookkeeping the executors call back into
    as cells start and end (cell records, failure records, results tables, progress lines)."""

    def __init__(self, matrix: Matrix, why: dict[str, str], failed_ids: list[str],
                 progress: "Progress") -> None:
        self.matrix, self.why, self.failed_ids, self.progress = matrix, why, failed_ids, progress
        self.by_id = {c.id: c for c in matrix.cells}
        self.running: set[str] = set()

    def started(self, payload: dict[str, Any]) -> None:
        cid = payload["cell_id"]
        cell = self.by_id[cid]
        clean_partial(self.matrix, cell)
        payload["resume"] = resumable(self.matrix, cell)  # e.g. re-queued after a worker crash
        if payload["resume"]:
            self.why[cid] = "interrupted (resumable)"
        write_record(self.matrix, cell, RUNNING, started=time.time(), reason=self.why.get(cid))
        self.running.add(cid)
        reason = self.why.get(cid, "new")
        self.progress.start(cid, "" if reason == "new" else
                            "resuming" if reason == "interrupted (resumable)" else reason)

    def finished(self, res: dict[str, Any]) -> None:
        cid = res["cell_id"]
        cell = self.by_id[cid]
        self.running.discard(cid)
        if res.get("requeue"):
            write_record(self.matrix, cell, PENDING, note="worker process died; re-queued")
            self.progress.finish(cid, PENDING, "(worker died; re-queued)")
            return
        if res.get("interrupted"):
            write_record(self.matrix, cell, INTERRUPTED, seconds=res.get("seconds"),
                         resumable=resumable(self.matrix, cell))
            self.progress.finish(cid, INTERRUPTED)
        elif not (res.get("ok") and self._record_done(cell, res)):
            self._record_failed(cell, res)
        write_results(self.matrix, frozenset(self.running))

    def _record_done(self, cell: Cell, res: dict[str, Any]) -> bool:
        metrics = finished_metrics(self.matrix, cell)
        if metrics is None:
            res.update(ok=False, error_type="MissingRunDir", traceback=None,
                       error=f"the run finished but {self.matrix.run_dir(cell)} holds no matching "
                       "metrics.json (with Ray, the matrix directory must be on a filesystem "
                       "shared by every node)")
            return False
        status, secs, acc = metrics_status(metrics), res.get("seconds"), metrics.get("test_accuracy")
        clear_failed(self.matrix, cell)
        write_record(self.matrix, cell, status, seconds=secs, test_accuracy=acc,
                     stop_reason=metrics.get("stop_reason"))
        self.progress.finish(cell.id, status, (f"acc {acc:.2f}% " if isinstance(acc, (int, float))
                                               else "") + f"in {secs or 0:.1f}s")
        return True

    def _record_failed(self, cell: Cell, res: dict[str, Any]) -> None:
        write_failed(self.matrix, cell, res.get("error", "unknown error"),
                     error_type=res.get("error_type", "Error"), traceback=res.get("traceback"),
                     seconds=res.get("seconds"))
        self.failed_ids.append(cell.id)
        self.progress.finish(cell.id, FAILED, str(res.get("error", "")))


def _reuse(matrix: Matrix, to_run: list[Cell], sources: Sequence[Path], stream: TextIO,
           quiet: bool) -> tuple[list[Cell], list[tuple[Cell, str]]]:
    """Copy in finished runs of identical recipes from `sources` (--reuse-from): (cells still to
    run, (cell, status) reused). A copy that fails leaves the cell to run, with a notice."""
    found = find_reusable(matrix, to_run, list(sources))
    reused: list[tuple[Cell, str]] = []
    for cell in [c for c in to_run if c.id in found]:
        problem = copy_run(matrix, cell, found[cell.id])
        metrics = None if problem else finished_metrics(matrix, cell)
        if metrics is None:
            if not quiet:
                stream.write(f"{cell.id}: not reused ({problem or 'the copy does not match'}); "
                             "it will train\n")
            continue
        status = metrics_status(metrics)
        clear_failed(matrix, cell)
        write_record(matrix, cell, status, reused_from=str(found[cell.id]),
                     test_accuracy=metrics.get("test_accuracy"),
                     stop_reason=metrics.get("stop_reason"))
        reused.append((cell, status))
    ids = {c.id for c, _ in reused}
    if reused and not quiet:
        stream.write(f"reused {len(reused)} finished run(s) of identical recipes from "
                     f"{', '.join(str(s) for s in sources)} (cell.json records each source)\n")
    return [c for c in to_run if c.id not in ids], reused


def _sync_records(matrix: Matrix, skipped: list[tuple[Cell, str]]) -> None:
    """Keep cell.json in step with the run directories (e.g. after a kill)."""
    for c, status in skipped:
        rec = read_json(record_path(matrix, c))
        if status in FINISHED and (not rec or rec.get("status") != status or rec.get("hash") != c.hash):
            write_record(matrix, c, status, note="found finished run directory")


def _announce(matrix: Matrix, cells: list[Cell], to_run: list[Cell],
              skipped: list[tuple[Cell, str]], stream: TextIO) -> None:
    hint = offline_hint([c.recipe for c in cells])
    if hint:
        stream.write(hint + "\n")
    n_fail = sum(1 for _, s in skipped if s == FAILED)
    stream.write(f"matrix {matrix.spec.name}: {len(matrix.cells)} cells, {len(cells)} selected, "
                 f"{len(to_run)} to run, {len(skipped)} skipped (finished"
                 f"{f'; {n_fail} failed before, use --retry-failed' if n_fail else ''}) -> "
                 f"{matrix.matrix_dir}\n")
    stream.flush()


def run_matrix(matrix: Matrix, *, executor: str = "local", workers: int = 1,
               retry_failed: bool = False, only: Optional[Iterable[str]] = None,
               ray_address: Optional[str] = None, cpus_per_cell: float = 1.0,
               gpus_per_cell: float = 0.0, window: Optional[int] = None,
               stream: Optional[TextIO] = None, quiet: bool = False,
               reuse_from: Sequence[Path] = ()) -> MatrixOutcome:
    """Run (or resume) every selected cell that is not finished, first copying in finished runs
    of identical recipes from `reuse_from`; rebuild results as cells end."""
    stream = stream or sys.stderr
    check_valid(matrix)
    cells = select(matrix, only)
    lock = MatrixLock(matrix.matrix_dir).acquire()
    try:
        sweep_stale(matrix)
        _write_provenance(matrix)
        to_run, skipped, why = plan_work(matrix, cells, retry_failed)
        _sync_records(matrix, skipped)
        if reuse_from:
            to_run, reused = _reuse(matrix, to_run, reuse_from, stream, quiet)
            skipped += reused
        write_results(matrix, frozenset())
        if not quiet:
            _announce(matrix, cells, to_run, skipped, stream)
        run = MatrixRun(matrix, why, [c.id for c, s in skipped if s == FAILED],
                        Progress(len(cells), len(skipped), stream, quiet=quiet))
        payloads = [{"cell_id": c.id, "recipe": c.recipe.model_dump(mode="json")}  # type: ignore[union-attr]
                    for c in to_run]

        def notice(text: str) -> None:
            if not quiet:
                stream.write(f"\n{text}\n")
                stream.flush()

        try:
            with _InterruptSignals():
                if payloads and executor == "ray":
                    with RayExecutor(ray_address, cpus_per_cell, gpus_per_cell, window,
                                     notice) as ex:
                        ex.run(payloads, run.started, run.finished)
                elif payloads:
                    LocalExecutor(workers, threads_per_worker(workers), notice).run(
                        payloads, run.started, run.finished)
        finally:
            run.progress.close()
            results = write_results(matrix, frozenset())
        failed_now = [cid for cid in dict.fromkeys(run.failed_ids)
                      if classify(matrix, run.by_id[cid])[0] == FAILED]
        return MatrixOutcome(results["counts"], len(to_run), len(skipped), failed_now, results)
    finally:
        lock.release()


def format_outcome(matrix: Matrix, outcome: MatrixOutcome) -> str:
    c = outcome.counts
    lines = [f"matrix {matrix.spec.name}: ran {outcome.ran}, skipped {outcome.skipped}; "
             f"done {c.get(DONE, 0)}, diverged {c.get(DIVERGED, 0)}, failed {c.get(FAILED, 0)}, "
             f"interrupted {c.get(INTERRUPTED, 0)}, pending {c.get(PENDING, 0)}",
             summary_table(matrix, outcome.results.get("aggregate", [])),
             f"results: {matrix.matrix_dir / 'results.md'} (also results.csv, results.json)"]
    if outcome.failed_ids:
        lines.append(f"failed cells ({len(outcome.failed_ids)}): {', '.join(outcome.failed_ids[:10])}"
                     f"{' ...' if len(outcome.failed_ids) > 10 else ''}; errors in "
                     f"{matrix.matrix_dir / 'failed'}/; re-run them with --retry-failed")
    return "\n".join(lines)


__all__ = ["run_matrix", "run_cell", "LocalExecutor", "RayExecutor", "Progress", "select",
           "plan_work", "format_outcome", "threads_per_worker", "available_cores", "RUNNING"]
