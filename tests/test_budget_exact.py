"""The FLOP cap holds for every algorithm, checked against an independent count.

Each run trains a tiny recipe through the real runner and Composer Trainer while a second
`FlopCounterMode` wraps the whole of `Trainer.fit` (`effrecipes.audit.counting_fit`: not the
ledger's per-batch windows, caches or algorithm declarations). There is no validation split, so everything inside `fit` is training
work: forward and backward passes, SAM's second pass, selective backprop's scoring pass, SWA's
BatchNorm recompute. For each run:
  - `flops_used <= cap`,
  - `cap - flops_used` is below one step's cost (the run used the cap),
  - the independent count is within 1% of `flops_used`,
  - `stop_reason == "flops"`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from effrecipes import registry
from effrecipes.audit import AUDIT_ARGS as ARGS
from effrecipes.audit import audit_cases, bottleneck_net, counting_fit
from effrecipes.cli import main
from tests.conftest import record_lrs, tiny_recipe, write_recipe

@pytest.fixture(autouse=True)
def _bottleneck_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered for these tests only (other modules list the registry)."""
    from effrecipes.registry import Entry

    registry.models.names()  # load the registry first
    monkeypatch.setitem(registry.models._entries, "test_bottleneck_net",
                        Entry("test_bottleneck_net", bottleneck_net, "test only"))

CAP = 4e8  # ~55 steps of the tiny recipe: long enough for every "dur" start/end to pass

MODEL = {"stochastic_depth": "test_bottleneck_net"}  # the tiny default model has no bottleneck


def _run(tmp_path: Path, name: str, algorithms: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    recipe = tiny_recipe(tmp_path, **{"budget.flops": CAP, "data.val_fraction": 0.0,
                                      "data.kwargs.num_train": 320, "output.run_name": name,
                                      "algorithms": algorithms, **overrides})
    assert main([str(write_recipe(tmp_path, recipe, f"{name}.yaml")), "--quiet"]) == 0
    return json.loads((tmp_path / "runs" / name / "metrics.json").read_text())


def _check(m: dict[str, Any], independent: float) -> None:
    one_step = m["train_flops_per_sample"] * 16  # the planned most expensive step (batch 16)
    assert m["max_step_flops"] <= one_step * (1 + 1e-9)  # ... really is the most expensive
    assert m["stop_reason"] == "flops"
    assert m["flops_used"] <= CAP
    # FLOPs held back for SWA's BatchNorm recompute are an upper bound (under stochastic depth the
    # recompute's forward passes skip blocks too): what that bound over-reserved is reported
    assert CAP - m["flops_used"] < one_step + m["reserve_unspent_flops"], (CAP - m["flops_used"]) / one_step
    assert m["reserve_unspent_flops"] < one_step
    assert independent == pytest.approx(m["flops_used"], rel=0.01)


def _cases() -> list[tuple[str, list[dict[str, Any]]]]:
    return audit_cases(registry.algorithms.names())


def _model_for(algorithms: list[dict[str, Any]]) -> str:
    return next((MODEL[n] for a in algorithms for n in a if n in MODEL), "gap_1p5k_dw")


def test_every_registered_algorithm_is_covered() -> None:
    assert len(registry.algorithms.names()) == 23


@pytest.mark.parametrize("name,algorithms", _cases(), ids=[c[0] for c in _cases()])
def test_cap_holds_against_an_independent_count(tmp_path: Path,
                                                name: str, algorithms: list[dict[str, Any]]) -> None:
    with counting_fit() as totals:
        m = _run(tmp_path, name, algorithms, **{"model.name": _model_for(algorithms)})
    _check(m, totals[0])
    assert not [w for w in m["warnings"] if "changes nothing" in w and name != "gyro_dropout"], m["warnings"]


def _count_windows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch index at which each of the budget's counting windows opened."""
    from effrecipes.budget import FlopBudget

    opened: list[int] = []
    real_open = FlopBudget._open_window

    def counting_open(self: FlopBudget) -> None:
        opened.append(self.ledger.batches)
        real_open(self)

    monkeypatch.setattr(FlopBudget, "_open_window", counting_open)
    return opened


def test_layer_freezing_counts_one_step_per_frozen_set(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Layer freezing changes the step cost only at epoch ends: the budget counts the first step
    of each frozen set and charges the rest from that cache, and the cap stays exact."""
    opened = _count_windows(monkeypatch)
    with counting_fit() as totals:
        m = _run(tmp_path, "lf", [{"layer_freezing": {"freeze_start": 0.2}}],
                 **{"data.kwargs.num_train": 160})  # 10 batches an epoch: Composer freezes at epoch ends
    _check(m, totals[0])
    costs = m["measured_flops_per_sample"]
    frozen = sorted((v, k) for k, v in costs.items() if " frozen:" in k)
    (plain,) = [v for k, v in costs.items() if " frozen:" not in k]
    assert len(frozen) >= 3 and all(v < plain for v, _ in frozen)  # each freeze made steps cheaper
    assert len({v for v, _ in frozen}) == len(frozen)
    assert len(opened) == len(costs)  # one counted step per frozen set
    assert m["batches"] > 8 * len(opened)


def test_sam_every_third_step_counts_one_step_of_each_kind(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """SAM with interval 3 runs two passes on every third step: one step of each kind is counted,
    the rest are charged from the cache, and the cap stays exact."""
    opened = _count_windows(monkeypatch)
    with counting_fit() as totals:
        m = _run(tmp_path, "sam3", [{"sam": {"rho": 0.05, "interval": 3}}])
    _check(m, totals[0])
    costs = m["measured_flops_per_sample"]
    (two,) = [v for k, v in costs.items() if k.endswith(" 2 passes")]
    (one,) = [v for k, v in costs.items() if not k.endswith(" 2 passes")]
    assert two == pytest.approx(2 * one, rel=1e-6)
    assert opened == [0, 2]  # the first step, then the first two-pass step (global step 2)
    assert m["batches"] > 20


def test_selective_backprop_counts_only_the_steps_it_acts_on(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Selective backprop's scoring pass and smaller batch make the steps it acts on vary; it
    names them before the batch is loaded, so only those are counted, plain steps come from the
    cache, and the cap stays exact."""
    from effrecipes.algorithms import KeyedSelectiveBackprop

    opened = _count_windows(monkeypatch)
    acted: list[int] = []
    real_apply = KeyedSelectiveBackprop.apply

    def apply(self: KeyedSelectiveBackprop, event: Any, state: Any, logger: Any) -> Any:
        if event.name == "AFTER_DATALOADER":
            acted.append(int(state.timestamp.batch))
        return real_apply(self, event, state, logger)

    monkeypatch.setattr(KeyedSelectiveBackprop, "apply", apply)
    with counting_fit() as totals:
        m = _run(tmp_path, "sb", [{"selective_backprop": {"keep": 0.5, "start": 0.2, "end": 0.8}}])
    _check(m, totals[0])
    assert 5 < len(acted) < m["batches"] / 2  # interrupt 2: every other step in [0.2, 0.8)
    # the first plain step, then exactly the steps it acted on; a window also opens (and closes
    # unused) for the batch an exhausted loader never gives at each epoch end (20 batches)
    assert list(dict.fromkeys(opened)) == [0] + acted
    repeated = {b for b in opened if opened.count(b) > 1}
    assert repeated and all(b % 20 == 0 for b in repeated)


def test_swa_interrupted_then_resumed_equals_uninterrupted(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted run never performs the final swap; the resumed run keeps averaging; total
    FLOPs and batches equal the uninterrupted run's."""
    from effrecipes import callbacks, runner

    algos = [{"swa": ARGS["swa"]}]
    whole = _run(tmp_path, "whole", algos)

    class StopAt(callbacks.RunGuard):
        def batch_end(self, state: Any, logger: Any) -> None:
            if int(state.timestamp.batch) == 40:  # after SWA started (0.5dur), before the end
                self.request_stop()
            super().batch_end(state, logger)

    monkeypatch.setattr(runner, "RunGuard", StopAt)
    first = _run(tmp_path, "split", algos)
    assert first["stop_reason"] == "interrupted" and first["batches"] == 40
    assert first["extra_train_flops"] == 0  # no swap, no BatchNorm recompute on an interruption
    monkeypatch.setattr(runner, "RunGuard", callbacks.RunGuard)
    path = tmp_path / "split.yaml"
    assert main([str(path), "--quiet", "--resume"]) == 0
    resumed = json.loads((tmp_path / "runs" / "split" / "metrics.json").read_text())
    assert resumed["stop_reason"] == "flops"
    assert resumed["batches"] == whole["batches"]
    assert resumed["flops_used"] == pytest.approx(whole["flops_used"], rel=1e-12)
    assert resumed["extra_train_flops"] == whole["extra_train_flops"] > 0


def test_swa_swapping_at_a_batch_end_leaves_room_for_that_batch(tmp_path: Path) -> None:
    """A cap of about one step: SWA starts and swaps at the end of the only batch, before the
    budget has charged it; the BatchNorm recompute must fit beside it (seen: 11.6e6 of a 6.9e6 cap)."""
    cap = 6.9e6
    swa = {"swa_start": "0.3dur", "swa_end": "0.7dur", "update_interval": "2ba", "bn_update_batches": 4}
    m = _run(tmp_path, "tiny_cap", [{"swa": swa}], **{"budget.flops": cap})
    assert m["batches"] >= 1 and m["flops_used"] <= cap, m["flops_used"]


def test_swa_that_never_starts_holds_nothing_back(tmp_path: Path) -> None:
    """SWA starting after the end of the run reserves nothing: the run spends the cap."""
    m = _run(tmp_path, "late", [{"swa": {"swa_start": "20ep", "swa_end": "30ep"}}])
    assert m["stop_reason"] == "flops" and CAP - m["flops_used"] < m["train_flops_per_sample"] * 16
    assert any("swa changed nothing" in w for w in m["warnings"])


def test_varying_cost_schedule_ends_where_the_run_ends(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps get cheaper under selective backprop; the one-cycle schedule still reaches its end
    on the last step (the horizon follows the FLOPs, not the planned batch count)."""
    lrs = record_lrs(monkeypatch)
    m = _run(tmp_path, "sb", [{"selective_backprop": {"keep": 0.25, "start": 0.1, "end": 0.9}}],
             **{"scheduler.name": "one_cycle", "optimizer.lr": 0.1})
    assert m["batches"] > m["planned_batches"]  # cheaper steps: more of them than first planned
    assert len(lrs) == m["batches"]
    assert lrs[-1] < 0.1 / 100  # the cycle annealed to its end on the last step
    assert max(lrs) == pytest.approx(0.1, rel=0.02)


def test_interrupt_mid_epoch_on_a_varying_cost_run_stops_there(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget's re-projected duration must not undo an interruption's stop."""
    from effrecipes import callbacks, runner

    class StopAt(callbacks.RunGuard):
        def batch_end(self, state: Any, logger: Any) -> None:
            if int(state.timestamp.batch) == 7:
                self.request_stop()
            super().batch_end(state, logger)

    monkeypatch.setattr(runner, "RunGuard", StopAt)
    m = _run(tmp_path, "sam2", [{"sam": {"interval": 2}}])
    assert m["stop_reason"] == "interrupted" and m["batches"] == 7
