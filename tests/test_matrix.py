"""Ablation matrices (`composer-ablate`): expansion, ids, hashes, validation, real runs on 2 workers,
resume after SIGKILL, failures, the lock, results tables, and the Ray executor."""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from effrecipes.matrix.cells import expand_combos, load_matrix, recipe_hash
from effrecipes.matrix.cli import main
from effrecipes.matrix.spec import spec_as_run, validate_spec
from effrecipes.matrix.state import MatrixLock, classify
from effrecipes.recipe import load_recipe, recipe_to_yaml
from tests.conftest import tiny_recipe, write_recipe

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "composer-ablate"  # the console script
ABLATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "effrecipes.matrix.cli"]


def make_spec(tmp_path: Path, recipe: dict[str, Any] | None = None, **spec: Any) -> Path:
    write_recipe(tmp_path, recipe or tiny_recipe(tmp_path), "base.yaml")
    data = {"name": "m", "base": "base.yaml", "output": str(tmp_path / "matrices"),
            "algorithms": {"mode": "one_at_a_time", "pool": {"cutout": {"length": 4}}}, "seeds": [0]}
    data.update(spec)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ablate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(matrix_dir: Path) -> list[dict[str, str]]:
    with open(matrix_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def run_metrics(matrix_dir: Path) -> list[Path]:
    """metrics.json of finished run dirs (not of `.<id>.tmp-<pid>` dirs a killed run left)."""
    return [p for p in matrix_dir.glob("cells/*/*/metrics.json") if not p.parent.name.startswith(".")]


POOL = {"blurpool": {}, "cutout": {"length": 4}, "label_smoothing": {"smoothing": 0.1}}


@pytest.mark.parametrize("mode,expected", [
    ("one_at_a_time", [(), ("blurpool",), ("cutout",), ("label_smoothing",)]),
    ("leave_one_out", [("blurpool", "cutout", "label_smoothing"), ("cutout", "label_smoothing"),
                       ("blurpool", "label_smoothing"), ("blurpool", "cutout")]),
    ("all_subsets", [(), ("blurpool",), ("cutout",), ("label_smoothing",), ("blurpool", "cutout"),
                     ("blurpool", "label_smoothing"), ("cutout", "label_smoothing"),
                     ("blurpool", "cutout", "label_smoothing")]),
    ("cumulative", [(), ("blurpool",), ("blurpool", "cutout"), ("blurpool", "cutout", "label_smoothing")]),
    ("explicit", [("blurpool", "cutout"), ()]),
])
def test_mode_expansion(mode: str, expected: list[tuple[str, ...]]) -> None:
    algos: dict[str, Any] = {"mode": mode, "pool": POOL}
    if mode == "explicit":
        algos["combos"] = [["cutout", "blurpool"], []]  # canonical (pool) order in the cell
    spec = validate_spec({"name": "m", "base": "b.yaml", "algorithms": algos})
    assert expand_combos(spec) == expected


def test_grid_seeds_product_ids_hashes_and_replayable_overrides(tmp_path: Path) -> None:
    path = make_spec(tmp_path, algorithms={"mode": "explicit", "pool": POOL,
                                           "pseudo": {"one_cycle": ["scheduler.name=one_cycle"]},
                                           "combos": [["cutout", "blurpool"], [], ["one_cycle"]]},
                     grid={"optimizer.lr": ["1e-3", 1e-4], "data.batch_size": [32, 64]},
                     seeds=[0, 1, 2])
    m = load_matrix(path)
    assert not m.invalid and len(m.cells) == 3 * 2 * 2 * 3
    ids = [c.id for c in m.cells]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "blurpool+cutout__lr=0.001__bs=32__s0"
    assert "baseline__lr=0.0001__bs=64__s2" in ids and "one_cycle__lr=0.001__bs=32__s1" in ids
    c = next(c for c in m.cells if c.id == "blurpool+cutout__lr=0.0001__bs=64__s1")
    r = c.recipe
    assert r.optimizer.lr == 1e-4 and r.data.batch_size == 64 and r.seed == 1
    assert r.algorithm_names == ["blurpool", "cutout"]
    assert r.output.root == str(m.matrix_dir / "cells" / c.id) and r.output.run_name == c.id
    oc = next(c for c in m.cells if c.id == "one_cycle__lr=0.001__bs=32__s1")
    assert oc.recipe.scheduler.name == "one_cycle" and oc.recipe.algorithms == []
    assert len({c.hash for c in m.cells}) == len(m.cells)
    # the hash ignores output.*: the same spec under another output dir has the same hashes
    other = load_matrix(path, output=tmp_path / "elsewhere")
    assert [c.hash for c in other.cells] == [c.hash for c in m.cells]
    # the recorded overrides reproduce the cell with composer-run
    replay = load_recipe(tmp_path / "base.yaml", c.overrides)
    assert recipe_hash(replay) == c.hash


def test_equal_epochs_view_removes_flop_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_spec(tmp_path, view="equal_epochs", overrides=["budget.max_epochs=2"])
    m = load_matrix(path)
    assert all(c.recipe.budget.flops is None and c.recipe.budget.max_epochs == 2 for c in m.cells)
    path = make_spec(tmp_path, view="equal_epochs")  # no max_epochs anywhere
    code, _, err = ablate(capsys, str(path), "--list-cells")
    assert code == 2 and "budget.max_epochs: view equal_epochs needs budget.max_epochs" in err


@pytest.mark.parametrize("change,fragment", [
    ({"algorithms": {"mdoe": "x", "pool": POOL}},
     "spec.yaml: algorithms.mdoe: unknown key; valid keys (closest first): mode"),
    ({"algorithms": {"mode": "one_by_one", "pool": POOL}},
     "spec.yaml: algorithms.mode: Input should be 'one_at_a_time', 'leave_one_out', 'all_subsets', "
     "'cumulative' or 'explicit'"),
    ({"algorithms": {"pool": {"blurpol": {}}}},
     "spec.yaml: algorithms.pool.blurpol: unknown algorithm 'blurpol'; valid choices (closest first): blurpool"),
    ({"algorithms": {"pool": {"cutout": {"lenght": 4}}}},
     "spec.yaml: algorithms.pool.cutout.lenght: unknown argument 'lenght'; valid (closest first): length"),
    ({"algorithms": {"mode": "explicit", "pool": POOL, "combos": [["blurpol"]]}},
     "spec.yaml: algorithms.combos.0: unknown technique 'blurpol'; valid (closest first): blurpool"),
    ({"algorithms": {"mode": "cumulative", "pool": POOL, "combos": [[]]}},
     "spec.yaml: algorithms.combos: combos is only read in mode explicit"),
    ({"view": "equal_steps"}, "spec.yaml: view: Input should be 'equal_flops' or 'equal_epochs'"),
    ({"base": "missing.yaml"}, "spec.yaml: base: base recipe"),
    ({"seeds": [0, 0]}, "spec.yaml: seeds: a seed is listed twice"),
    ({"grid": {"seed": [1, 2]}}, "spec.yaml: grid: vary the seed with `seeds:`"),
    ({"reference": {"source": "x", "values": {"blurpool": 1.0}}},
     "spec.yaml: reference.values.blurpool: 'blurpool' is not a combination of this matrix"),
    ({"colour": 1}, "spec.yaml: colour: unknown key; valid keys (closest first):"),
    ({"base": "b\0.yaml"}, "spec.yaml: base: not a valid path (it holds a NUL byte)"),
    ({"output": "o\0x"}, "spec.yaml: output: not a valid path (it holds a NUL byte)"),
])
def test_bad_spec_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  change: dict[str, Any], fragment: str) -> None:
    path = make_spec(tmp_path, **change)
    code, out, err = ablate(capsys, str(path))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err
    assert not (tmp_path / "matrices").exists()


def test_invalid_cells_one_error_line_and_dry_run_lists_all(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = make_spec(tmp_path, grid={"optimizer.lr": [0.05, -1], "data.batch_size": [16, 0]})
    # 2 combos x (3 bad grid points of 4) = 6 invalid cells: one error line (the count, the first
    # cell and its message, and the command that lists them all), nothing else on stderr
    code, out, err = ablate(capsys, str(path), "--workers", "2")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}: 6 of 8 cells are invalid; first: "
                          "baseline__lr=0.05__bs=0__s0: data.batch_size: Input should be "), err
    assert err.endswith(f"(got 0) (composer-ablate {path} --dry-run lists them all)\n"), err
    assert not (tmp_path / "matrices").exists()
    # --dry-run lists every invalid cell with its message on stdout, then the same one line
    code, out, err = ablate(capsys, str(path), "--dry-run", "--calibration-batches", "0")
    assert code == 2 and err.count("\n") == 1 and "6 of 8 cells are invalid" in err, err
    assert "all of them are listed above" in err
    listed = [ln for ln in out.splitlines() if ln.startswith("  ") and "__s0: " in ln]
    assert len(listed) == 6, out
    assert "  baseline__lr=-1__bs=16__s0: optimizer.lr: Input should be greater than 0" in out
    assert "  cutout__lr=0.05__bs=0__s0: data.batch_size:" in out
    valid = [ln for ln in out.splitlines() if ln.startswith(("baseline__lr=0.05__bs=16__s0 ",
                                                             "cutout__lr=0.05__bs=16__s0 "))]
    assert len(valid) == 2 and all("invalid" not in ln for ln in valid), out  # still planned
    # --list-cells too
    code, out, err = ablate(capsys, str(path), "--list-cells")
    assert code == 2 and err.count("\n") == 1 and "6 of 8 cells are invalid" in err, err
    assert sum("  invalid  " in ln for ln in out.splitlines()) == 6, out
    assert not (tmp_path / "matrices").exists()


def test_matrix_state_reads_hostile_files_through_one_bounded_reader(tmp_path: Path) -> None:
    """The matrix state (cell records, failure records, metrics.json, recipe.yaml) is read by
    `effrecipes.files`: a FIFO never blocks, /dev/zero is never read, deep nesting, bad
    UTF-8 and bad explicit YAML tags are Unreadable (None to the state), never an exception."""
    import signal

    from effrecipes.matrix.cells import run_dir_hash
    from effrecipes.matrix.state import read_json

    class Blocked(BaseException):  # not an OSError: nothing under test may swallow it
        pass

    def blocked(signum: int, frame: Any) -> None:
        raise Blocked("a read blocked")

    old = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(20)
    try:
        os.mkfifo(tmp_path / "fifo.json")
        os.symlink("/dev/zero", tmp_path / "zero.json")
        (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
        (tmp_path / "latin1.json").write_bytes(b'{"a": "\xff"}')
        hostile = [("fifo.json", "is a FIFO"), ("zero.json", "is a device"),
                   ("deep.json", "nested too deeply"), ("latin1.json", "not UTF-8 text"),
                   ("missing.json", "missing")]
        for name, _ in hostile:  # the state's reader: None, at once
            assert read_json(tmp_path / name) is None
        os.mkfifo(tmp_path / "recipe.yaml")  # a run directory's recipe.yaml: no hash, at once
        assert run_dir_hash(tmp_path) is None

        from effrecipes import files

        for name, reason in hostile:
            with pytest.raises(files.Unreadable, match=reason):
                files.read_json(tmp_path / name)
        (tmp_path / "big.json").write_text(" " * 100 + "{}")
        with pytest.raises(files.Unreadable, match="larger than 10 bytes"):
            files.read_json(tmp_path / "big.json", limit=10)
        (tmp_path / "recipe.yaml").unlink()
        for tagged in ("!!float abc", "!!int abc", "!!timestamp abc", "!!bool maybe",
                       "[" * 10_000 + "]" * 10_000):
            (tmp_path / "recipe.yaml").write_text(f"name: x\nnotes: {tagged}\n")
            for loader in (yaml.safe_load, files.load_yaml_text):
                with pytest.raises(files.Unreadable, match="invalid YAML|nested too deeply"):
                    files.read_yaml(tmp_path / "recipe.yaml", loader)
            assert run_dir_hash(tmp_path) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _fake_run(m: Any, cell: Any, **metrics: Any) -> Path:
    run_dir = m.run_dir(cell)
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(cell.recipe))
    full = {"test_accuracy": None, "best_val_accuracy": None, "flops_used": 1e8, "flops_cap": 2e8,
            "stop_reason": "flops", "params": 1470, "model_size_bytes": 17000,
            "cpu_latency_ms_per_image": 0.5, "wall_seconds": 1.0, "epochs": 1.0}
    full.update(metrics)
    (run_dir / "metrics.json").write_text(json.dumps(full))
    return run_dir


def test_aggregates_noise_rule_diverged_and_interrupted_from_run_dirs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_spec(tmp_path, seeds=[0, 1, 2])
    m = load_matrix(path)
    cells = {c.id: c for c in m.cells}
    for cid, acc in (("baseline__s0", 50.0), ("baseline__s1", 54.0), ("cutout__s0", 60.0),
                     ("cutout__s1", 64.0)):
        _fake_run(m, cells[cid], test_accuracy=acc)
    _fake_run(m, cells["cutout__s2"], test_accuracy=10.0, stop_reason="diverged")
    run_dir = _fake_run(m, cells["baseline__s2"], test_accuracy=30.0, stop_reason="interrupted")
    (run_dir / "resume.pt").write_bytes(b"x")
    assert classify(m, cells["baseline__s2"]) == ("interrupted", "interrupted (resumable)")
    assert classify(m, cells["cutout__s2"])[0] == "diverged"
    from effrecipes.matrix.execute import plan_work
    to_run, skipped, _ = plan_work(m, m.cells, retry_failed=False)
    assert [c.id for c in to_run] == ["baseline__s2"] and len(skipped) == 5

    from effrecipes.matrix.results import write_results
    res = write_results(m)
    by = {r["cell_id"]: r for r in res["cells"]}
    assert by["cutout__s2"]["status"] == "diverged" and by["baseline__s2"]["status"] == "interrupted"
    agg = {g["techniques"]: g for g in res["aggregate"]}
    base, cut = agg["baseline"], agg["cutout"]
    assert base["n"] == 2 and base["test_accuracy_mean"] == 52.0  # interrupted run not counted
    assert base["test_accuracy_std"] == pytest.approx(math.sqrt(8.0))
    assert cut["n"] == 3 and cut["n_diverged"] == 1  # a diverged run is a result, counted
    assert cut["test_accuracy_mean"] == pytest.approx(134.0 / 3)
    assert cut["delta_mean"] == pytest.approx(134.0 / 3 - 52.0)
    assert cut["delta_std"] == pytest.approx(math.hypot(cut["test_accuracy_std"], math.sqrt(8.0)))
    assert cut["within_noise"] is True  # |-7.3| <= ~29.5
    md = (m.matrix_dir / "results.md").read_text()
    assert "(1 failed" not in md and "1 diverged" in md and "interrupted 1" in md


def test_spec_yaml_records_the_command_line_overrides(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """<matrix_dir>/spec.yaml is the spec that ran: with the command-line overrides applied (so
    the copy alone rebuilds the same cells) and the command in a comment; without overrides, the
    file as written."""
    path = make_spec(tmp_path)
    overrides = ["seeds=[0,1]", "budget.flops=3e8"]
    m = load_matrix(path, overrides)
    for c in m.cells:
        _fake_run(m, c, test_accuracy=50.0)  # every cell finished: nothing trains
    code, _, err = ablate(capsys, str(path), *overrides, "--quiet")
    assert code == 0, err
    text = (m.matrix_dir / "spec.yaml").read_text()
    assert f"#   composer-ablate {path.resolve()} 'seeds=[0,1]' budget.flops=3e8" in text.splitlines()
    again = load_matrix(m.matrix_dir / "spec.yaml")  # no overrides needed: they are in the copy
    assert [(c.id, c.hash) for c in again.cells] == [(c.id, c.hash) for c in m.cells]
    assert len(again.cells) == 4 and again.base_path == m.base_path
    assert spec_as_run(path, [], m.base_path) == path.read_text()


def test_lock_refuses_a_second_invocation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_spec(tmp_path)
    mdir = tmp_path / "matrices" / "m"
    with MatrixLock(mdir):
        code, out, err = ablate(capsys, str(path))
    assert code == 2 and err.count("\n") == 1
    assert f"error: {mdir}: matrix is locked by another composer-ablate (pid {os.getpid()})" in err
    assert not (mdir / "results.md").exists()


def test_real_matrix_sigkill_resume_two_workers_failures_and_results(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One real matrix for the expensive checks (each worker pays a torch/Composer import):
    one_at_a_time over 2 algorithms + a `broken` pseudo-technique whose synthetic data has one
    class (valid schema, the dataset builder fails at run time) + a `huge_lr` one that diverges,
    x 2 seeds = 10 cells.
    1. `composer-ablate` subprocess, 1 worker; once a cell has finished, a second invocation is
       refused by the lock; then SIGKILL the whole process group.
    2. re-run in-process with 2 workers: finished cells untouched, the rest run, the broken cells
       are recorded as failed, the diverged ones as diverged, the others finish; results have
       aggregates and deltas.
    3. re-run: nothing runs, no duplicate rows; a changed cell is pending again."""
    path = make_spec(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 6e8}), seeds=[0, 1],
                     algorithms={"mode": "one_at_a_time",
                                 "pool": {"cutout": {"length": 4}, "label_smoothing": {"smoothing": 0.1}},
                                 "pseudo": {"broken": ["data.kwargs.num_classes=1"],
                                            "huge_lr": ["optimizer.lr=1e12"]}})
    mdir = tmp_path / "matrices" / "m"
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    log = tmp_path / "first_run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*ABLATE, str(path), "--workers", "1"], start_new_session=True,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 80
        while not glob.glob(str(mdir / "cells/*/*/metrics.json")):
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, "no cell finished within 80 s"
            time.sleep(0.05)
        code, _, err = ablate(capsys, str(path))
        assert code == 2 and err.count("\n") == 1
        assert f"matrix is locked by another composer-ablate (pid {proc.pid})" in err
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the matrix process and its worker
        proc.wait()
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_metrics(mdir)}
    assert 1 <= len(finished) < 6

    code, out, err = ablate(capsys, str(path), "--workers", "2")
    assert code == 1, err  # some cells failed; the matrix went on
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished} == finished
    got = rows(mdir)
    ids = [r["cell_id"] for r in got]
    assert len(ids) == 10 == len(set(ids))
    status = {r["cell_id"]: r["status"] for r in got}
    assert status == {**{i: "done" for i in ids if not i.startswith(("broken", "huge_lr"))},
                      "broken__s0": "failed", "broken__s1": "failed",
                      "huge_lr__s0": "diverged", "huge_lr__s1": "diverged"}
    assert {r["stop_reason"] for r in got if r["status"] == "diverged"} == {"diverged"}
    assert not (mdir / "failed" / "huge_lr__s0.json").exists()
    fail = json.loads((mdir / "failed" / "broken__s0.json").read_text())
    assert fail["error_type"] == "DataError" and "num_classes must be at least 2" in fail["error"]
    assert "failed cells (2): broken__s0, broken__s1" in out
    assert not [p for p in mdir.glob("cells/*/.*") if ".tmp-" in p.name or ".old-" in p.name]
    metrics = json.loads((mdir / "cells" / "cutout__s1" / "cutout__s1" / "metrics.json").read_text())
    assert metrics["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # cores // workers

    res = json.loads((mdir / "results.json").read_text())
    agg = {g["techniques"]: g for g in res["aggregate"]}
    assert set(agg) == {"baseline", "cutout", "label_smoothing", "broken", "huge_lr"}
    assert agg["huge_lr"]["n_diverged"] == 2
    assert [agg[k]["n"] for k in ("baseline", "cutout", "label_smoothing", "broken")] == [2, 2, 2, 0]
    cut, base = agg["cutout"], agg["baseline"]
    assert cut["delta_mean"] == pytest.approx(cut["test_accuracy_mean"] - base["test_accuracy_mean"])
    assert cut["delta_std"] == pytest.approx(math.hypot(cut["test_accuracy_std"], base["test_accuracy_std"]))
    assert cut["within_noise"] == (abs(cut["delta_mean"]) <= cut["delta_std"])
    md = (mdir / "results.md").read_text()
    assert "view: **equal_flops**" in md and "Δ vs baseline" in md and "within noise" in md
    assert "noise rule: within_noise = yes when |delta| <= sqrt(std_cell^2 + std_reference^2)" in md
    assert md.count("| cutout__s1 |") == 1 and "| cutout | 2/2 |" in md and "## Failed cells" in md
    cell = json.loads((mdir / "cells" / "cutout__s0" / "cell.json").read_text())
    assert cell["status"] == "done" and cell["overrides"] == ["algorithms.cutout={length: 4}", "seed=0"]

    # same spec again: nothing runs (failed cells need --retry-failed), nothing is touched
    before = {p: p.stat().st_mtime_ns for p in run_metrics(mdir)}
    code, out, err = ablate(capsys, str(path), "--workers", "2")
    assert code == 1 and "0 to run, 10 skipped" in err and "use --retry-failed" in err
    assert {p: p.stat().st_mtime_ns for p in run_metrics(mdir)} == before
    assert [r["cell_id"] for r in rows(mdir)] == ids

    # a changed cell (different recipe hash) is pending again; unchanged ones stay finished
    spec = yaml.safe_load(path.read_text())
    spec["algorithms"]["pool"]["cutout"] = {"length": 5}
    path.write_text(yaml.safe_dump(spec))
    m = load_matrix(path)
    states = {c.id: classify(m, c) for c in m.cells}
    assert states["cutout__s0"] == ("pending", "changed (run directory holds a different recipe)")
    assert states["baseline__s0"][0] == states["label_smoothing__s1"][0] == "done"
    assert states["broken__s1"][0] == "failed"


def test_dry_run_plans_and_calibrates_without_writing(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = make_spec(tmp_path, seeds=[0, 1])
    code, out, err = ablate(capsys, str(path), "--dry-run", "--calibration-batches", "5")
    assert code == 0, err
    assert "baseline__s0" in out and "cutout__s1" in out and "planned FLOPs" in out
    assert "estimated from two calibration runs of cell baseline__s0 (1 and 5 real training batches" in out
    code, out, err = ablate(capsys, str(path), "--dry-run", "--json", "--calibration-batches", "0")
    report = json.loads(out)
    for c in report["cells"]:
        assert c["planned_flops"] == c["planned_batches"] * c["step_flops"] <= c["flops_cap"] == 2e8
        assert c["will_run"] and c["estimated_seconds"] is None
    assert not (tmp_path / "matrices").exists()


@pytest.mark.parametrize("spec,recipe", [
    ("fashion_mnist_10k_learned_pool_caps.yaml", "fashion_mnist_10k_learned_pool.yaml"),
    ("fashion_mnist_10k_round8_seeds.yaml", "fashion_mnist_10k_learned_pool.yaml"),
    ("fashion_mnist_10k_learned_pool_silu_caps.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round10.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round11.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round12.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round13.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round14.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round15.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round16.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round17.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round18.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round18_seeds.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round19.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round20.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round21.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round22.yaml", "fashion_mnist_10k_learned_pool_silu.yaml"),
    ("fashion_mnist_10k_round22.yaml:ema_100ba", "fashion_mnist_10k_learned_pool_silu_ema.yaml"),
    ("fashion_mnist_10k_round23.yaml", "fashion_mnist_10k_learned_pool_silu_ema.yaml"),
    ("fashion_mnist_10k_round24.yaml", "fashion_mnist_10k_learned_pool_silu_ema.yaml"),
    ("fashion_mnist_10k_round25.yaml", "fashion_mnist_10k_learned_pool_silu_ema.yaml"),
    ("fashion_mnist_10k_round26.yaml", "fashion_mnist_10k_learned_pool_silu_ema.yaml"),
    ("fashion_mnist_10k_learned_pool_silu_ema_caps.yaml", "fashion_mnist_10k_learned_pool_silu_ema.yaml"),
    ("fashion_mnist_10k_round23.yaml:ema_50ba", "fashion_mnist_10k_learned_pool_silu_ema50.yaml"),
    ("fashion_mnist_10k_finalists.yaml:ema_50ba", "fashion_mnist_10k_learned_pool_silu_ema50.yaml"),
    ("fashion_mnist_10k_learned_pool_silu_ema50_caps.yaml", "fashion_mnist_10k_learned_pool_silu_ema50.yaml"),
    ("fashion_mnist_10k_finalists.yaml:ema_100ba", "fashion_mnist_10k_learned_pool_silu_ema.yaml"),
    ("fashion_mnist_10k_finalists.yaml", "fashion_mnist_10k_learned_pool_silu.yaml")])
def test_study_matrix_trains_the_shipped_recipe(spec: str, recipe: str) -> None:
    """A matrix whose results docs/results.md reports for a shipped recipe trains exactly that
    recipe, on every seed of the matrix (only the labels, name and notes, may differ); `spec:combo`
    names the combination that does (else the one with no technique)."""
    def training(data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k not in ("name", "notes", "output", "seed")}

    spec, _, combo = spec.partition(":")
    shipped = training(load_recipe(REPO / "recipes" / recipe).model_dump(mode="json"))
    m = load_matrix(REPO / "recipes" / "ablations" / spec)
    cells = [c for c in m.cells if c.label == (combo or "baseline")]
    same = {c.seed for c in cells if training(c.recipe.model_dump(mode="json")) == shipped}
    assert same and same == {c.seed for c in m.cells}


def test_shipped_ablation_specs_expand_to_valid_cells() -> None:
    specs = sorted((REPO / "recipes" / "ablations").glob("*.yaml"))
    assert specs
    for path in specs:
        text = path.read_text()
        # a comment saying what it reproduces or searches, and the command that runs it
        assert text.startswith("# ") and f"composer-ablate recipes/ablations/{path.name}" in text, path
        m = load_matrix(path)
        assert not m.invalid, [c.error for c in m.invalid]
        assert len(m.cells) >= 3 and m.reference == (), path
        se = [c for c in m.cells if "squeeze_excite" in c.techniques]
        assert all(dict(c.recipe.algorithms[-1]["squeeze_excite"])["min_channels"] <= 16 for c in se
                   if c.techniques == ("squeeze_excite",))


def test_ray_executor_runs_two_cells_on_a_local_instance(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ray = pytest.importorskip("ray")
    path = make_spec(tmp_path, algorithms={"mode": "explicit", "pool": {}, "combos": [[]]}, seeds=[0, 1])
    t0 = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, out, err = ablate(capsys, str(path), "--executor", "ray", "--workers", "1")
    finally:
        ray.shutdown()
    assert code == 0, err
    got = rows(tmp_path / "matrices" / "m")
    assert [r["status"] for r in got] == ["done", "done"]
    print(f"ray executor: {time.time() - t0:.1f}s")


def test_paper000_grid_specs_expand_to_the_papers_grid() -> None:
    for ds, n_models in (("kuzushiji49", 8), ("stanford_cars", 9), ("food101", 8)):
        m = load_matrix(REPO / "recipes" / "paper000" / f"{ds}_grid.yaml")
        assert not m.invalid, [c.error for c in m.invalid]
        assert len(m.cells) == n_models * 3 * 3 * 2
        r = m.cells[0].recipe
        assert r.budget.flops == 1e14 and r.eval.checkpoint == "best_val"
        assert {c.recipe.optimizer.lr for c in m.cells} == {1e-3, 1e-4, 1e-5}
        assert {c.recipe.data.batch_size for c in m.cells} == {32, 64, 128}


def test_reuse_from_copies_finished_runs_of_identical_recipes_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--reuse-from: a finished run of the same recipe hash in another matrix is copied in (the
    source stays, cell.json names it) and not trained; an interrupted run, or a run of another
    recipe (a different lr), is not reused; a missing directory is one error line."""
    path = make_spec(tmp_path, seeds=[0, 1])
    m = load_matrix(path)
    other = load_matrix(path, ["name=other", "seeds=[0,1,2]"])
    cells = {c.id: c for c in other.cells}
    assert {c.hash for c in m.cells} < set(c.hash for c in other.cells)
    for cid in ("baseline__s0", "baseline__s1", "cutout__s0"):
        _fake_run(other, cells[cid], test_accuracy=60.0 + int(cid[-1]))
    _fake_run(other, cells["cutout__s1"], test_accuracy=20.0, stop_reason="interrupted")
    changed = load_matrix(path, ["name=changed", "optimizer.lr=0.5"])
    _fake_run(changed, {c.id: c for c in changed.cells}["cutout__s1"], test_accuracy=99.0)

    code, out, err = ablate(capsys, str(path), "--dry-run", "--calibration-batches", "0",
                            "--reuse-from", str(other.matrix_dir), "--reuse-from",
                            str(changed.matrix_dir))
    states = {line.split()[0]: line.split()[1:3] for line in out.splitlines()
              if line.startswith(("baseline__", "cutout__"))}
    assert states == {"baseline__s0": ["reuse", "baseline__s0"], "baseline__s1": ["reuse", "baseline__s1"],
                      "cutout__s0": ["reuse", "cutout__s0"], "cutout__s1": ["new", "6.85M"]}, out
    assert not m.matrix_dir.exists()  # a dry run writes nothing

    code, out, err = ablate(capsys, str(path), "--only", "baseline*", "--only", "cutout__s0",
                            "--reuse-from", str(tmp_path / "matrices"))  # every matrix, own skipped
    assert code == 0, err
    assert "ran 0, skipped 3" in out and "reused 3 finished run(s)" in err
    for cid in ("baseline__s0", "baseline__s1", "cutout__s0"):
        rec = json.loads((m.cell_dir(cid) / "cell.json").read_text())
        assert rec["status"] == "done" and rec["reused_from"] == str(other.run_dir(cid))
        assert json.loads((m.run_dir(cid) / "metrics.json").read_text())["test_accuracy"] == 60.0 + int(cid[-1])
        assert (other.run_dir(cid) / "metrics.json").exists()  # copied, not moved
    assert not m.run_dir("cutout__s1").exists()
    assert {r["cell_id"]: r["test_accuracy"] for r in rows(m.matrix_dir)}["baseline__s1"] == "61.0"

    code, _, err = ablate(capsys, str(path), "--reuse-from", str(tmp_path / "nowhere"))
    assert code == 2 and err.count("\n") == 1 and "nowhere: no such directory" in err


def test_new_schema_fields_at_their_default_keep_committed_hashes() -> None:
    """Fields added to the recipe schema after matrices were committed (HASH_NEUTRAL_DEFAULTS)
    leave a recipe's hash unchanged at their default, so committed cells stay finished; at another
    value they change it."""
    from effrecipes.matrix.cells import recipe_hash, run_dir_hash

    cell = REPO / "results" / "matrices" / "fashion_mnist_10k_round17" / "cells" / "baseline__s0"
    stored = json.loads((cell / "cell.json").read_text())["hash"]
    assert run_dir_hash(cell / "baseline__s0") == stored
    recipe = load_recipe(cell / "baseline__s0" / "recipe.yaml")
    assert recipe.scheduler.name == "one_cycle" and recipe.scheduler.cycle_momentum
    assert recipe_hash(recipe) == stored
    changed = recipe.model_copy(update={"scheduler": recipe.scheduler.model_copy(update={"max_momentum": 0.9})})
    assert recipe_hash(changed) != stored
