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
from typing import Any, Iterator, Optional

import torch
from composer import Trainer
from composer.algorithms import ChannelsLast
from composer.core import Algorithm
from composer.models import ComposerClassifier
from composer.utils import dist, reproducibility
from torch import nn
from torchmetrics import MetricCollection

from effrecipes import algorithms as algos
from effrecipes.budget import (BudgetLedger, BudgetPlan, FlopBudget, forward_flops_per_sample,
                               fvcore_forward_macs_per_sample, plan_budget,
                               progressive_resizing_cost_factor, swa_reserve_flops, train_step_flops)
from effrecipes.callbacks import BestWeights, EpochSync, History, RunGuard
from effrecipes.data import DataBundle, build_data
from effrecipes.errors import RecipeError, UserError, writable_dir
from effrecipes.evaluate import evaluate, measure_latency, model_size_bytes
from effrecipes.models import build_model, network_of
from effrecipes.optim import build_optimizer, build_scheduler
from effrecipes.recipe import Recipe, recipe_to_yaml

log = logging.getLogger(__name__)


RESUME_CHECKPOINT = "resume.pt"  # full trainer state of an interrupted run


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


def _dynamic_cost(recipe: Recipe) -> bool:
    return any(algos.info(n).dynamic_cost for n in recipe.algorithm_names
               if n != "progressive_resizing")


def _sam_passes(recipe: Recipe) -> float:
    for item in recipe.algorithms:
        if "sam" in item:
            interval = int(item["sam"].get("interval", 1))
            return 1.0 + 1.0 / max(interval, 1)
    return 1.0


def prepare(recipe: Recipe) -> Prepared:
    """Build data, model and algorithms; measure a real training step; plan the budget."""
    reproducibility.seed_all(recipe.seed)  # before the model is built
    names = recipe.algorithm_names
    per_sample = any(algos.info(n).dataset_transform for n in names)
    data = build_data(recipe.data, recipe.seed, per_sample=per_sample)
    try:
        module = build_model(recipe.model.name, data.in_channels, data.num_classes,
                             data.image_size, **recipe.model.kwargs)
    except (TypeError, ValueError) as e:  # a builder's argument check (e.g. a torchvision kwarg)
        raise RecipeError(f"cannot build {recipe.model.name}: {e}", field="model.kwargs") from None
    shape = (data.in_channels, data.image_size, data.image_size)
    sample = next(iter(data.train))
    effects = algos.describe_effects(module, recipe.algorithms, sample)
    noops = {n: e["noop_reason"] for n, e in effects.items() if e["noop_reason"]}
    if noops and recipe.strict:
        name, reason = next(iter(noops.items()))
        raise RecipeError(f"changes nothing: {reason} (strict: true)", field=f"algorithms.{name}")
    notes = [f"algorithm {n} changes nothing: {reason}" for n, reason in noops.items()]

    # Composer computes train accuracy every batch (1.1-1.2 ms/batch measured, benchmarks/README.md);
    # nothing here reads it, so it is kept only for W&B dashboards.
    model = ComposerClassifier(module, num_classes=data.num_classes,
                               train_metrics=None if recipe.loggers.wandb.enabled
                               else MetricCollection([]))
    algorithm_objs = algos.build_algorithms(recipe.algorithms)
    if recipe.model.channels_last and "channels_last" not in names:
        # Last in the list: Composer runs INIT algorithms in order, so layers added by surgery
        # (BlurPool, SqueezeExcite) are converted too.
        algorithm_objs.append(ChannelsLast())

    # Apply model surgery to a copy exactly as the Trainer will, and measure a real step on it.
    surgered = algos.apply_surgery(copy.deepcopy(module), recipe.algorithms)
    world = dist.get_world_size()
    x, y = sample
    step_local = train_step_flops(surgered, _loss(model), (x, y),
                                  passes=_sam_passes(recipe))
    per_sample_train = step_local / x.shape[0]
    fwd = forward_flops_per_sample(surgered, shape)
    fv = fvcore_forward_macs_per_sample(surgered, shape)
    reserve = 0.0
    for item in recipe.algorithms:
        if "swa" in item:
            swa_obj = next(a for a in algorithm_objs if isinstance(a, algos.SWAWithBNUpdate))
            reserve = swa_reserve_flops(swa_obj.bn_update_batches, x.shape[0], fwd, world)
    factor = 1.0
    for item in recipe.algorithms:
        if "progressive_resizing" in item:
            factor = progressive_resizing_cost_factor(
                **algos.effective_kwargs("progressive_resizing", item["progressive_resizing"]))
    b = recipe.budget
    plan = plan_budget(flops_cap=b.flops, max_epochs=b.max_epochs, max_seconds=b.max_seconds,
                       step_flops=step_local * world, train_flops_per_sample=per_sample_train,
                       forward_flops_per_sample=fwd, fvcore_macs=fv,
                       global_batch_size=x.shape[0] * world, batches_per_epoch=len(data.train),
                       reserved_flops=reserve, cost_factor=factor)
    if plan.planned_batches < 1:
        raise RecipeError(f"the cap affords no training batch: one batch costs {plan.step_flops:.3g} "
                          f"FLOPs{' + reserve ' + format(reserve, '.3g') if reserve else ''}",
                          field="budget.flops", hint="raise budget.flops or lower data.batch_size")
    prepared = Prepared(recipe, data, model, algorithm_objs, effects, plan,
                        params_after_surgery=sum(t.numel() for t in surgered.parameters()),
                        warnings=notes)
    return prepared


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

def run_dir_for(recipe: Recipe) -> Path:
    return Path(recipe.output.root).expanduser() / recipe.run_name


def _check_output(recipe: Recipe) -> Path:
    final = run_dir_for(recipe)
    root = final.parent
    if final.exists() and not recipe.output.overwrite:
        raise UserError("run directory already exists", field="output.run_name", file=str(final),
                        hint="set output.overwrite=true, choose another output.run_name, "
                        "or use --resume")
    writable_dir(root, field="output.root", hint="choose a writable output.root")
    return final


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


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
    set_threads(threads, prepared.plan.step_flops)
    for note in prepared.warnings:
        log.warning(note)
        if not quiet:
            print(f"WARNING: {note}")
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
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
        _write_json(tmp / "metrics.json", metrics)
        if rank == 0:
            _finalise(tmp, final)
        else:
            shutil.rmtree(final.parent, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp if rank == 0 else final.parent, ignore_errors=True)
        raise
    return RunResult(final, metrics)


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
    """A run can be resumed when it was interrupted and its recipe is unchanged."""
    final = run_dir_for(recipe)
    metrics_path, ckpt = final / "metrics.json", final / RESUME_CHECKPOINT
    if not metrics_path.exists():
        raise UserError("no run to resume here", file=str(final), field="output.run_name",
                        hint="run without --resume first")
    try:
        previous = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError("metrics.json is unreadable; cannot resume", file=str(metrics_path)) from None
    if previous.get("stop_reason") != "interrupted" or not ckpt.exists():
        raise UserError(f"the run finished (stop_reason: {previous.get('stop_reason')}); "
                        "nothing to resume", file=str(final),
                        hint="set output.overwrite=true to train it again")
    saved = (final / "recipe.yaml").read_text() if (final / "recipe.yaml").exists() else ""
    if saved != recipe_to_yaml(recipe):
        raise UserError("the recipe changed since the run was interrupted; resuming would mix two "
                        "plans", file=str(final / "recipe.yaml"),
                        hint="resume with the same recipe and overrides")
    return final


def _previous_wall(final: Path) -> float:
    try:
        return float(json.loads((final / "metrics.json").read_text()).get("wall_seconds") or 0.0)
    except (OSError, ValueError):
        return 0.0


def _train_and_evaluate(prepared: Prepared, out: Path, *, quiet: bool, guard: RunGuard,
                        resume: bool = False) -> dict[str, Any]:
    recipe, data, plan = prepared.recipe, prepared.data, prepared.plan
    (out / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    model = prepared.model
    optimizer = build_optimizer(recipe.optimizer, model.parameters())
    swa_objs = tuple(a for a in prepared.algorithms if isinstance(a, algos.SWAWithBNUpdate))
    budget = FlopBudget(plan, max_seconds=recipe.budget.max_seconds,
                        dynamic_cost=_dynamic_cost(recipe), extra_forward_sources=swa_objs,
                        ledger=BudgetLedger())
    guard.budget = budget
    history = History(budget, out / "history.csv")
    best = BestWeights() if recipe.eval.checkpoint == "best_val" else None
    callbacks = [guard, budget, history, EpochSync(data.train)] + ([best] if best else [])
    eval_every = max(1, round(recipe.eval.every_epochs * plan.batches_per_epoch))
    schedulers, every_batch = build_scheduler(recipe.scheduler, recipe.optimizer, optimizer,
                                              plan.planned_batches, plan.batches_per_epoch)
    loggers = []
    if recipe.loggers.wandb.enabled:
        from effrecipes.report.wandb_logging import build_wandb_logger
        loggers.append(build_wandb_logger(recipe))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="composer")
        warnings.filterwarnings("ignore", category=UserWarning)
        trainer = Trainer(
            model=model, train_dataloader=data.train, optimizers=optimizer,
            eval_dataloader=data.val if data.val is not None else None,
            eval_interval=f"{eval_every}ba" if data.val is not None else 0,
            max_duration=f"{plan.planned_batches}ba", schedulers=schedulers,
            step_schedulers_every_batch=every_batch, algorithms=prepared.algorithms,
            callbacks=callbacks, loggers=loggers, device="cpu", precision="fp32",
            seed=recipe.seed,
            progress_bar=recipe.loggers.progress_bar and not quiet and sys.stderr.isatty(),
            log_to_console=False, run_name=recipe.run_name, python_log_level=None,
            load_path=str(out / RESUME_CHECKPOINT) if resume else None,
        )
        prepared.trainer = trainer
        trainer.fit()
    ledger = budget.ledger
    if ledger.stop_reason == "interrupted":
        from composer.utils.checkpoint import save_checkpoint
        save_checkpoint(trainer.state, str(out / RESUME_CHECKPOINT))
    elif (out / RESUME_CHECKPOINT).exists():
        (out / RESUME_CHECKPOINT).unlink()
    if guard.diverged and guard.last_good is not None:
        network_of(trainer.state.model).load_state_dict(guard.last_good)
        prepared.warnings.append("loss became non-finite: training stopped; the last weights "
                                 "with a finite loss were kept")
    for swa in swa_objs:
        if swa.never_started:
            prepared.warnings.append(f"algorithm swa changed nothing: training ended before "
                                     f"swa_start={swa.swa_start}")
    module = network_of(trainer.state.model)
    if best is not None and best.state is not None:
        module.load_state_dict(best.state)
    test = evaluate(module, data.test, data.num_classes, per_class=recipe.eval.per_class)
    latency = measure_latency(module, data.test, recipe.eval.latency_images)
    size = model_size_bytes(module)
    if recipe.output.save_checkpoint:
        torch.save({"model": module.state_dict(), "recipe": recipe.model_dump(mode="json"),
                    "ledger": ledger.__dict__}, out / "checkpoint.pt")
    eval_samples = history.eval_samples + test["samples"]
    metrics: dict[str, Any] = {
        "name": recipe.name,
        "run_name": recipe.run_name,
        "seed": recipe.seed,
        "dataset": recipe.data.name,
        "model": recipe.model.name,
        "algorithms": recipe.algorithm_names,
        "test_accuracy": test["accuracy"],
        "best_val_accuracy": history.best_val_accuracy,
        "final_val_accuracy": history.last_val_accuracy,
        "tested_weights": recipe.eval.checkpoint,
        "flops_used": ledger.flops_used,
        "flops_cap": plan.flops_cap,
        "stop_reason": ledger.stop_reason,
        "train_flops_per_sample": plan.train_flops_per_sample,
        "measured_flops_per_sample": ledger.measured_step_flops,
        "inference_flops_per_sample": plan.forward_flops_per_sample,
        "fvcore_forward_macs_per_sample": plan.fvcore_forward_macs_per_sample,
        "eval_flops": eval_samples * plan.forward_flops_per_sample,
        "swa_bn_update_flops": ledger.extra_forward_flops,
        "params": sum(t.numel() for t in module.parameters()),
        "model_size_bytes": size,
        "cpu_latency_ms_per_image": latency,
        "batches": ledger.batches,
        "samples": ledger.samples,
        "epochs": ledger.batches / plan.batches_per_epoch,
        "planned_batches": plan.planned_batches,
        "train_seconds": ledger.train_seconds,
        "samples_per_second": ledger.samples / ledger.train_seconds if ledger.train_seconds else None,
        "algorithm_effects": prepared.effects,
        "warnings": prepared.warnings,
        "reference": recipe.reference.model_dump() if recipe.reference else None,
        "threads": torch.get_num_threads(),
    }
    if recipe.eval.per_class:
        metrics["per_class"] = test["per_class"]
    if recipe.loggers.wandb.enabled:
        from effrecipes.report.wandb_logging import log_summary
        log_summary(metrics)
    trainer.close()  # flushes and closes the loggers (W&B finishes its run here)
    return metrics
