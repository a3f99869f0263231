"""The benchmark scripts run end to end with tiny arguments and print their tables.

No timing assertions: these only prove the scripts work (a few batches each, small batches).
They run in this process through each script's `main(argv)` (what `python benchmarks/X.py argv`
calls), so Composer is imported once for all three.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import torch

# ~16-21 s on the loaded 2-core machine (three tiny benchmark runs in this process): run in
# the slow pass (`pytest -m slow`)
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _load(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{script}", BENCH / f"{script}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    os.environ.setdefault("WANDB_MODE", "disabled")
    threads = torch.get_num_threads()
    path = list(sys.path)
    yield
    torch.set_num_threads(threads)
    sys.path[:] = path


def test_throughput_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out: Any = _load("throughput").main([
        "--models", "gap_1p5k_dw,gap_143k", "--batches", "2", "--warmup", "1", "--repeats", "1",
        "--threads", "1", "--batch-size", "4", "--peak-n", "128", "--peak-tries", "2",
        "--out", str(tmp_path / "t.json")])
    stdout = capsys.readouterr().out
    assert ("| model | threads | hand samples/s | hand_cl samples/s | composer samples/s | "
            "effrecipes samples/s") in stdout
    assert "eff/hand" in stdout and "eff/hand_cl" in stdout and "MFU" in stdout and "samples/CPU-s" in stdout
    assert (tmp_path / "t.json").exists()
    assert {r["model"] for r in out["summary"]} == {"gap_1p5k_dw", "gap_143k"}
    for row in out["summary"]:
        for p in ("hand", "hand_cl", "composer", "effrecipes"):
            assert row[f"{p}_sps"] > 0
        assert row["train_flops_per_sample"] > 0
        assert row["eff_over_hand"] == pytest.approx(row["effrecipes_sps"] / row["hand_sps"])


def test_budget_accuracy_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out: Any = _load("budget_accuracy").main([
        "--models", "gap_1p5k_dw", "--batch-size", "2", "--algorithms", "sam",
        "--out", str(tmp_path / "b.json")])
    stdout = capsys.readouterr().out
    assert "| model | input | charged MFLOP/sample" in stdout
    (audit,) = out["ledger_audit"]
    assert audit["case"] == "sam" and audit["stop_reason"] == "flops"
    assert audit["independent"] == pytest.approx(audit["flops_used"], rel=0.01)
    assert audit["flops_used"] <= audit["cap"]
    assert "Disagreements above 1%" in stdout
    rows = {(r["model"], r["variant"]): r for r in out["rows"]}
    assert set(rows) == {("gap_1p5k_dw", "plain"), ("gap_1p5k_dw", "blurpool")}
    for r in rows.values():
        assert "error" not in r, r
        assert r["full_step"] == pytest.approx(r["charged"])  # the optimizer adds no counted FLOPs
        assert r["explanations"]


def test_profile_overhead_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out: Any = _load("profile_overhead").main([
        "--batches", "2", "--warmup", "1", "--repeats", "1", "--micro-calls", "2",
        "--batch-size", "4", "--op-steps", "1", "--extra-callbacks", "2",
        "--variants", "hand,composer,effrecipes,effrecipes NCHW",
        "--out", str(tmp_path / "p.json")])
    stdout = capsys.readouterr().out
    for section in ("## 1. in-situ", "## 2. micro-benchmarks", "## 4. torch.profiler", "## 3. A/B"):
        assert section in stdout
    assert "FlopBudget.batch_end" in out["in_situ"]["per_batch_us"]
    assert set(out["ab_summary"]) == {"hand", "composer", "effrecipes", "effrecipes NCHW"}


def test_gpu_benchmark_smoke_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/gpu.py's four paths and its recipe run, on the CPU with tiny counts (~25 s)."""
    out: Any = _load("gpu").main([
        "--device", "cpu", "--quick", "--batches", "2", "--warmup", "1",
        "--configs", "gap_1p5k_dw:1x12x12:8,gap_143k:3x16x16:8",
        "--recipe-flops", "2e10", "--recipe-train-images", "512", "--out", str(tmp_path / "g.json")])
    stdout = capsys.readouterr().out
    assert "| model | batch | hand samples/s | hand_sync samples/s | composer samples/s | effrecipes samples/s" in stdout
    assert "hand_sync/hand" in stdout
    assert "effrecipes overhead ms/batch" in stdout and "(b) one recipe at its cap" in stdout
    assert (tmp_path / "g.json").exists()
    assert out["errors"] == [], out["errors"]
    assert [(r["model"], r["batch_size"]) for r in out["summary"]] == [("gap_1p5k_dw", 8), ("gap_143k", 8)]
    for row in out["summary"]:
        for p in ("hand", "hand_sync", "composer", "effrecipes"):
            assert row[f"{p}_sps"] > 0 and row[f"{p}_mfu_measured"] > 0
        assert row["hand_sync_overhead_ms_per_batch"] == pytest.approx(
            row["hand_sync_ms_per_batch"] - row["hand_ms_per_batch"])
        assert row["effrecipes_overhead_ms_per_batch"] == pytest.approx(
            row["effrecipes_ms_per_batch"] - row["hand_ms_per_batch"])
    r = out["recipe"]
    assert r["flops_cap"] == 2e10 and 0 < r["flops_used"] <= 2e10 and r["batches"] >= 1
    assert r["precision"] == "fp32" and r["mfu"] > 0
    assert out["machine"]["torch"] == torch.__version__ and out["peak_flops_measured"] > 0


def test_gpu_benchmark_hand_sync_reads_back_what_composers_loop_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hand_sync` adds the seven `.item()` reads per batch that Composer 0.32.1's loop makes
    (iteration flag, batch size, optimizer closure, logged loss, three time accumulators; the
    same seven sites tests/test_device.py sees grow with the batches); `hand` makes none."""
    gpu = _load("gpu")
    calls = {"n": 0}
    real = torch.Tensor.item

    def counting(self: torch.Tensor) -> Any:
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "item", counting)
    shape, batch, total = (1, 12, 12), 4, 3
    data = gpu._data(total * batch, shape, torch.device("cpu"))
    seen = {}
    for syncs in (False, True):
        calls["n"] = 0
        gpu.run_hand("gap_1p5k_dw", shape, batch, total, 1, data, torch.device("cpu"), composer_syncs=syncs)
        seen[syncs] = calls["n"]
    assert seen == {False: 0, True: 7 * total}


def test_val_test_distance_finds_each_nearest_training_image() -> None:
    mod = _load("val_test_distance")
    base = torch.tensor([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    queries = torch.tensor([[3.0, 4.0], [0.0, 1.0], [7.0, 0.0]])
    assert torch.allclose(mod.nearest_distance(queries, base, chunk=2), torch.tensor([0.0, 1.0, 3.0]))
    s = mod.summary(torch.tensor([0.4, 1.5, 2.5, 3.5]))
    assert s["fraction_within"] == {"0.5": 0.25, "1.0": 0.25, "2.0": 0.5, "3.0": 0.75}


def test_tta_check_reloads_a_run_and_shifts_images(tmp_path: Path) -> None:
    """The single-view row is the run's own test accuracy (the checkpoint is reloaded into the
    recipe's surgered network), and a shift moves the picture by one pixel, repeating the border."""
    import json

    from effrecipes.recipe import load_recipe
    from effrecipes.runner import run
    from tests.conftest import tiny_recipe, write_recipe

    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7, "algorithms": [{"blurpool": {}}]})
    result = run(load_recipe(write_recipe(tmp_path, recipe)), quiet=True)
    mod = _load("tta_check")
    out = tmp_path / "tta.json"
    assert mod.main([str(result.run_dir), "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["cells"][0]["views"]["none"]["test"] == round(result.metrics["test_accuracy"], 3)
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert mod.view(x, (False, 1, 0)).view(3, 3).tolist() == [[0, 0, 1], [3, 3, 4], [6, 6, 7]]
    assert mod.view(x, (True, 0, -1)).view(3, 3).tolist() == [[5, 4, 3], [8, 7, 6], [8, 7, 6]]


def test_fit_check_reloads_a_run_and_refuses_weights_that_are_not_the_runs(tmp_path: Path) -> None:
    """The reloaded (surgered) network tests at the run's own accuracy and reports a training
    accuracy; a run whose recorded test accuracy the weights do not reproduce is refused."""
    import json

    from effrecipes.recipe import load_recipe
    from effrecipes.runner import run
    from tests.conftest import tiny_recipe, write_recipe

    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7, "algorithms": [{"blurpool": {}}]})
    result = run(load_recipe(write_recipe(tmp_path, recipe)), quiet=True)
    mod = _load("fit_check")
    doc = mod.main([str(result.run_dir), "--out", str(tmp_path / "fit.json")])
    row = json.loads((tmp_path / "fit.json").read_text())["runs"][0]
    assert row == doc["runs"][0]
    assert abs(row["test_accuracy"] - result.metrics["test_accuracy"]) <= 0.011
    assert 0.0 <= row["train_accuracy"] <= 100.0
    metrics = result.run_dir / "metrics.json"
    recorded = json.loads(metrics.read_text())
    recorded["test_accuracy"] = row["test_accuracy"] + 5.0 if row["test_accuracy"] < 50 else 1.0
    metrics.write_text(json.dumps(recorded))
    with pytest.raises(SystemExit, match="not the run's weights or data"):
        mod.main([str(result.run_dir), "--out", str(tmp_path / "fit2.json")])


def test_screen_whitening_sets_the_filters_whiten_stem_computes() -> None:
    """The screening loop's own whitening (benchmarks/screen_10k.py --stem) is effrecipes.whitening's, on the zero-padded patches
    the conv sees (the algorithm takes only the patches inside the image)."""
    import torch.nn.functional as F
    from torch import nn

    from effrecipes.whitening import whitening_filters

    mod = _load("screen_10k")
    g = torch.Generator().manual_seed(0)
    x = F.avg_pool2d(torch.randn(40, 1, 16, 16, generator=g), 5, stride=1)
    conv = nn.Conv2d(1, 16, 3, padding=1, bias=False)
    mod.whiten_(conv, [(x[:24], None), (x[24:], None)], images=32)
    p = F.unfold(x[:32], 3, padding=1).transpose(1, 2).reshape(-1, 9)
    expected = whitening_filters(p.T @ p, float(len(p)), 16, (1, 3, 3), eps=5e-4).float()
    got = conv.weight.detach()
    # an eigenvector's sign is arbitrary (float32 and float64 solvers may pick either): each
    # filter matches up to its sign, and each pair is (w, -w)
    sign = torch.sign((got[:8] * expected[:8]).sum(dim=(1, 2, 3))).view(8, 1, 1, 1)
    assert torch.allclose(got[:8] * sign, expected[:8], rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    assert torch.equal(got[8:], -got[:8])
