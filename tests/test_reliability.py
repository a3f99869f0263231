"""Reliability: interrupts and resume, divergence, and bad input never producing a traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effrecipes.cli import main
from tests.conftest import REPO, tiny_recipe, write_recipe

SLOW_RECIPE = {"budget.flops": 6e9, "data.kwargs.num_train": 640, "eval.every_epochs": 100}


def _metrics(root: Path, name: str = "tiny") -> dict[str, Any]:
    return json.loads((root / name / "metrics.json").read_text())


def _start(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EFFRECIPES_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "effrecipes.cli", str(path), "--quiet", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_saves_then_resume_matches_uninterrupted_flops(tmp_path: Path) -> None:
    # reference: the same recipe, uninterrupted
    ref = tiny_recipe(tmp_path, **SLOW_RECIPE, **{"output.root": str(tmp_path / "ref")})
    assert main([str(write_recipe(tmp_path, ref, "ref.yaml")), "--quiet"]) == 0
    expected = _metrics(tmp_path / "ref")
    assert expected["stop_reason"] == "flops"

    recipe = tiny_recipe(tmp_path, **SLOW_RECIPE)
    path = write_recipe(tmp_path, recipe)
    proc = _start(path)
    runs = tmp_path / "runs"
    deadline = time.time() + 120
    # wait until training is under way (the temporary run directory has its history file)
    while time.time() < deadline and not list(runs.glob(".tiny.tmp-*/recipe.yaml")):
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    interrupted = _metrics(runs)
    assert interrupted["stop_reason"] == "interrupted", err
    assert 0 < interrupted["flops_used"] < expected["flops_used"]
    assert (runs / "tiny" / "resume.pt").exists()
    assert not list(runs.glob(".tiny.tmp-*"))

    assert main([str(path), "--quiet", "--resume"]) == 0
    resumed = _metrics(runs)
    assert resumed["stop_reason"] == "flops"
    assert resumed["flops_used"] == expected["flops_used"] <= recipe["budget"]["flops"]
    assert resumed["batches"] == expected["batches"]
    assert not (runs / "tiny" / "resume.pt").exists()


def test_resume_refuses_finished_or_changed_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7}))
    assert main([str(path), "--quiet", "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err
    assert main([str(path), "--quiet"]) == 0
    assert main([str(path), "--quiet", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_divergence_stops_and_keeps_last_good_weights(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, **{"optimizer": {"name": "sgd", "lr": 1e12, "momentum": 0.0,
                                                    "weight_decay": 0.0}, "budget.flops": 2e8})
    assert main([str(write_recipe(tmp_path, recipe)), "--quiet"]) == 0
    m = _metrics(tmp_path / "runs")
    assert m["stop_reason"] == "diverged"
    assert m["batches"] < m["planned_batches"]
    assert m["flops_used"] <= 2e8
    assert any("non-finite" in w for w in m["warnings"])
    assert (tmp_path / "runs" / "tiny" / "checkpoint.pt").exists()


# ---------------------------------------------------------------- property-based bad input

SECTIONS = ["name", "seed", "data", "model", "optimizer", "scheduler", "algorithms", "budget",
            "eval", "loggers", "output", "strict", "unknown"]
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(section=st.sampled_from(SECTIONS), value=junk)
def test_any_bad_section_value_is_one_line_exit_2(tmp_path_factory: pytest.TempPathFactory,
                                                   section: str, value: Any) -> None:
    tmp = tmp_path_factory.mktemp("h")
    recipe = tiny_recipe(tmp)
    recipe[section] = value
    path = tmp / "r.yaml"
    try:
        path.write_text(yaml.safe_dump(recipe))
    except Exception:
        return
    r = subprocess_free_cli(path)
    assert r[0] in (0, 2), r
    if r[0] == 2:
        assert r[1].startswith("error: ") and r[1].count("\n") == 1 and "Traceback" not in r[1]
    assert not list((tmp / "runs").glob("*")) if (tmp / "runs").exists() else True


def subprocess_free_cli(path: Path) -> tuple[int, str]:
    """Run the CLI in-process with --dry-run, capturing stderr."""
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(path), "--dry-run"])
    return code, err.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_traceback(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("b") / "r.yaml"
    path.write_bytes(raw)
    code, err = subprocess_free_cli(path)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("key,value,fragment", [
    ("budget.flops", 0, "positive"),
    ("budget.flops", 1, "affords no training batch"),
    ("data.batch_size", 100000, "less than or equal"),
    ("data.batch_size", 10000, "fewer than one batch"),
    ("output.root", "/proc/forbidden", "output"),
])
def test_specific_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any,
                             fragment: str) -> None:
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, **{key: value}))
    code = main([str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1, err
    assert str(path) in err or "output" in key


def test_huge_and_unwritable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: x\nnotes: " + "a" * 2_000_000 + "\n")
    assert main([str(big)]) == 2 and "limited to" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2 and "directory" in capsys.readouterr().err


def test_wandb_api_key_never_written(tmp_path: Path) -> None:
    """An offline W&B run with an API key in the environment: the key appears in no file the run
    or W&B wrote, and not in the output."""
    secret = "0123456789abcdef-sentinel-wandb-key-fedcba9876543210"
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7,
                                      "loggers.wandb": {"enabled": True, "mode": "offline",
                                                        "project": "effrecipes-test"}})
    path = write_recipe(tmp_path, recipe)
    env = {**os.environ, "WANDB_API_KEY": secret, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path),
           "EFFRECIPES_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "effrecipes.cli", str(path), "--quiet"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert secret not in proc.stdout + proc.stderr
    wandb_files = list((tmp_path / "wandb").rglob("*"))
    assert any(p.suffix == ".wandb" for p in wandb_files), "W&B wrote no offline run"
    assert "wandb sync" in proc.stdout
    # per-batch FLOPs spent and the final metrics (summary) are in the offline run's record
    record = next(p for p in wandb_files if p.suffix == ".wandb").read_bytes()
    assert b"budget/flops_used" in record and b"test_accuracy" in record
    for p in [*tmp_path.rglob("*")]:
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p
