"""End to end: recipes run through the real CLI, loaders and Composer Trainer, and obey the cap."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from effrecipes.cli import main
from effrecipes.data.formats import write_cifar10, write_idx
from tests.conftest import record_lrs, tiny_recipe, write_recipe

METRIC_KEYS = {"test_accuracy", "best_val_accuracy", "flops_used", "flops_cap", "stop_reason",
               "train_flops_per_sample", "inference_flops_per_sample", "params", "model_size_bytes",
               "cpu_latency_ms_per_image", "wall_seconds", "samples_per_second"}


def run_cli(tmp_path: Path, recipe: dict[str, Any], *args: str) -> dict[str, Any]:
    path = write_recipe(tmp_path, recipe)
    assert main([str(path), "--quiet", *args]) == 0
    run_dir = Path(recipe["output"]["root"]) / recipe.get("output", {}).get("run_name", recipe["name"])
    return json.loads((run_dir / "metrics.json").read_text())


def one_batch_flops(m: dict[str, Any], batch: int) -> float:
    return max(m["measured_flops_per_sample"].values()) * batch


def test_cifar_format_files_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar"
    labels = rng.integers(0, 10, 120)
    images = (rng.random((120, 3, 32, 32)) * 255).astype(np.uint8)
    write_cifar10(root, images[:100], labels[:100].tolist(), images[100:], labels[100:].tolist(),
                  [f"class{i}" for i in range(10)])
    recipe = tiny_recipe(tmp_path, **{"data": {"name": "cifar10", "root": str(root), "download": False,
                                               "batch_size": 20, "augment": ["random_crop", "hflip"]},
                                      "model.name": "gap_143k", "budget.flops": 3e9,
                                      "algorithms": [{"blurpool": {}}, {"cutout": {"length": 10}},
                                                     {"mixup": {"alpha": 0.2}}]})
    m = run_cli(tmp_path, recipe)
    assert METRIC_KEYS <= set(m)
    assert m["params"] == 143208 and m["flops_used"] <= m["flops_cap"] == 3e9
    run_dir = tmp_path / "runs" / "tiny"
    assert {p.name for p in run_dir.iterdir()} >= {"recipe.yaml", "metrics.json", "history.csv", "checkpoint.pt"}
    assert not list((tmp_path / "runs").glob(".tiny.tmp-*"))


def test_idx_format_files_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "fmnist"
    root.mkdir()
    for split, n in (("train", 200), ("t10k", 50)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 40).astype(np.uint8) + (y[:, None, None] * 20).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{split}-labels-idx1-ubyte", y)
    recipe = tiny_recipe(tmp_path, **{"data": {"name": "fashion_mnist", "root": str(root), "download": False,
                                               "batch_size": 25},
                                      "budget.flops": 3e9})
    m = run_cli(tmp_path, recipe)
    assert m["dataset"] == "fashion_mnist" and m["params"] == 1560
    rows = list(csv.DictReader((tmp_path / "runs" / "tiny" / "history.csv").open()))
    assert rows and float(rows[-1]["flops_used"]) <= 3e9
    assert m["test_accuracy"] > 30  # learnable: label-dependent brightness


@pytest.mark.parametrize("cap", [5e7, 1.37e8, 4e8])
def test_never_exceeds_cap_and_ends_within_one_batch(tmp_path: Path, cap: float) -> None:
    """A run whose step cost changes every step (SAM every 2nd step, selective backprop from the
    start) still stops within one step of the cap."""
    m = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": cap, "algorithms": [
        {"sam": {"interval": 2}}, {"selective_backprop": {"start": 0.0, "keep": 0.5}}]}))
    assert m["stop_reason"] == "flops"
    assert m["flops_used"] <= cap
    assert cap - m["flops_used"] < m["train_flops_per_sample"] * 16
    assert len({k.split(" ")[0] for k in m["measured_flops_per_sample"]}) == 1  # one shape ...
    assert m["mean_train_flops_per_sample"] < 0.9 * m["train_flops_per_sample"]  # ... varying cost


def test_sam_doubles_the_measured_step(tmp_path: Path) -> None:
    base = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7, "output.run_name": "a"}))
    sam = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7, "output.run_name": "b",
                                                     "algorithms": [{"sam": {"rho": 0.05}}]}))
    assert sam["train_flops_per_sample"] == pytest.approx(2 * base["train_flops_per_sample"])
    shape = next(iter(base["measured_flops_per_sample"]))
    assert sam["measured_flops_per_sample"][shape] == pytest.approx(2 * base["measured_flops_per_sample"][shape])
    assert sam["batches"] <= base["batches"] // 2 + 1


def test_surgery_raises_measured_flops(tmp_path: Path) -> None:
    base = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7, "output.run_name": "a"}))
    for name, kw in (("blurpool", {}), ("squeeze_excite", {"min_channels": 8, "latent_channels": 0.5})):
        m = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7, "output.run_name": name,
                                                       "algorithms": [{name: kw}]}))
        assert m["train_flops_per_sample"] > base["train_flops_per_sample"], name
        assert m["algorithm_effects"][name]["changes"] and not m["warnings"]
        assert m["flops_used"] <= 5e7


def test_swa_on_a_short_run_recomputes_batchnorm(tmp_path: Path) -> None:
    common = {"budget.flops": 3e8, "data.kwargs.num_train": 320}
    base = run_cli(tmp_path, tiny_recipe(tmp_path, **common, **{"output.run_name": "base"}))
    swa = run_cli(tmp_path, tiny_recipe(tmp_path, **common, **{
        "output.run_name": "swa", "algorithms": [{"swa": {"swa_start": "0.5dur", "update_interval": "1ep"}}]}))
    # the swap happens at the very end (epoch updates on a short run); BN was recomputed and charged
    assert swa["extra_train_flops"] > 0
    assert swa["flops_used"] <= 3e8
    assert swa["test_accuracy"] >= base["test_accuracy"] - 15
    assert swa["test_accuracy"] > 100 / 4 + 20  # far above chance (4 classes)


def test_noop_algorithm_warns_and_strict_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7, "algorithms": [{"squeeze_excite": {}}]})
    m = run_cli(tmp_path, recipe)
    assert any("squeeze_excite changes nothing" in w for w in m["warnings"])
    recipe["strict"] = True
    recipe["output"]["run_name"] = "strict"
    path = write_recipe(tmp_path, recipe)
    capsys.readouterr()
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "algorithms.squeeze_excite" in err and "min_channels" in err and "strict" in err
    assert not (tmp_path / "runs" / "strict").exists()


def test_max_epochs_and_max_seconds_bind(tmp_path: Path) -> None:
    m = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget": {"flops": 1e12, "max_epochs": 2},
                                                   "output.run_name": "ep"}))
    assert m["stop_reason"] == "max_epochs" and m["epochs"] == pytest.approx(2)
    m = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget": {"max_seconds": 1.0}, "output.run_name": "sec"}))
    assert m["stop_reason"] == "max_seconds" and m["flops_cap"] is None
    assert 1.0 <= m["train_seconds"] < 10


def test_dry_run_prints_plan_and_effects_and_writes_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, **{"algorithms": [{"blurpool": {}}, {"squeeze_excite": {}}]})
    path = write_recipe(tmp_path, recipe)
    assert main([str(path), "--dry-run", "budget.flops=1e9"]) == 0
    out = capsys.readouterr().out
    for text in ("# resolved recipe", "params:                      1,470  (1,470 after algorithm surgery)", "planned batches:",
                 "MaxPool2d -> BlurMaxPool2d", "WARNING: changes nothing", "flops: 1000000000.0"):
        assert text in out, text
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_is_protected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7})
    first = run_cli(tmp_path, recipe)
    path = write_recipe(tmp_path, recipe)
    capsys.readouterr()
    assert main([str(path), "--quiet"]) == 2
    assert "run directory already exists" in capsys.readouterr().err
    again = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert again == first
    assert main([str(path), "--quiet", "output.overwrite=true"]) == 0


def test_best_val_checkpoint_and_per_class(tmp_path: Path) -> None:
    m = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 1e8, "eval": {
        "checkpoint": "best_val", "per_class": True, "latency_images": 2}}))
    assert m["tested_weights"] == "best_val" and len(m["per_class"]) == 4
    assert {"precision", "recall", "f1", "support"} <= set(m["per_class"][0])


def test_same_seed_same_result(tmp_path: Path) -> None:
    a = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7, "output.run_name": "a"}))
    b = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7, "output.run_name": "b"}))
    assert a["test_accuracy"] == b["test_accuracy"] and a["flops_used"] == b["flops_used"]


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_by_default_after_surgery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 channels_last: bool) -> None:
    """`model.channels_last` (default true) converts the model after surgery: SqueezeExcite's
    added 1x1 convs are NHWC too; false leaves every weight NCHW."""
    import torch

    from effrecipes import runner
    from effrecipes.recipe import load_recipe

    seen: list[Any] = []
    real = runner.Trainer

    def capture(*a: Any, **k: Any) -> Any:
        seen.append(real(*a, **k))
        return seen[-1]

    monkeypatch.setattr(runner, "Trainer", capture)
    recipe = tiny_recipe(tmp_path, **{"model.name": "gap_7k", "model.channels_last": channels_last,
                                      "budget.flops": 1e9, "algorithms": [
                                          {"squeeze_excite": {"min_channels": 8, "latent_channels": 0.5}}]})
    runner.run(load_recipe(write_recipe(tmp_path, recipe)), quiet=True)
    module = seen[0].state.model.module
    # weights whose two layouts differ in memory (not 1x1 kernels, not single-channel)
    weights = {n: p for n, p in module.named_parameters()
               if p.dim() == 4 and p.is_contiguous() != p.is_contiguous(memory_format=torch.channels_last)
               or p.dim() == 4 and not p.is_contiguous()}
    assert any(n.endswith(".conv.weight") for n in weights), list(weights)  # wrapped by SE surgery
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for n, p in weights.items():
        assert p.is_contiguous(memory_format=fmt), n


def test_auto_threads_use_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit > tiny step (1) > a matrix worker's share > cores not busy with other jobs."""
    import torch

    from effrecipes import runner

    before = torch.get_num_threads()
    monkeypatch.delenv("EFFRECIPES_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cores", lambda: 4)
    try:
        monkeypatch.setattr(runner, "runnable_others", lambda: 0)
        assert runner.set_threads(None, 3e8) == 4 == torch.get_num_threads()
        assert runner.set_threads(None, 1e6) == 1  # tiny step: thread hand-off dominates
        assert runner.set_threads(3, 1e6) == 3  # explicit wins
        monkeypatch.setattr(runner, "runnable_others", lambda: 3)
        assert runner.set_threads(None, 3e8) == 1  # three other jobs on four cores
        monkeypatch.setattr(runner, "runnable_others", lambda: 9)
        assert runner.set_threads(None, 3e8) == 1  # never below 1
        monkeypatch.setenv("EFFRECIPES_THREADS", "2")
        assert runner.set_threads(None, 3e8) == 2  # a matrix worker keeps its share
    finally:
        torch.set_num_threads(before)


def test_runnable_others_reads_proc_loadavg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Field 4 of /proc/loadavg is running/total tasks; this process is one of the running."""
    from effrecipes import runner

    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    monkeypatch.setattr(runner.Path, "read_text", lambda self: "0.50 0.40 0.30 3/200 1234\n")
    assert runner.runnable_others() == 2
    monkeypatch.setattr(runner.Path, "read_text", lambda self: "garbage")
    assert runner.runnable_others() == 0


def _lr_per_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> list[float]:
    """Run a tiny recipe and return the learning rate used by every training batch."""
    from effrecipes import runner
    from effrecipes.recipe import load_recipe

    lrs = record_lrs(monkeypatch)
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 1e12, "budget.max_epochs": 3,
                                      "optimizer.lr": 0.1, **overrides})
    runner.run(load_recipe(write_recipe(tmp_path, recipe)), quiet=True)
    return lrs


def test_cosine_warmup_steps_every_batch_from_the_first(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm-up must warm up inside the first epoch (stepping once per epoch held lr at 0 for
    the whole first epoch: that run learned nothing until epoch 2)."""
    lrs = _lr_per_batch(tmp_path, monkeypatch, **{"scheduler.name": "cosine",
                                                  "scheduler.warmup_fraction": 0.25})
    per_epoch = len(lrs) // 3
    assert len(lrs) == 24 and per_epoch == 8  # 128 training images / batch 16, 3 epochs
    first = lrs[:per_epoch]
    assert first[0] == 0.0 and first[-1] > 0.05  # warm-up (6 batches) ends inside epoch 1
    assert max(lrs) == pytest.approx(0.1, rel=0.05)
    assert len(set(lrs)) >= 20 and lrs[-1] < 0.01  # a new lr every batch, decayed to ~0


@pytest.mark.parametrize("name,expect", [
    ("linear", "decreasing"), ("constant", "constant"), ("one_cycle", "rise_then_fall"),
    ("exponential", "staircase"), ("step", "staircase")])
def test_every_schedule_follows_its_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          name: str, expect: str) -> None:
    lrs = _lr_per_batch(tmp_path, monkeypatch, **{"scheduler.name": name, "scheduler.gamma": 0.5})
    assert len(lrs) == 24
    # (Composer evaluates a schedule at the finished batch's time, so each lr arrives one batch late)
    if expect == "decreasing":
        assert lrs[0] == 0.1 and all(b < a for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.01
    elif expect == "constant":
        assert set(lrs) == {0.1}
    elif expect == "rise_then_fall":
        peak = lrs.index(max(lrs))
        assert 0 < peak < 23 and lrs[0] < 0.1 / 10 and lrs[-1] < lrs[0]
    else:  # once per epoch (8 batches), by gamma
        steps = [round(v, 6) for v in lrs]
        assert sorted(set(steps), reverse=True) == [0.1, 0.05, 0.025]
        assert steps == sorted(steps, reverse=True)
        assert all(7 <= steps.count(v) <= 9 for v in (0.1, 0.05, 0.025))


def test_dry_run_plans_without_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The plan depends on shapes and sizes only: a dataset not on disk (and not downloadable)
    is planned from the registry, with a note; a real run still refuses."""
    recipe = tiny_recipe(tmp_path, **{"data": {"name": "cifar10", "root": str(tmp_path / "none"),
                                               "download": False, "batch_size": 128},
                                      "model.name": "gap_143k", "budget.flops": 1e14})
    path = write_recipe(tmp_path, recipe)
    capsys.readouterr()
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "NOTE: data not available yet" in out and "3x32x32" in out and "45,000 training" in out
    # gap_143k: 65.04 MFLOPs per 3x32x32 sample (benchmarks/README.md) x 128 = 8.325e9 per step;
    # 45,000 training images after the 10% split / 128 = 351 batches per epoch
    assert "planned batches:             12,012  (34.22 epochs of 351 batches" in out, out
    assert not (tmp_path / "runs").exists()
    assert main([str(path), "--quiet"]) == 2
    assert "data.root" in capsys.readouterr().err


def test_live_progress_one_line_per_evaluation_when_not_a_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 1e8, "loggers.progress_bar": True})
    assert main([str(write_recipe(tmp_path, recipe))]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("[")]
    rows = list(csv.DictReader((tmp_path / "runs" / "tiny" / "history.csv").open()))
    assert len(lines) == len(rows) >= 2
    assert all("FLOPs" in ln and "/100M" in ln and "val " in ln and "lr " in ln for ln in lines), lines
    assert lines[-1].startswith("[ 9") or lines[-1].startswith("[100")  # the cap, nearly spent
    assert "Config:" not in captured.out + captured.err  # no Composer config dump
    assert "test accuracy" in captured.out  # the summary stays on stdout


def test_live_progress_bar_on_a_terminal_shows_the_budget() -> None:
    import io

    from effrecipes.budget import BudgetLedger
    from effrecipes.callbacks import LiveProgress

    budget = SimpleNamespace(ledger=BudgetLedger(flops_used=2.5e11, batches=30),
                             plan=SimpleNamespace(flops_cap=1e12, batches_per_epoch=10),
                             progress=lambda: 0.25)
    state = SimpleNamespace(optimizers=[SimpleNamespace(param_groups=[{"lr": 0.05}])])
    out = io.StringIO()
    live = LiveProgress(budget, out, tty=True)  # type: ignore[arg-type]
    live.evaluated(state, 88.5)  # type: ignore[arg-type]
    live.close()
    text = out.getvalue()
    assert "25.0%" in text and "FLOPs 250G/1T" in text and "epoch 3.00" in text
    assert "val 88.50%" in text and "lr 0.05" in text


def test_logged_metrics_use_the_run_directory_names_and_percent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B (any Composer logger) gets history.csv's names per evaluation, accuracy in %, the lr,
    and flops_used every batch."""
    from composer.loggers import LoggerDestination

    from effrecipes import runner

    logged: list[dict[str, Any]] = []

    class Capture(LoggerDestination):
        def log_metrics(self, metrics: dict[str, Any], step: Any = None) -> None:
            logged.append(dict(metrics))

    real = runner.Trainer

    def with_capture(*a: Any, **k: Any) -> Any:
        k["loggers"] = list(k.get("loggers") or []) + [Capture()]
        return real(*a, **k)

    monkeypatch.setattr(runner, "Trainer", with_capture)
    m = run_cli(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 1e8}))
    evals = [d for d in logged if "val_accuracy" in d]
    rows = list(csv.DictReader((tmp_path / "runs" / "tiny" / "history.csv").open()))
    assert len(evals) == len(rows) >= 2
    assert evals[-1]["val_accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]))
    assert evals[-1]["val_accuracy"] == pytest.approx(m["final_val_accuracy"]) and evals[-1]["val_accuracy"] > 1
    assert {"lr", "flops_used", "epoch"} <= set(evals[-1])
    assert sum("flops_used" in d for d in logged) >= m["batches"]


def test_lean_engine_trains_exactly_like_composers_engine(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run on Composer's `Engine` and on `LeanEngine` (with `lean_train_data`'s
    uncopied microbatches), with algorithms on several events (EMA's `match` has side effects),
    gives bit-identical weights and metrics, and every callback
    sees the same events in the same order; the lean run takes its fast path on every event after
    the Trainer is built (Composer's `run_event` is entered only for the events of its
    construction), the other run enters Composer's on every event."""
    import torch
    from composer.core import Callback
    from composer.core.engine import Engine

    from effrecipes import runner
    from effrecipes.recipe import load_recipe
    from effrecipes.rundir import CHECKPOINT_FILE

    seen: list[tuple[str, str]] = []
    entered: list[str] = []
    from composer.trainer import trainer as composer_trainer

    real_cb, real_run, real_lean = Callback.run_event, Engine.run_event, runner.make_lean
    real_data, real_copy = runner.lean_train_data, composer_trainer.deepcopy
    lean = [False]
    copies: list[bool] = []  # per microbatch copy: is Composer's deepcopy the microbatch itself?
    monkeypatch.setattr(Callback, "run_event", lambda self, event, state, logger: (
        seen.append((type(self).__name__, str(event))), real_cb(self, event, state, logger))[1])
    monkeypatch.setattr(Engine, "run_event", lambda self, event: (entered.append(str(event)),
                                                                  real_run(self, event))[1])
    monkeypatch.setattr(runner, "make_lean", lambda t: real_lean(t) if lean[0] else None)
    monkeypatch.setattr(runner, "lean_train_data", lambda loader, model: real_data(loader, model)
                        if lean[0] else loader)

    def recording_copy(x, *args):
        y = real_copy(x, *args)
        if isinstance(x, tuple):
            copies.append(y is x)
        return y

    monkeypatch.setattr(composer_trainer, "deepcopy", recording_copy)
    monkeypatch.delenv("ENGINE_DEBUG", raising=False)
    algorithms = [{"label_smoothing": {"smoothing": 0.1}}, {"ema": {"half_life": "5ba"}},
                  {"cutout": {"length": 0.25}},  # progressive resizing: FlopBudget must see its batch
                  {"progressive_resizing": {"initial_scale": 0.5, "delay_fraction": 0.0,
                                            "finetune_fraction": 0.2}}]
    out = {}
    for lean[0] in (False, True):
        seen.clear(), entered.clear(), copies.clear()
        recipe = tiny_recipe(tmp_path / str(lean[0]), **{"budget.flops": 6e7, "algorithms": algorithms})
        res = runner.run(load_recipe(write_recipe(tmp_path, recipe, f"r{lean[0]}.yaml")), quiet=True)
        assert res.run_dir is not None
        weights = torch.load(res.run_dir / CHECKPOINT_FILE, weights_only=True)
        m = res.metrics
        out[lean[0]] = (list(seen), list(entered), weights,
                        {k: m[k] for k in ("test_accuracy", "best_val_accuracy", "flops_used", "batches")})
        # Composer copies every microbatch; the lean run's copies are the microbatches themselves
        assert len(copies) == m["batches"] and set(copies) == {lean[0]}
    (seen_c, entered_c, w_c, m_c), (seen_l, entered_l, w_l, m_l) = out[False], out[True]
    assert m_c == m_l and m_c["batches"] > 5
    assert seen_c == seen_l and len(seen_c) > 100
    w_c, w_l = w_c["model"], w_l["model"]  # the trained weights (the rest is run metadata)
    assert w_c.keys() == w_l.keys() and w_c
    assert all(torch.equal(w_c[k], w_l[k]) for k in w_c)
    built = ["Event.INIT", "Event.BEFORE_LOAD", "Event.AFTER_LOAD"]  # in Trainer(), before make_lean
    assert entered_l == entered_c[:3] == built and len(entered_c) > 100


def test_microbatches_are_copied_only_for_a_model_with_train_metrics() -> None:
    """`lean_train_data` hands the loader to Composer unchanged when the model computes train
    metrics (their update reads Composer's copy); otherwise it splits batches as Composer does,
    into microbatches whose deepcopy is the microbatch itself."""
    import copy

    import torch
    from composer.core import DataSpec
    from composer.models import ComposerClassifier
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy

    from effrecipes.lean_engine import UncopiedBatch, lean_train_data

    loader = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with_metrics = ComposerClassifier(net, num_classes=2,
                                      train_metrics=MulticlassAccuracy(num_classes=2))
    assert lean_train_data(loader, with_metrics) is loader
    without = ComposerClassifier(net, num_classes=2, train_metrics=MetricCollection([]))
    spec = lean_train_data(loader, without)
    assert isinstance(spec, DataSpec) and spec.dataloader is loader
    parts = spec.split_batch(loader[0], 2)
    assert [type(p) for p in parts] == [UncopiedBatch, UncopiedBatch]
    assert torch.equal(torch.cat([p[0] for p in parts]), loader[0][0])
    assert copy.deepcopy(parts[0]) is parts[0] and copy.deepcopy(loader[0]) is not loader[0]


def test_lean_engine_hands_profiled_runs_to_composers_engine(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With a profiler attached, every event goes through Composer's own `run_event` (its
    profiler markers are the point of profiling); without one, none does."""
    from composer.core import Event
    from composer.core.engine import Engine

    from effrecipes import runner
    from effrecipes.callbacks import RunGuard
    from effrecipes.lean_engine import LeanEngine
    from effrecipes.recipe import load_recipe

    prepared = runner.prepare(load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path))))
    engine = runner._build_trainer(prepared, tmp_path, quiet=True, guard=RunGuard(budget=None),
                                   resume=False).trainer.engine
    assert type(engine) is LeanEngine
    entered: list[str] = []
    real_run = Engine.run_event
    monkeypatch.setattr(Engine, "run_event", lambda self, event: (entered.append(str(event)),
                                                                  real_run(self, event))[1])
    monkeypatch.delenv("ENGINE_DEBUG", raising=False)
    engine.run_event(Event.BATCH_START)
    assert entered == []
    marks: list[str] = []

    class Marker:
        def start(self) -> None:
            marks.append("start")

        def finish(self) -> None:
            marks.append("finish")

        def __enter__(self) -> None:  # Composer also wraps each callback in a marker
            pass

        def __exit__(self, *exc: Any) -> None:
            pass

    monkeypatch.setattr(engine.state, "profiler", SimpleNamespace(marker=lambda *a, **k: Marker()))
    engine.run_event(Event.BEFORE_FORWARD)
    engine.run_event(Event.AFTER_FORWARD)
    assert entered == ["Event.BEFORE_FORWARD", "Event.AFTER_FORWARD"] and marks == ["start", "finish"]


def test_lean_engine_follows_changes_to_the_callback_list(tmp_path: Path) -> None:
    """LeanEngine splits the callbacks into non-loggers and loggers once, not per event; a
    callback appended to the list, or a new list, still gets every later event, non-loggers
    before loggers (Composer's order)."""
    from composer.core import Callback, Event
    from composer.loggers import LoggerDestination

    from effrecipes import runner
    from effrecipes.callbacks import RunGuard
    from effrecipes.recipe import load_recipe

    prepared = runner.prepare(load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path))))
    engine = runner._build_trainer(prepared, tmp_path, quiet=True, guard=RunGuard(budget=None),
                                   resume=False).trainer.engine
    seen: list[str] = []

    class Seen(Callback):
        def __init__(self, name: str) -> None:
            self.name = name

        def batch_start(self, state: Any, logger: Any) -> None:
            seen.append(self.name)

    class SeenLogger(LoggerDestination, Seen):
        pass

    engine.run_event(Event.BATCH_START)
    engine.state.callbacks.append(SeenLogger("logger"))
    engine.state.callbacks.append(Seen("appended"))
    engine.run_event(Event.BATCH_START)
    assert seen == ["appended", "logger"]
    # a new list of the same length (the last callback swapped for another)
    engine.state.callbacks = [Seen("replaced")] + list(engine.state.callbacks[:-1])
    engine.run_event(Event.BATCH_START)
    assert seen == ["appended", "logger", "replaced", "logger"]


@pytest.mark.parametrize("debug", [False, True])
def test_lean_engine_formats_debug_logs_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        debug: bool) -> None:
    """Runs train on `LeanEngine`: Composer's per-event debug-log formatting (5 calls per event,
    13 events per batch) is skipped unless $ENGINE_DEBUG is set, and with it set every call reaches
    Composer's own `_debug_log` as before."""
    from composer.core.engine import Engine

    from effrecipes import runner
    from effrecipes.lean_engine import LeanEngine
    from effrecipes.recipe import load_recipe

    calls: list[str] = []
    real_log = Engine._debug_log
    monkeypatch.setattr(Engine, "_debug_log", lambda self, event, msg: (calls.append(msg),
                                                                        real_log(self, event, msg)))
    engines: list[Any] = []
    real = runner.make_lean
    monkeypatch.setattr(runner, "make_lean", lambda t: (real(t), engines.append(t.engine)))
    if debug:
        monkeypatch.setenv("ENGINE_DEBUG", "1")
    else:
        monkeypatch.delenv("ENGINE_DEBUG", raising=False)
    runner.run(load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7}))),
               quiet=True)
    assert [type(e) for e in engines] == [LeanEngine]
    fit_calls = [c for c in calls if c.startswith(("Running callback EpochSync", "Running event"))]
    assert (len(fit_calls) > 100) == debug, len(fit_calls)
