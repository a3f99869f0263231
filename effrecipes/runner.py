"""One run: recipe -> data, model, algorithms -> measured plan -> Composer Trainer -> run directory.

The run directory is the contract with everything after training (matrix tables, reports,
resume): the resolved recipe, `metrics.json`, `history.csv` and the checkpoint. It is written
under a temporary name and renamed into place when the run ends, so a crash never leaves a
half-written run directory behind.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import signal
import tempfile
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from composer import Trainer
from composer.algorithms import ChannelsLast
from composer.core import Algorithm, DataSpec
from composer.models import ComposerClassifier
from composer.utils import dist, reproducibility
from composer.utils.checkpoint import save_checkpoint
from torchmetrics import MetricCollection

from effrecipes import algorithms as algos
from effrecipes.budget import (BudgetLedger, BudgetPlan, FlopBudget, forward_flops_per_sample,
                               fvcore_forward_macs_per_sample, plan_budget, train_step_flops)
from effrecipes.callbacks import (BestWeights, EpochSync, EvalOnRank0Model, History, LiveProgress,
                                  RunGuard)
from effrecipes.data import DataBundle, build_data, stand_in_data
from effrecipes.data.shards import real_samples
from effrecipes.errors import DataMissing, RecipeError, UserError, writable_dir
from effrecipes import device as devices
from effrecipes.lean_engine import lean_train_data, make_lean
from effrecipes.evaluate import (evaluate, measure_device_latency, measure_latency, model_size_bytes,
                                 validation_metrics)
from effrecipes.models import build_model, network_of
from effrecipes.optim import build_optimizer, build_scheduler
from effrecipes.recipe import Recipe, recipe_to_yaml
from effrecipes.ranks import broadcast_from_rank0
from effrecipes.rundir import (CHECKPOINT_FILE, HISTORY_FILE, METRICS_FILE, RECIPE_FILE, RESUME_FILE,
                               RunMetrics, StopReason, write_metrics)
from effrecipes.safe_load import verify_checkpoint

log = logging.getLogger(__name__)




@dataclass
class Prepared:
    """Everything built for a run, before training starts."""

    recipe: Recipe
    data: DataBundle
    model: ComposerClassifier
    algorithms: list[Algorithm]
    effects: dict[str, dict[str, Any]]
    plan: BudgetPlan
    params_after_surgery: int = 0
    trainer: Optional[Trainer] = None
    warnings: list[str] = field(default_factory=list)
    run_name: str = ""  # the run directory's name (set by `run`)


@dataclass
class RunResult:
    run_dir: Optional[Path]
    metrics: dict[str, Any]


# Below this many FLOPs per batch, one intra-op thread is faster than several: the 1.5K model at
# batch 32 on 8x8 digits (0.01 GFLOPs per batch) trained at 44 samples/s on 2 threads vs 4,192 on
# 1 (benchmarks/README.md). Larger steps use the cores that are free: on an idle core 2 threads
# gave 1.6x (1.5K model, batch 128, 0.3 GFLOPs) and 1.5-1.6x (143K model); on a core busy with
# another job they were 2.5-15x slower (each OpenMP barrier waits for a descheduled thread).
SMALL_STEP_FLOPS = 1e8


def runnable_others() -> int:
    """Other runnable tasks right now (Linux /proc/loadavg field 4, minus this process): the
    median of three samples 20 ms apart, so a passing shell command does not count. 0 elsewhere."""
    samples = []
    for i in range(3):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return 0
        samples.append(max(0, running - 1))
        if i < 2:
            time.sleep(0.02)
    return sorted(samples)[1]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(threads: Optional[int], step_flops: Optional[float] = None) -> int:
    """Intra-op threads: explicit; else $EFFRECIPES_THREADS (a matrix divides the cores among its
    workers); else 1 for tiny steps and the cores not busy with other jobs otherwise."""
    share = int(os.environ.get("EFFRECIPES_THREADS", 0))
    if threads:
        n = threads
    elif step_flops is not None and step_flops < SMALL_STEP_FLOPS:
        n = 1
    elif share:
        n = share
    else:
        n = max(1, available_cores() - runnable_others())
    torch.set_num_threads(max(1, n))
    return n


def prepare(recipe: Recipe, *, data_may_be_missing: bool = False) -> Prepared:
    """Build data, model and algorithms; measure a real training step; plan the budget.

    `data_may_be_missing` (for `--dry-run`): a dataset that is not on disk and cannot be
    downloaded is replaced by random batches of its registered shape and size, with a note."""
    reproducibility.seed_all(recipe.seed)  # before the model is built
    names = recipe.algorithm_names
    per_sample = any(algos.info(n).dataset_transform for n in names)
    notes: list[str] = []
    data = _build_data(recipe, per_sample, data_may_be_missing, notes)
    try:
        module = build_model(recipe.model.name, data.in_channels, data.num_classes,
                             data.image_size, **recipe.model.kwargs)
    except (TypeError, ValueError) as e:  # a builder's argument check (e.g. a torchvision kwarg)
        raise RecipeError(f"cannot build {recipe.model.name}: {e}", field="model.kwargs") from None
    sample = next(iter(data.train))
    effects = algos.describe_effects(module, recipe.algorithms, sample)
    noops = {n: e["noop_reason"] for n, e in effects.items() if e["noop_reason"]}
    if noops and recipe.strict:
        name, reason = next(iter(noops.items()))
        raise RecipeError(f"changes nothing: {reason} (strict: true)", field=f"algorithms.{name}")
    notes += [f"algorithm {n} changes nothing: {reason}" for n, reason in noops.items()]

    # Composer computes train accuracy every batch (1.1-1.2 ms/batch measured, benchmarks/README.md);
    # nothing here reads it, so it is kept only for W&B dashboards.
    model = ComposerClassifier(module, num_classes=data.num_classes,
                               train_metrics=None if recipe.loggers.wandb.enabled
                               else MetricCollection([]),
                               val_metrics=validation_metrics(data.num_classes))
    algorithm_objs = algos.build_algorithms(recipe.algorithms)
    if recipe.model.channels_last and "channels_last" not in names:
        # Last in the list: Composer runs INIT algorithms in order, so layers added by surgery
        # (BlurPool, SqueezeExcite) are converted too.
        algorithm_objs.append(ChannelsLast())

    # Apply model surgery to a copy exactly as the Trainer will, and measure a real step on it.
    surgered = algos.apply_surgery(copy.deepcopy(module), recipe.algorithms)
    plan = _plan(recipe, surgered, model, sample, len(data.train))
    prepared = Prepared(recipe, data, model, algorithm_objs, effects, plan,
                        params_after_surgery=sum(t.numel() for t in surgered.parameters()),
                        warnings=notes)
    return prepared


def _build_data(recipe: Recipe, per_sample: bool, data_may_be_missing: bool,
                notes: list[str]) -> DataBundle:
    """The recipe's loaders; for a dry run, a registered dataset that is not there yet is
    replaced by random batches of its shape and size (with a note)."""
    try:
        return build_data(recipe.data, recipe.seed, per_sample=per_sample,
                          pin_memory=devices.will_train_on_gpu(recipe.trainer))
    except DataMissing as e:
        stand_in = stand_in_data(recipe.data, recipe.seed) if data_may_be_missing else None
        if stand_in is None:
            raise
        why = " ".join(str(e).split())
        notes.append(f"data not available yet ({why[:150] + '...' if len(why) > 150 else why}); "
                     f"planned from random batches of the registered shape {stand_in.in_channels}x"
                     f"{stand_in.image_size}x{stand_in.image_size} and size ({stand_in.num_train:,} "
                     "training images after the split): the plan is the real one, nothing was trained")
        return stand_in


def _plan(recipe: Recipe, surgered: nn.Module, model: ComposerClassifier,
          sample: tuple[torch.Tensor, torch.Tensor], batches_per_epoch: int) -> BudgetPlan:
    """Measure one real forward+backward pass of the surgered model (in its dearest state) and
    its inference cost, and turn the caps into a plan; a cap that affords no batch is an error."""
    world = dist.get_world_size()
    x, y = sample
    shape = tuple(x.shape[1:])
    pass_local = train_step_flops(algos.dearest_step_model(copy.deepcopy(surgered), recipe.algorithms),
                                  _loss(model), (x, y))
    fwd = forward_flops_per_sample(surgered, shape, batch=x.shape[0])
    fv = fvcore_forward_macs_per_sample(surgered, shape, batch=x.shape[0])
    b = recipe.budget
    plan = plan_budget(flops_cap=b.flops, max_epochs=b.max_epochs, max_seconds=b.max_seconds,
                       pass_flops=pass_local * world, forward_flops_per_sample=fwd, fvcore_macs=fv,
                       global_batch_size=x.shape[0] * world, batches_per_epoch=batches_per_epoch,
                       cost=algos.cost_of(recipe.algorithms))
    if plan.flops_cap is not None and plan.flops_cap < plan.step_flops:
        raise RecipeError(f"the cap affords no training batch: one batch costs up to "
                          f"{plan.step_flops:.3g} FLOPs", field="budget.flops",
                          hint="raise budget.flops or lower data.batch_size")
    if plan.planned_batches < 1:
        raise RecipeError(f"budget.max_epochs={b.max_epochs} is less than one batch "
                          f"({plan.batches_per_epoch} batches per epoch)", field="budget.max_epochs",
                          hint="raise budget.max_epochs")
    return plan


def _loss(model: ComposerClassifier):
    """Loss on raw (outputs, targets), as ComposerClassifier computes it."""
    return lambda out, y: model._loss_fn(out, y)


def dry_run_report(prepared: Prepared) -> dict[str, Any]:
    """What `--dry-run` prints: resolved recipe, params, FLOPs, plan, algorithm effects."""
    module = prepared.model.module
    p = prepared.plan
    return {
        "recipe": prepared.recipe.model_dump(mode="json"),
        "params": sum(t.numel() for t in module.parameters()),
        "params_after_surgery": prepared.params_after_surgery,
        "train_flops_per_sample": p.train_flops_per_sample,
        "forward_flops_per_sample": p.forward_flops_per_sample,
        "fvcore_forward_macs_per_sample": p.fvcore_forward_macs_per_sample,
        "plan": p.as_dict(),
        "algorithms": prepared.effects,
        "warnings": prepared.warnings,
    }


# --------------------------------------------------------------------------- run directory

LATEST = "-latest"  # `<root>/<name>-latest` -> the newest run directory of a recipe


def run_dir_for(recipe: Recipe) -> Path:
    """`output.run_name` when given (matrix cells, reruns meant to replace); else a new directory
    `<name>-<YYYYmmdd-HHMMSS>` (as Composer and timm name runs), so a second run never collides
    with or replaces the first."""
    root = Path(recipe.output.root).expanduser()
    if recipe.output.run_name:
        return root / recipe.output.run_name
    base = f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    final, n = root / base, 2
    while final.exists() or final.is_symlink() or any(root.glob(f".{final.name}.tmp-*")):
        final, n = root / f"{base}-{n}", n + 1
    return final


def latest_link(recipe: Recipe) -> Path:
    return Path(recipe.output.root).expanduser() / f"{recipe.name}{LATEST}"


def _point_latest(recipe: Recipe, final: Path) -> None:
    """`<name>-latest` -> the run just written (replaced atomically; a relative link)."""
    link = latest_link(recipe)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(final.name, tmp)
    os.replace(tmp, link)


def _check_output(recipe: Recipe) -> Path:
    final = run_dir_for(recipe)
    root = final.parent
    if final.is_symlink():
        raise UserError("the run directory's path is a symbolic link; effrecipes writes real "
                        "directories only", field="output.run_name", file=str(final),
                        hint="remove the link or choose another output.run_name")
    if final.exists() and not recipe.output.overwrite:
        raise UserError("run directory already exists", field="output.run_name", file=str(final),
                        hint="set output.overwrite=true, choose another output.run_name, "
                        "or use --resume")
    writable_dir(root, field="output.root", hint="choose a writable output.root", create=False)
    return final


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _claim_run_dir(final: Path, overwrite: bool) -> None:
    """Temporary directories `.NAME.tmp-PID` of processes that died (SIGKILL, a crash of the
    machine) are removed, with a note; one of a live process means another run is writing this
    run directory right now, which is an error (its result would silently replace ours)."""
    others: list[tuple[Path, int]] = []
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid():
            others.append((path, int(pid)))
    live = [pid for _, pid in others if _pid_alive(pid)]
    if live and not overwrite:
        raise UserError(f"another run (process {live[0]}) is writing this run directory now",
                        file=str(final), field="output.run_name",
                        hint="wait for it, or choose another output.run_name")
    for stale, pid in others:
        if pid in live:
            continue
        log.warning("removing %s: the unfinished run of a process that no longer exists", stale)
        print(f"note: removed {stale.name}, left by run process {pid} that was killed",
              file=sys.stderr)
        shutil.rmtree(stale, ignore_errors=True)


def _finalise(tmp: Path, final: Path) -> None:
    """Move a finished run into place (replacing an old one only when overwrite was asked)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


# --------------------------------------------------------------------------- run

def run(recipe: Recipe, *, threads: Optional[int] = None, quiet: bool = False,
        resume: bool = False) -> RunResult:
    """Train one recipe until its budget binds; write and return its run directory and metrics.

    Ctrl-C or SIGTERM stops at the end of the current batch and writes a resumable run directory
    (`stop_reason: interrupted`); `resume=True` continues it with the FLOPs already spent.
    """
    set_threads(threads)
    rank = dist.get_global_rank()
    if dist.get_world_size() > 1 and resume:
        raise UserError("--resume is supported for single-process runs only", field="--resume")
    if rank == 0:
        final = _check_resume(recipe) if resume else _check_output(recipe)
    else:  # data-parallel ranks > 0 train alongside rank 0; only rank 0 writes the run directory
        final = Path(tempfile.mkdtemp(prefix=f"effrecipes-rank{rank}-")) / recipe.run_name
    wall0 = time.perf_counter()
    prepared = prepare(recipe)
    prepared.run_name = final.name
    set_threads(threads, prepared.plan.step_flops)
    for note in prepared.warnings:
        log.warning(note)
        if not quiet:
            print(f"WARNING: {note}")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if rank == 0:  # only now, with the recipe fully prepared, is anything written
        writable_dir(final.parent, field="output.root", hint="choose a writable output.root")
        _claim_run_dir(final, recipe.output.overwrite)
    if tmp.exists():
        shutil.rmtree(tmp)
    if resume:
        shutil.copytree(final, tmp)
    else:
        tmp.mkdir(parents=True)
    guard = RunGuard(budget=None)  # type: ignore[arg-type]  # the budget is attached in training
    try:
        with _stop_on_signals(guard):
            metrics = _train_and_evaluate(prepared, tmp, quiet=quiet, guard=guard, resume=resume)
        metrics["wall_seconds"] = time.perf_counter() - wall0 + (
            _previous_wall(final) if resume else 0.0)
        write_metrics(tmp, RunMetrics.model_validate(metrics))
        if rank == 0:
            _finalise(tmp, final)
            if not recipe.output.run_name:
                _point_latest(recipe, final)
        else:
            shutil.rmtree(final.parent, ignore_errors=True)
        if guard.write_error is not None:
            _kept_after_write_error(guard.write_error, final, metrics)
    except OSError as e:  # a full disk or a file system gone read-only: one line, not a traceback
        shutil.rmtree(tmp if rank == 0 else final.parent, ignore_errors=True)
        raise UserError(f"cannot write the run directory: {e.strerror or e}", file=str(final),
                        field="output.root", hint="free space or choose another output.root; "
                        "nothing of this run was kept (not even the small resume checkpoint fitted)"
                        ) from None
    except BaseException:
        shutil.rmtree(tmp if rank == 0 else final.parent, ignore_errors=True)
        raise
    return RunResult(final, metrics)


def _kept_after_write_error(fault: tuple[Path, OSError], final: Path, metrics: dict[str, Any]) -> None:
    """A file could not be written during the run (a full disk) but the run was saved: say what
    was kept, in one line, and how to go on."""
    path, error = fault
    what = f"cannot write {path.name}: {error.strerror or error}"
    if metrics.get("stop_reason") == StopReason.INTERRUPTED:
        raise UserError(f"{what}; training stopped and the run was kept resumable", file=str(final),
                        hint="free space, then run the same command with --resume")
    raise UserError(f"{what}; the run finished and was kept without it", file=str(final),
                    hint="free space; the metrics in metrics.json are complete")


@contextlib.contextmanager
def _stop_on_signals(guard: RunGuard) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: finish the batch, save, exit cleanly. A second Ctrl-C aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if guard.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping after this batch and saving "
              "(Ctrl-C again to abort)", file=sys.stderr)
        guard.request_stop()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _check_resume(recipe: Recipe) -> Path:
    """A run can be resumed when it was interrupted and its recipe is unchanged: the named run
    directory, or (no output.run_name) the one `<name>-latest` points to."""
    final = run_dir_for(recipe) if recipe.output.run_name else _latest_target(recipe)
    metrics_path, ckpt = final / METRICS_FILE, final / RESUME_FILE
    if not metrics_path.exists():
        raise UserError("no run to resume here", file=str(final), field="output.run_name",
                        hint="run without --resume first")
    try:
        previous = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError("metrics.json is unreadable; cannot resume", file=str(metrics_path)) from None
    if previous.get("stop_reason") != StopReason.INTERRUPTED or not ckpt.exists():
        raise UserError(f"the run finished (stop_reason: {previous.get('stop_reason')}); "
                        "nothing to resume", file=str(final),
                        hint="set output.overwrite=true to train it again")
    links = [p.name for p in final.rglob("*") if p.is_symlink()]
    if links or (final.is_symlink() and recipe.output.run_name):
        raise UserError(f"the run directory holds symbolic links ({', '.join(links[:3]) or final.name}); "
                        "a resumed run copies real files only", file=str(final),
                        hint="remove the links, or train the run again without --resume")
    saved = (final / RECIPE_FILE).read_text() if (final / RECIPE_FILE).exists() else ""
    if saved != recipe_to_yaml(recipe):
        raise UserError("the recipe changed since the run was interrupted; resuming would mix two "
                        "plans", file=str(final / RECIPE_FILE),
                        hint="resume with the same recipe and overrides")
    verify_checkpoint(ckpt)  # safe unpickler first: Composer's own load runs pickled code
    return final


def _latest_target(recipe: Recipe) -> Path:
    link = latest_link(recipe)
    if not link.is_symlink():
        raise UserError("no run to resume here", file=str(link), field="output.run_name",
                        hint="run without --resume first, or name the run with output.run_name")
    return link.parent / os.readlink(link)


def _previous_wall(final: Path) -> float:
    try:
        return float(json.loads((final / METRICS_FILE).read_text()).get("wall_seconds") or 0.0)
    except (OSError, ValueError):
        return 0.0


@dataclass
class Training:
    """What `_build_trainer` made: the Trainer and the callbacks whose records the metrics read."""

    trainer: Trainer
    budget: FlopBudget
    history: History
    best: Optional[BestWeights]
    device: devices.RunDevice


def _train_and_evaluate(prepared: Prepared, out: Path, *, quiet: bool, guard: RunGuard,
                        resume: bool = False) -> dict[str, Any]:
    """Train, keep the weights the recipe asks for, test them, and return metrics.json's data."""
    (out / RECIPE_FILE).write_text(recipe_to_yaml(prepared.recipe))
    run = _build_trainer(prepared, out, quiet=quiet, guard=guard, resume=resume)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="composer")
        warnings.filterwarnings("ignore", category=UserWarning)
        run.trainer.fit()
    module = _final_module(prepared, run, out, guard)
    metrics = _measure(prepared, run, module)
    if prepared.recipe.loggers.wandb.enabled:
        from effrecipes.wandb_logging import log_summary  # optional: wandb only when asked
        log_summary(metrics)
    run.trainer.close()  # flushes and closes the loggers (W&B finishes its run here)
    return metrics


def _build_trainer(prepared: Prepared, out: Path, *, quiet: bool, guard: RunGuard,
                   resume: bool) -> Training:
    """The Composer Trainer with the budget, history/progress, guard and data-order callbacks."""
    recipe, data, plan, model = prepared.recipe, prepared.data, prepared.plan, prepared.model
    # the device the recipe asks for (one-line RecipeError when absent); the data's uint8 cache and
    # the model go there before the optimizer and the Trainer see them
    run_device = devices.resolve(recipe.trainer)
    data.to(run_device.torch_device)
    model.to(run_device.torch_device)
    optimizer = build_optimizer(recipe.optimizer, model.parameters())
    budget = FlopBudget(plan, max_seconds=recipe.budget.max_seconds,
                        algorithms=tuple(prepared.algorithms), ledger=BudgetLedger())
    guard.budget = budget
    live = (LiveProgress(budget, sys.stderr, tty=sys.stderr.isatty())
            if recipe.loggers.progress_bar and not quiet else None)
    history = History(budget, out / HISTORY_FILE, progress=live, on_write_error=guard.write_failed)
    best = BestWeights() if recipe.eval.checkpoint == "best_val" else None
    callbacks = ([guard, budget, history, EpochSync(data.train)]
                 # several ranks: each evaluates its share of the validation set with rank 0's model
                 + ([EvalOnRank0Model()] if dist.get_world_size() > 1 else [])
                 + ([best] if best else []))
    eval_every = recipe.eval.batches_between_evals(plan.batches_per_epoch, plan.planned_batches)
    schedulers, every_batch = build_scheduler(recipe.scheduler, recipe.optimizer, optimizer,
                                              lambda: budget.projected_batches,
                                              plan.batches_per_epoch)
    loggers = []
    if recipe.loggers.wandb.enabled:
        from effrecipes.wandb_logging import build_wandb_logger  # optional: wandb only when asked
        loggers.append(build_wandb_logger(recipe, run_name=prepared.run_name or None))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="composer")
        warnings.filterwarnings("ignore", category=UserWarning)
        trainer = Trainer(
            model=model, train_dataloader=lean_train_data(data.train, model), optimizers=optimizer,
            eval_dataloader=_eval_data(data.val),
            eval_interval=f"{eval_every}ba" if data.val is not None else 0,
            max_duration=f"{plan.planned_batches}ba", schedulers=schedulers,
            step_schedulers_every_batch=every_batch, algorithms=prepared.algorithms,
            callbacks=callbacks, loggers=loggers, device=run_device.device,
            precision=run_device.precision, compile_config=run_device.compile_config,
            seed=recipe.seed,
            progress_bar=False,  # LiveProgress: the budget's unit, and no config dump first
            log_to_console=False, run_name=prepared.run_name or recipe.run_name,
            python_log_level=None,
            load_path=str(out / RESUME_FILE) if resume else None,
        )
    make_lean(trainer)  # Composer's per-event debug-log formatting, skipped unless ENGINE_DEBUG
    prepared.trainer = trainer
    return Training(trainer, budget, history, best, run_device)


def _eval_data(val: Optional[Iterable]) -> Optional[Any]:
    """The validation loader for the Trainer. Under data parallelism each rank holds a padded
    share (`effrecipes.data.shards`): Composer then counts only the real images it evaluated."""
    if val is None or dist.get_world_size() <= 1:
        return val
    return DataSpec(val, get_num_samples_in_batch=real_samples)


def _final_module(prepared: Prepared, run: Training, out: Path, guard: RunGuard) -> nn.Module:
    """Save or drop the resume state; the weights to test (last, best-val, or the last finite
    ones of a diverged run), ready for inference; the final checkpoint."""
    trainer, ledger = run.trainer, run.budget.ledger
    if ledger.stop_reason == StopReason.INTERRUPTED:
        _save_or_clean(out / RESUME_FILE, lambda path: save_checkpoint(trainer.state, str(path)))
    elif (out / RESUME_FILE).exists():
        (out / RESUME_FILE).unlink()
    if guard.diverged and guard.last_good is not None:
        network_of(trainer.state.model).load_state_dict(guard.last_good)
        prepared.warnings.append("loss became non-finite: training stopped; the last weights "
                                 "with a finite loss were kept")
    prepared.warnings += [a.end_warning for a in prepared.algorithms if getattr(a, "end_warning", None)]
    module = network_of(trainer.state.model)
    if run.best is not None and run.best.state is not None:
        module.load_state_dict(run.best.state)
    # data-parallel ranks test their shares of the test set with the model rank 0 saves (their
    # BatchNorm statistics, EMA's or SWA's recompute included, differ slightly by rank)
    broadcast_from_rank0(module.state_dict().values())
    module = algos.inference_module(module)
    if prepared.recipe.output.save_checkpoint:
        weights = {k: v.detach().cpu() for k, v in module.state_dict().items()}  # loadable anywhere
        try:
            _save_or_clean(out / CHECKPOINT_FILE, lambda path: torch.save(
                {"model": weights, "recipe": prepared.recipe.model_dump(mode="json"),
                 "ledger": ledger.as_plain()}, path))
        except OSError as e:  # the trained run is still measured and kept, without checkpoint.pt
            guard.write_failed(out / CHECKPOINT_FILE, e)
            prepared.warnings.append(f"{CHECKPOINT_FILE} could not be written ({e.strerror or e}); "
                                     "the run's metrics are kept without it")
    return module


def _save_or_clean(path: Path, save: Callable[[Path], Any]) -> None:
    """`save(path)`; if it fails (a full disk), remove what it half wrote and re-raise."""
    try:
        save(path)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def host_timings(module: nn.Module, test: Any, images: int, dev: devices.RunDevice
                 ) -> tuple[Optional[float], Optional[float], str]:
    """(CPU ms per image, peak FLOP/s, its source). Timings on the host are rank 0's alone, taken
    once every rank has finished its test pass: data-parallel ranks timing (or testing) at once
    would share the cores. Other ranks measure nothing (their metrics are not kept)."""
    if dist.get_world_size() > 1:
        dist.barrier()
    if dist.get_global_rank() != 0:
        return None, None, "not measured on rank > 0"
    latency = measure_latency(copy.deepcopy(module).cpu() if dev.is_gpu else module, test, images)
    return latency, *devices.peak_flops(dev, torch.get_num_threads())


def _measure(prepared: Prepared, run: Training, module: nn.Module) -> dict[str, Any]:
    """Test accuracy, latency, size and everything the ledger and the plan know: metrics.json."""
    recipe, data, plan, ledger, dev = (prepared.recipe, prepared.data, prepared.plan,
                                       run.budget.ledger, run.device)
    test = evaluate(module, data.test, data.num_classes, per_class=recipe.eval.per_class,
                    device=dev.torch_device)
    latency, peak, peak_source = host_timings(module, data.test, recipe.eval.latency_images, dev)
    # on a GPU also the device latency (batch 1 and the eval batch, synchronised)
    device_latency = (measure_device_latency(module, data.test, (1, recipe.data.eval_batch_size),
                                             precision=dev.precision)
                      if dev.is_gpu and recipe.eval.latency_images > 0 else None)
    eval_samples = run.history.eval_samples + test["samples"]
    return RunMetrics(
        name=recipe.name, run_name=prepared.run_name or recipe.run_name, seed=recipe.seed, dataset=recipe.data.name,
        model=recipe.model.name, algorithms=recipe.algorithm_names,
        test_accuracy=test["accuracy"], best_val_accuracy=run.history.best_val_accuracy,
        final_val_accuracy=run.history.last_val_accuracy, tested_weights=recipe.eval.checkpoint,
        flops_used=ledger.flops_used, flops_cap=plan.flops_cap, stop_reason=ledger.stop_reason,
        train_flops_per_sample=plan.train_flops_per_sample,
        mean_train_flops_per_sample=ledger.flops_used / ledger.samples if ledger.samples else None,
        measured_flops_per_sample=ledger.measured_step_flops,
        inference_flops_per_sample=plan.forward_flops_per_sample,
        fvcore_forward_macs_per_sample=plan.fvcore_forward_macs_per_sample,
        eval_flops=eval_samples * plan.forward_flops_per_sample,
        extra_train_flops=ledger.extra_flops, max_step_flops=ledger.max_step_flops,
        reserve_unspent_flops=ledger.reserve_unspent,
        params=sum(t.numel() for t in module.parameters()), model_size_bytes=model_size_bytes(module),
        cpu_latency_ms_per_image=latency, batches=ledger.batches, samples=ledger.samples,
        epochs=ledger.batches / plan.batches_per_epoch, planned_batches=plan.planned_batches,
        train_seconds=ledger.train_seconds,
        samples_per_second=ledger.samples / ledger.train_seconds if ledger.train_seconds else None,
        algorithm_effects=prepared.effects, warnings=prepared.warnings,
        reference=recipe.reference.model_dump() if recipe.reference else None,
        threads=torch.get_num_threads(), device=dev.device, device_name=dev.name,
        precision=dev.precision, compile=dev.compile,
        # achieved train FLOP/s over the peak of every rank's device in this precision
        mfu=devices.mfu(ledger.flops_used, ledger.train_seconds,
                        peak * dist.get_world_size() if peak else None),
        peak_flops_per_device=peak, peak_flops_source=peak_source, device_latency_ms=device_latency,
        per_class=test["per_class"] if recipe.eval.per_class else None,
    ).model_dump(mode="json")
