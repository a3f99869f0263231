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
    from composer.devices import DeviceCPU

    from effrecipes.algorithms import SWAWithBNUpdate
    from effrecipes.budget import FlopBudget, plan_budget
    from effrecipes.callbacks import RunGuard
    from effrecipes.ranks import any_rank, sum_over_ranks

    _join(rank, port)
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
    _leave()


@pytest.mark.timeout(180)  # a rank left waiting in a collective must fail the test, not hang it
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


def _join(rank: int, port: int) -> None:
    """Make this spawned process rank `rank` of a 2-rank gloo group, with the environment
    Composer's launcher would set (Composer's `dist` reads it)."""
    import torch.distributed as tdist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)


def _leave() -> None:
    """End a spawned rank once its results are written, without tearing down its process group:
    torch 2.7's gloo group destructor waits for its worker threads while holding the GIL, and a
    worker still releasing a tensor needs the GIL (fixed upstream in pytorch/pytorch#154976), so
    `destroy_process_group()` at the end of a rank sometimes never returned here (twice in
    about 15 runs of the evaluation worker)."""
    os._exit(0)


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


def test_eval_shards_cover_the_set_once_with_equal_batch_counts() -> None:
    """Every image is evaluated by exactly one rank; shares are padded to the same length (the
    eval loop's per-batch collectives need equal batch counts), the pad first in its share."""
    import torch

    from effrecipes.data.shards import PAD_LABEL, PaddedShard, shard_arrays, shard_positions

    for n, world in ((10, 3), (9, 2), (8, 4), (2, 3)):
        shares = [shard_positions(n, r, world) for r in range(world)]
        assert len({len(s) for s in shares}) == 1
        real = sorted(p for s in shares for p in s if p >= 0)
        assert real == list(range(n))
        assert all(s.count(-1) <= 1 and (-1 not in s or s[0] == -1) for s in shares)
    images = torch.arange(9, dtype=torch.uint8).view(9, 1, 1, 1)
    labels = torch.arange(9) % 3
    x, y = shard_arrays(images, labels, 1, 2)
    assert y.tolist() == [PAD_LABEL, 1, 0, 2, 1] and x.view(-1).tolist() == [0, 1, 3, 5, 7]
    assert shard_arrays(images, labels, 0, 1)[1] is labels  # one process: the set unchanged
    ds = PaddedShard([(f"img{i}", i) for i in range(5)], 1, 2)
    assert [ds[i] for i in range(len(ds))] == [("img0", PAD_LABEL), ("img1", 1), ("img3", 3)]


def _eval_worker(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks evaluating its padded share of a 23-image set."""
    import torch

    from effrecipes.data.loader import BatchLoader
    from effrecipes.data.shards import shard_arrays
    from effrecipes.evaluate import evaluate, validation_metrics
    from effrecipes.ranks import broadcast_from_rank0

    _join(rank, port)
    images, labels, model = _eval_fixture()
    share = BatchLoader(*shard_arrays(images, labels, rank, 2), 4, mean=(0.5,), std=(0.25,))
    test = evaluate(model, share, 3, per_class=True)
    metrics = validation_metrics(3)
    for x, y in share:
        metrics.update(model(x), y)
    val = {k: float(v) for k, v in metrics.compute().items()}
    bn = torch.nn.BatchNorm2d(2)  # statistics each rank updated from its own batch
    bn.running_mean.fill_(rank + 1.0)
    bn.num_batches_tracked.fill_(rank + 5)
    broadcast_from_rank0(bn.state_dict().values())
    synced = [bn.running_mean.tolist(), int(bn.num_batches_tracked), bn.weight.tolist()]
    Path(out, f"rank{rank}.json").write_text(json.dumps({"test": test, "val": val, "bn": synced}))
    _leave()


def _eval_fixture() -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (23, 1, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (23,), generator=g)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    return images, labels, model


@pytest.mark.timeout(180)  # a rank left waiting in a collective must fail the test, not hang it
def test_sharded_evaluation_equals_the_whole_set(tmp_path: Path) -> None:
    """Two ranks, each with its padded share, report the whole set's accuracy, sample count,
    per-class scores, validation accuracy and cross entropy, through real gloo collectives; and
    `broadcast_from_rank0` gives every rank rank 0's BatchNorm statistics before evaluating."""
    import torch
    import torch.multiprocessing as mp
    import torch.nn.functional as F

    from effrecipes.data.loader import BatchLoader
    from effrecipes.evaluate import evaluate

    mp.spawn(_eval_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    images, labels, model = _eval_fixture()
    whole = BatchLoader(images, labels, 4, mean=(0.5,), std=(0.25,))
    expected = evaluate(model, whole, 3, per_class=True)
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in whole])
    ce = float(F.cross_entropy(logits, labels))
    for r in (0, 1):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert got["test"]["samples"] == 23
        assert got["test"]["accuracy"] == expected["accuracy"]
        assert [pytest.approx(c) for c in expected["per_class"]] == got["test"]["per_class"]
        assert got["val"]["MulticlassAccuracy"] * 100 == pytest.approx(expected["accuracy"])
        assert got["val"]["CrossEntropy"] == pytest.approx(ce, rel=1e-5)
        assert got["bn"] == [[1.0, 1.0], 5, [1.0, 1.0]]  # rank 0's buffers on both ranks


def _final_worker(rank: int, port: int, recipe_path: str, out: str) -> None:
    """One of two gloo ranks: a Trainer built as for a run, BatchNorm statistics made to differ
    by rank (as each rank's last batch leaves them), then the weights the run would test."""
    from effrecipes import runner
    from effrecipes.callbacks import RunGuard
    from effrecipes.models import network_of
    from effrecipes.recipe import load_recipe

    _join(rank, port)
    prepared = runner.prepare(load_recipe(recipe_path))
    run_dir = Path(out, f"rank{rank}")
    run_dir.mkdir()
    training = runner._build_trainer(prepared, run_dir, quiet=True, guard=RunGuard(budget=None),
                                     resume=False)
    for buf in network_of(training.trainer.state.model).buffers():
        if buf.is_floating_point():
            buf.fill_(rank + 1.0)
    module = runner._final_module(prepared, training, run_dir, RunGuard(budget=None))
    values = sorted({float(v) for b in module.buffers() if b.is_floating_point() for v in b.flatten()})
    Path(out, f"rank{rank}.json").write_text(json.dumps(values))
    _leave()


@pytest.mark.timeout(180)  # a rank left waiting in a collective must fail the test, not hang it
def test_ranks_test_the_model_rank0_saves(tmp_path: Path) -> None:
    """Before the test pass every rank takes rank 0's weights and buffers (`runner._final_module`):
    the shares of the test set are all evaluated by the model in checkpoint.pt."""
    import torch.multiprocessing as mp

    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    mp.spawn(_final_worker, args=(_free_port(), str(path), str(tmp_path)), nprocs=2, join=True)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [[1.0], [1.0]]


def test_validation_cross_entropy_is_a_mean_over_images() -> None:
    """Composer's CrossEntropy averages batch means; this one averages images, so the batching
    does not move it, and a batch holding only padding adds nothing (no NaN)."""
    import torch
    import torch.nn.functional as F

    from effrecipes.data.shards import PAD_LABEL
    from effrecipes.evaluate import SampleMeanCrossEntropy

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(7, 3, generator=g), torch.randint(0, 3, (7,), generator=g)
    m = SampleMeanCrossEntropy()
    m.update(logits[:6], targets[:6])
    m.update(logits[6:], targets[6:])
    m.update(logits[:1], torch.tensor([PAD_LABEL]))
    assert float(m.compute()) == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("path", [{}, {"data.image_size": 14},
                                  # even sets: there the ranks' BatchNorm statistics were seen to
                                  # move the test accuracy (21.875 against the checkpoint's 25.0)
                                  {"algorithms": [{"ema": {}}], "data.kwargs.num_train": 160,
                                   "data.kwargs.num_test": 64}],
                         ids=["in_memory", "per_sample", "ema"])
def test_two_ranks_evaluate_each_image_once(tmp_path: Path, path: dict[str, Any]) -> None:
    """Validation and test are split over the ranks (sets of odd size, so one rank's share is
    padded), on the in-memory path and on the per-sample DataLoader path (a resize forces it;
    Composer refuses a plain DataLoader as eval data under several ranks, so the share is passed
    on as an iterable): the test accuracy is the saved weights' accuracy on the whole test set
    (the ranks' BatchNorm statistics, which EMA averages per rank, are rank 0's before testing),
    and the evaluation FLOPs count every validation and test image once, not once per rank."""
    import csv

    import torch

    from effrecipes import algorithms as algos
    from effrecipes.data import build_data
    from effrecipes.evaluate import evaluate
    from effrecipes.models import build_model
    from effrecipes.recipe import load_recipe

    recipe = tiny_recipe(tmp_path, **{"budget.flops": 1e8, "data.kwargs.num_train": 165,
                                      "data.kwargs.num_test": 63, **path})
    m = _two_ranks(tmp_path, recipe)
    run = tmp_path / "runs" / "tiny"
    r = load_recipe(run / "recipe.yaml")
    data = build_data(r.data, r.seed)  # one process: the whole sets
    assert data.per_sample == ("data.image_size" in path)
    assert data.num_test % 2 == (0 if "algorithms" in path else 1)
    assert data.num_val % 2 == (0 if "algorithms" in path else 1)
    net = algos.inference_module(algos.apply_surgery(
        build_model(r.model.name, data.in_channels, data.num_classes, data.image_size,
                    **r.model.kwargs), r.algorithms))
    net.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    assert m["test_accuracy"] == evaluate(net, data.test, data.num_classes)["accuracy"]
    evaluations = 0
    if data.num_val:
        with open(run / "history.csv") as f:
            evaluations = sum(1 for row in csv.DictReader(f) if row["val_accuracy"])
    assert (evaluations > 0) == (data.num_val > 0)
    expected = (evaluations * data.num_val + data.num_test) * m["inference_flops_per_sample"]
    assert m["eval_flops"] == pytest.approx(expected)


@pytest.mark.slow
def test_two_ranks_whiten_the_stem_from_both_shares(tmp_path: Path) -> None:
    """Each rank takes the patch statistics of its own first 32 training images; summed over the
    ranks they are those of the epoch order's first 64 images (the ranks interleave it), so every
    rank sets the same filters, and both ranks' work is charged."""
    import torch
    from torch import nn

    from effrecipes.data import build_data
    from effrecipes.recipe import load_recipe
    from effrecipes.whitening import moment_flops_per_image, patch_moments, whitening_filters

    recipe = tiny_recipe(tmp_path, **{"budget.flops": 1e8,
                                      "algorithms": [{"whiten_stem": {"images": 32, "freeze": True}}]})
    m = _two_ranks(tmp_path, recipe)
    run = tmp_path / "runs" / "tiny"
    r = load_recipe(run / "recipe.yaml")
    data = build_data(r.data, r.seed)  # one process: the whole epoch order
    x = torch.cat([b[0] for b in data.train])[:64]
    conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
    second, count = patch_moments(x, conv)
    expected = whitening_filters(second, float(count), 8, (1, 3, 3), eps=5e-4).float()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)["model"]["features.0.weight"]
    assert torch.allclose(saved, expected, atol=1e-5)
    assert m["extra_train_flops"] == 64 * moment_flops_per_image((1, 12, 12), conv)
