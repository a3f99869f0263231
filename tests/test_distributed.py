"""One run over two data-parallel ranks through Composer's launcher (`composer -n 2`, CPU, gloo):
each rank trains on its own share of the data and the budget charges the global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import REPO, tiny_recipe, write_recipe


def _agree_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: what each decides when only rank 1 sees a stop (a signal, its
    own clock past max_seconds) and when the ranks count different FLOPs."""
    import torch
    import torch.distributed as tdist
    from composer.devices import DeviceCPU

    from effrecipes.algorithms import SWAWithBNUpdate
    from effrecipes.budget import FlopBudget, plan_budget
    from effrecipes.callbacks import RunGuard
    from effrecipes.ranks import any_rank, sum_over_ranks

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    stops: list[str] = []

    def state(batch: int) -> SimpleNamespace:
        return SimpleNamespace(total_loss_dict={"loss/train/total": 0.5}, device=DeviceCPU(),
                               timestamp=SimpleNamespace(batch=batch, batch_in_epoch=batch),
                               dataloader_len=10, model=torch.nn.Linear(2, 2),
                               stop_training=lambda: stops.append(f"batch {batch}"))

    guard = RunGuard(None)
    guard.batch_end(state(1), None)  # nobody asked: nobody stops
    if rank == 1:
        guard.request_stop()  # Ctrl-C reached rank 1 first
    guard.batch_end(state(2), None)
    plan = plan_budget(flops_cap=None, max_epochs=None, max_seconds=1.0, pass_flops=1.0,
                       forward_flops_per_sample=1.0, fvcore_macs=None, global_batch_size=2,
                       batches_per_epoch=10)
    budget = FlopBudget(plan, max_seconds=1.0)
    budget.ledger.train_seconds = 5.0 if rank == 1 else 0.5  # only rank 1's clock is past the cap
    budget._decide(state(3), 0.0)
    capped = FlopBudget(plan_budget(flops_cap=100.0, max_epochs=None, max_seconds=None,
                                    pass_flops=1.0, forward_flops_per_sample=1.0, fvcore_macs=None,
                                    global_batch_size=2, batches_per_epoch=10))
    capped.ledger.flops_used = 99.0 if rank == 1 else 10.0  # only rank 1's ledger is at the cap
    capped._decide(state(5), 5.0)
    swa = SWAWithBNUpdate()  # each rank recomputes BatchNorm over its own batches
    swa._bn_batches_wanted = rank + 1
    batch = (torch.ones(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    swa._update_bn(SimpleNamespace(train_dataloader=[batch] * 2, device=DeviceCPU(),
                                   model=torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3),
                                                             torch.nn.BatchNorm2d(2))))
    counted = FlopBudget(plan)  # a counted step whose FLOPs differ by rank (stochastic depth)
    counted._close_window = lambda: 100.0 * (rank + 1)
    counted._batch_size, counted._shape_key = 2, "1x2x2"
    counted.batch_end(state(4), SimpleNamespace(log_metrics=lambda metrics: None))
    result = {"stops": stops, "budget_stop": budget.ledger.stop_reason,
              "counted": [counted.ledger.flops_used, counted.ledger.measured_step_flops],
              "capped": capped.ledger.stop_reason, "swa_extra": swa.extra_train_flops,
              "any": [any_rank(rank == 1, DeviceCPU()), any_rank(False, DeviceCPU())],
              "sum": sum_over_ranks(rank + 1.5, DeviceCPU())}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result, default=str))
    tdist.destroy_process_group()


def test_ranks_agree_on_stops_one_rank_sees(tmp_path: Path) -> None:
    """Under `composer -n N` a rank that stops one batch before the others leaves them waiting
    forever in the next gradient all-reduce. A stop only one rank sees (a signal, its own clock
    past `max_seconds`) is agreed over all ranks, through real gloo collectives here."""
    import torch.multiprocessing as mp

    mp.spawn(_agree_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        # the guard's stop, the time cap's, then the FLOP cap's that only rank 1's ledger reached
        assert r["stops"] == ["batch 2", "batch 3", "batch 5"]
        assert str(r["capped"]).endswith("flops")
        # SWA's BatchNorm recompute: 1 batch on rank 0, 2 on rank 1, charged as 3 on both
        conv_flops_per_batch = 2 * 9 * (2 * 2 * 2 * 2)  # 2 FLOPs x 9 MACs x (2 images x 2 ch. x 2x2)
        assert r["swa_extra"] == 3 * conv_flops_per_batch
        assert r["budget_stop"].endswith("max_seconds") or r["budget_stop"] == "max_seconds"
        assert r["any"] == [True, False]
        assert r["sum"] == 4.0  # 1.5 + 2.5
        # a counted step is charged what all ranks counted (100 + 200), the same on every rank
        assert r["counted"] == [300.0, {"1x2x2": 75.0}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(tmp_path: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """`composer -n 2 -m effrecipes.cli` on CPU (gloo); metrics.json of the run."""
    path = write_recipe(tmp_path, recipe)
    launcher = Path(sys.executable).with_name("composer")
    env = {**os.environ, "EFFRECIPES_THREADS": "1"}
    proc = subprocess.run([str(launcher), "-n", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), "-m", "effrecipes.cli", str(path), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "runs" / recipe["output"]["run_name"] / "metrics.json").read_text())


@pytest.mark.slow
def test_two_ranks_stop_together_on_their_own_clocks(tmp_path: Path) -> None:
    """`budget.max_seconds` reads each rank's clock; the ranks agree on the batch to stop after
    (a rank stopping alone would leave the other waiting in the gradient all-reduce until the
    launcher's timeout), so the run ends, on its time cap, through Composer's own loop."""
    m = _two_ranks(tmp_path, tiny_recipe(tmp_path, **{"budget": {"max_seconds": 2.0}}))
    assert m["stop_reason"] == "max_seconds" and m["batches"] > 0
    assert m["samples"] == m["batches"] * 16 * 2


@pytest.mark.slow
def test_two_ranks_charge_the_global_batch(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 1e8})
    m = _two_ranks(tmp_path, recipe)
    per_sample = m["measured_flops_per_sample"]["1x12x12"]
    batch = recipe["data"]["batch_size"]
    assert m["samples"] == m["batches"] * batch * 2  # both ranks' samples
    assert m["flops_used"] == pytest.approx(m["samples"] * per_sample)
    assert m["flops_used"] <= 1e8 and 1e8 - m["flops_used"] < 2 * batch * per_sample
    # only rank 0 wrote a run directory
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]


def test_loader_shards_are_disjoint() -> None:
    import torch

    from effrecipes.data.loader import BatchLoader

    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    labels = torch.arange(40)
    seen = []
    for rank in (0, 1):
        loader = BatchLoader(images, labels, 4, mean=(0.0,), std=(1.0,), shuffle=True, drop_last=True,
                             seed=3, rank=rank, world_size=2)
        assert len(loader) == 5
        seen.append(torch.cat([y for _, y in loader]))
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert len(seen[0]) + len(seen[1]) == 40


def test_ranks_draw_their_own_crops_and_flips() -> None:
    """The ranks share the epoch's order (each takes its own slice) but not the augmentation's
    draws: with every image alike, rank 0's and rank 1's first batches would be equal if the
    b-th batch of every rank got the same crops and flips."""
    import torch

    from effrecipes.data.loader import BatchLoader

    one = torch.arange(36, dtype=torch.uint8).view(1, 1, 6, 6)
    images, labels = one.expand(64, 1, 6, 6).contiguous(), torch.zeros(64, dtype=torch.int64)
    first = []
    for rank in (0, 1):
        loader = BatchLoader(images, labels, 16, mean=(0.0,), std=(1.0,), shuffle=True,
                             drop_last=True, seed=3, rank=rank, world_size=2,
                             augment=("random_crop", "hflip"), crop_padding=2)
        first.append(next(iter(loader))[0])
    assert not torch.equal(first[0], first[1])
    # and a rank repeats its own draws for the same seed and epoch
    again = BatchLoader(images, labels, 16, mean=(0.0,), std=(1.0,), shuffle=True, drop_last=True,
                        seed=3, rank=1, world_size=2, augment=("random_crop", "hflip"), crop_padding=2)
    assert torch.equal(next(iter(again))[0], first[1])
