"""Faults around a run: resuming from checkpoints that are crafted, corrupt or hold a varying
schedule (issue #15 item 4, issue #14 point 4)."""
from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from effrecipes import callbacks, runner
from effrecipes.cli import main
from tests.conftest import tiny_recipe, write_recipe

CAP = 3e8


class StopAt(callbacks.RunGuard):
    """Ctrl-C at batch 9, as a user would press it."""

    def batch_end(self, state: Any, logger: Any) -> None:
        if int(state.timestamp.batch) == 9:
            self.request_stop()
        super().batch_end(state, logger)


def _interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Path:
    monkeypatch.setattr(runner, "RunGuard", StopAt)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": CAP, **overrides}))
    assert main([str(path), "--quiet"]) == 0
    monkeypatch.setattr(runner, "RunGuard", callbacks.RunGuard)
    assert (tmp_path / "runs" / "tiny" / "resume.pt").exists()
    return path


def _metrics(root: Path, name: str = "tiny") -> dict[str, Any]:
    return json.loads((root / name / "metrics.json").read_text())


def test_resume_of_a_varying_cost_one_cycle_run_equals_the_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-cycle follows the budget's horizon (a function, never saved in the checkpoint); SAM
    every 2nd step makes the horizon move. Resumed = uninterrupted, batch for batch."""
    over = {"scheduler.name": "one_cycle", "algorithms": [{"sam": {"interval": 2}}]}
    ref = tiny_recipe(tmp_path, **{"budget.flops": CAP, "output.root": str(tmp_path / "ref"), **over})
    assert main([str(write_recipe(tmp_path, ref, "ref.yaml")), "--quiet"]) == 0
    path = _interrupted_run(tmp_path, monkeypatch, **over)
    assert main([str(path), "--quiet", "--resume"]) == 0
    whole, resumed = _metrics(tmp_path / "ref"), _metrics(tmp_path / "runs")
    assert resumed["stop_reason"] == "flops"
    assert (resumed["batches"], resumed["flops_used"]) == (whole["batches"], whole["flops_used"])
    assert resumed["test_accuracy"] == whole["test_accuracy"]


class _Payload:
    """A pickle that runs code when loaded with code execution allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.write_text, (self.marker, "code ran"))


def test_a_crafted_resume_checkpoint_never_runs_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    path = _interrupted_run(tmp_path, monkeypatch)
    ckpt = tmp_path / "runs" / "tiny" / "resume.pt"
    marker = tmp_path / "pwned"
    state = torch.load(ckpt, weights_only=False)
    state["state"]["metadata"] = _Payload(marker)
    torch.save(state, ckpt)
    capsys.readouterr()
    assert main([str(path), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert err.count("\n") == 1 and "refusing to load" in err and "resume.pt" in err, err


@pytest.mark.parametrize("damage", ["truncate", "garbage", "plain_pickle"])
def test_a_corrupt_resume_checkpoint_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], damage: str) -> None:
    path = _interrupted_run(tmp_path, monkeypatch)
    ckpt = tmp_path / "runs" / "tiny" / "resume.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100,
                      "plain_pickle": pickle.dumps({"state": 1})}[damage])
    capsys.readouterr()
    assert main([str(path), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "resume.pt" in err, err


def test_a_byte_flipped_gzip_dataset_file_is_one_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from effrecipes.data.formats import write_idx

    root = tmp_path / "fmnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 16)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", (rng.random((n, 28, 28)) * 255).astype(np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    f = root / "train-images-idx3-ubyte.gz"
    data = bytearray(f.read_bytes())
    for i in range(40, len(data) - 20, 97):  # flip bytes inside the deflate stream
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    recipe = tiny_recipe(tmp_path, **{"data": {"name": "fashion_mnist", "root": str(root),
                                               "download": False, "batch_size": 16}})
    capsys.readouterr()
    assert main([str(write_recipe(tmp_path, recipe)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-images-idx3-ubyte.gz" in err and "Traceback" not in err, err


def test_a_killed_runs_temp_dir_is_cleaned_and_a_live_ones_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7})
    path = write_recipe(tmp_path, recipe)
    runs = tmp_path / "runs"
    runs.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (runs / f".tiny.tmp-{dead.pid}").mkdir()  # as SIGKILL leaves it
    alive = subprocess.Popen(["sleep", "30"])
    try:
        (runs / f".tiny.tmp-{alive.pid}").mkdir()  # another run writing right now
        capsys.readouterr()
        assert main([str(path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"another run (process {alive.pid})" in err and err.count("\n") == 1, err
    finally:
        alive.kill()
        alive.wait()
    assert main([str(path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "removed .tiny.tmp-" in err
    assert not list(runs.glob(".tiny.tmp-*")) and (runs / "tiny" / "metrics.json").exists()


@pytest.mark.slow
def test_ablate_workers_die_with_their_parent(tmp_path: Path) -> None:
    """SIGKILL of the composer-ablate process alone (not its group): its worker gets SIGTERM,
    stops after its batch and exits instead of training on as an orphan."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e10,
                                                    "data.kwargs.num_train": 2000}), "base.yaml")
    spec = {"name": "m", "base": "base.yaml", "output": str(tmp_path / "matrices"),
            "algorithms": {"mode": "one_at_a_time", "pool": {"cutout": {"length": 4}}}, "seeds": [0]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "effrecipes.matrix.cli", str(tmp_path / "spec.yaml"),
                             "--workers", "1"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "matrices" / "m").glob("cells/*/.*.tmp-*/recipe.yaml")):
            assert proc.poll() is None and time.time() < deadline, "no cell started"
            time.sleep(0.1)
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                    text=True).stdout.split()]
        assert children
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 60
        while any(Path(f"/proc/{c}").exists() and "zombie" not in Path(f"/proc/{c}/status").read_text()
                  for c in children):
            assert time.time() < deadline, [Path(f"/proc/{c}/cmdline").read_text() for c in children if Path(f"/proc/{c}").exists()]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        for c in subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split():
            os.kill(int(c), signal.SIGKILL)


def test_a_mistake_found_while_preparing_leaves_no_directory(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The cap affords no batch: found after the recipe validated, before training; the output
    root (several levels that do not exist yet) must not be created."""
    out = tmp_path / "a" / "b" / "runs"
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 10, "output.root": str(out)})
    assert main([str(write_recipe(tmp_path, recipe)), "--quiet"]) == 2
    assert "budget.flops" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_runs_get_unique_directories_and_a_latest_link(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No output.run_name: each run gets `<name>-<timestamp>` (never replacing the last one) and
    `<name>-latest` points to the newest; --resume follows the link."""
    recipe = tiny_recipe(tmp_path, **{"budget.flops": CAP})
    del recipe["output"]["run_name"]
    path = write_recipe(tmp_path, recipe)
    runs = tmp_path / "runs"
    assert main([str(path), "--quiet"]) == 0
    assert main([str(path), "--quiet"]) == 0
    dirs = sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink())
    assert len(dirs) == 2 and all(d.name.startswith("tiny-2") for d in dirs)
    latest = runs / "tiny-latest"
    assert latest.is_symlink() and latest.resolve() == dirs[-1].resolve()
    m = _metrics(runs, "tiny-latest")
    assert m["run_name"] == dirs[-1].name
    # an interrupted run, resumed through the link
    monkeypatch.setattr(runner, "RunGuard", StopAt)
    assert main([str(path), "--quiet"]) == 0
    monkeypatch.setattr(runner, "RunGuard", callbacks.RunGuard)
    assert _metrics(runs, "tiny-latest")["stop_reason"] == "interrupted"
    assert main([str(path), "--quiet", "--resume"]) == 0
    assert _metrics(runs, "tiny-latest")["stop_reason"] == "flops"
    assert len([p for p in runs.iterdir() if p.is_dir() and not p.is_symlink()]) == 3


def test_symlinks_at_or_in_a_run_directory_are_one_line_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(tmp_path / "nowhere", runs / "tiny")  # dangling, at the named run path
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": CAP}))
    capsys.readouterr()
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err, err
    (runs / "tiny").unlink()
    _interrupted_run(tmp_path, monkeypatch)
    secret = tmp_path / "outside.txt"
    secret.write_text("not the run's")
    (runs / "tiny" / "history.csv").unlink()
    os.symlink(secret, runs / "tiny" / "history.csv")
    capsys.readouterr()
    assert main([str(path), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic links (history.csv)" in err, err


def _no_space(*a: Any, **k: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_the_final_checkpoint_keeps_the_measured_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """torch.save of checkpoint.pt fails: one line, exit 2, and the trained run is kept with its
    metrics (and a warning), not thrown away."""
    real = torch.save

    def save(obj: Any, f: Any, *a: Any, **k: Any) -> Any:
        if str(f).endswith("checkpoint.pt"):
            real(obj, f, *a, **k)  # half a file on disk, as a filling disk leaves it
            _no_space()
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7}))
    capsys.readouterr()
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write checkpoint.pt: No space left on device" in err, err
    assert "kept without it" in err and "Traceback" not in err
    assert not list((tmp_path / "runs").glob(".tiny.tmp-*"))
    m = _metrics(tmp_path / "runs")
    assert m["stop_reason"] == "flops" and m["test_accuracy"] is not None
    assert any("checkpoint.pt could not be written" in w for w in m["warnings"])
    assert not (tmp_path / "runs" / "tiny" / "checkpoint.pt").exists()


def _history_fails_at_row(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    real = callbacks.csv.DictWriter.writerow
    calls = {"rows": 0}

    def writerow(self: Any, row: Any) -> Any:
        if isinstance(row, dict) and row.get("val_accuracy") != "val_accuracy":  # not the header
            calls["rows"] += 1
            if calls["rows"] >= n:
                _no_space()
        return real(self, row)

    monkeypatch.setattr(callbacks.csv.DictWriter, "writerow", writerow)


def test_a_disk_full_mid_run_keeps_the_run_resumable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """history.csv cannot be written at the 2nd validation: the run stops like an interruption,
    is kept resumable (one line saying so, exit 2), and --resume ends exactly where an
    uninterrupted run ends."""
    over = {"budget.flops": CAP, "eval.every_epochs": "3ba"}
    ref = tiny_recipe(tmp_path, **{**over, "output.root": str(tmp_path / "ref")})
    assert main([str(write_recipe(tmp_path, ref, "ref.yaml")), "--quiet"]) == 0
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **over))
    with monkeypatch.context() as m:
        _history_fails_at_row(m, 2)
        capsys.readouterr()
        assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write history.csv: No space left on device" in err, err
    assert "kept resumable" in err and "--resume" in err
    kept = _metrics(tmp_path / "runs")
    assert kept["stop_reason"] == "interrupted" and (tmp_path / "runs" / "tiny" / "resume.pt").exists()
    rows = (tmp_path / "runs" / "tiny" / "history.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[1] == "3"  # the header and the one whole row
    assert main([str(path), "--quiet", "--resume"]) == 0
    whole, resumed = _metrics(tmp_path / "ref"), _metrics(tmp_path / "runs")
    assert (resumed["batches"], resumed["flops_used"]) == (whole["batches"], whole["flops_used"])


def test_a_disk_too_full_for_the_resume_checkpoint_keeps_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _history_fails_at_row(monkeypatch, 1)
    monkeypatch.setattr(runner, "save_checkpoint", _no_space)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": CAP}))
    capsys.readouterr()
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing of this run was kept" in err, err
    assert not (tmp_path / "runs" / "tiny").exists()
    assert not list((tmp_path / "runs").glob(".tiny.tmp-*"))


# ------------------------------------------------ EMA: the weights validated are the weights tested

def _checkpoint_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_an_ema_run_tests_and_saves_the_averaged_weights(tmp_path: Path) -> None:
    """EMA reads the weights but never changes the training trajectory, so a run with EMA and one
    without train identical weights; Composer's EMA hands the training weights back after fit, and
    both runs then tested and saved the same model (seen: 91.52% in both, fashion_mnist_10k_round3)."""
    runs = {}
    for name, algos in (("plain", []), ("ema", [{"ema": {"half_life": "2ba"}}])):
        recipe = tiny_recipe(tmp_path, **{"budget.flops": CAP, "algorithms": algos,
                                          "output.root": str(tmp_path / name)})
        assert main([str(write_recipe(tmp_path, recipe, f"{name}.yaml")), "--quiet"]) == 0
        runs[name] = _checkpoint_weights(tmp_path / name / "tiny")
    assert any(not torch.equal(runs["plain"][k], runs["ema"][k]) for k in runs["plain"]
               if runs["plain"][k].is_floating_point())


def test_resume_of_an_ema_run_equals_the_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    over = {"algorithms": [{"ema": {"half_life": "3ba"}}]}
    ref = tiny_recipe(tmp_path, **{"budget.flops": CAP, "output.root": str(tmp_path / "ref"), **over})
    assert main([str(write_recipe(tmp_path, ref, "ref.yaml")), "--quiet"]) == 0
    path = _interrupted_run(tmp_path, monkeypatch, **over)
    assert main([str(path), "--quiet", "--resume"]) == 0
    whole, resumed = _metrics(tmp_path / "ref"), _metrics(tmp_path / "runs")
    assert (resumed["batches"], resumed["flops_used"]) == (whole["batches"], whole["flops_used"])
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    a, b = _checkpoint_weights(tmp_path / "ref" / "tiny"), _checkpoint_weights(tmp_path / "runs" / "tiny")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.parametrize("data_path", [[], [{"randaugment": {"depth": 1, "severity": 3}}]],
                         ids=["in_memory", "per_sample"])
def test_resume_of_a_whitened_run_keeps_its_filters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    data_path: list[dict[str, Any]]) -> None:
    """The stem is whitened once, when the run starts; a resumed run keeps the checkpoint's filters
    (whitening again from the resumed epoch's images would change them) and is charged once. On
    the per-sample path the pass draws from the DataLoader's shuffle generator, which a resumed run
    does not: its state is put back, or the resumed run would see another data order (seen: test
    accuracy 93.75 against 100.0)."""
    over = {"algorithms": data_path + [{"whiten_stem": {"images": 64}}]}
    ref = tiny_recipe(tmp_path, **{"budget.flops": CAP, "output.root": str(tmp_path / "ref"), **over})
    assert main([str(write_recipe(tmp_path, ref, "ref.yaml")), "--quiet"]) == 0
    path = _interrupted_run(tmp_path, monkeypatch, **over)
    assert main([str(path), "--quiet", "--resume"]) == 0
    whole, resumed = _metrics(tmp_path / "ref"), _metrics(tmp_path / "runs")
    assert whole["extra_train_flops"] > 0
    assert [resumed[k] for k in ("batches", "flops_used", "extra_train_flops", "test_accuracy")] == \
        [whole[k] for k in ("batches", "flops_used", "extra_train_flops", "test_accuracy")]
    a, b = _checkpoint_weights(tmp_path / "ref" / "tiny"), _checkpoint_weights(tmp_path / "runs" / "tiny")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_best_weights_keeps_the_weights_that_were_validated() -> None:
    """The copy is the model at EVAL_START (EMA's average), not what EVAL_END sees after EMA
    swapped the training weights back."""
    net = torch.nn.Linear(2, 2)

    class Metric:
        def compute(self) -> torch.Tensor:
            return torch.tensor(0.5)

    state = type("S", (), {"model": net, "eval_metrics": {"val": {"MulticlassAccuracy": Metric()}}})()
    cb = callbacks.BestWeights()
    with torch.no_grad():
        net.weight.fill_(1.0)
    cb.eval_start(state, None)  # type: ignore[arg-type]
    with torch.no_grad():
        net.weight.fill_(2.0)  # what an algorithm's EVAL_END swap puts back
    cb.eval_end(state, None)  # type: ignore[arg-type]
    assert cb.state is not None and torch.equal(cb.state["weight"], torch.ones(2, 2))
