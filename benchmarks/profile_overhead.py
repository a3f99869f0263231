"""Where does effrecipes' per-batch time go, beyond the model's own forward/backward?

Three measurements for one model (default the 1.5K-DW MNIST GAP CNN, random 1x28x28, batch 128):

1. In-situ attribution: one effrecipes run (`effrecipes.runner.run`, the real path) with timing
   wrappers around each per-batch overhead candidate (Composer's train-metric update and
   compute, `Logger.log_metrics`, `dist.all_reduce`, the `deepcopy` of every batch, our
   callbacks FlopBudget / RunGuard / EpochSync, the BatchLoader's `next()`), plus forward and
   backward for scale. Only batches after the warm-up are tallied. Microseconds per batch.
2. Micro-benchmarks of the same pieces in isolation (median of many calls).
3. A/B of the speed choices (NCHW vs channels_last, train metrics on/off), by recipe options,
   interleaved with the hand-written loop and plain Composer in one process: steady-state
   samples/s, median over repeats.

    .venv/bin/python benchmarks/profile_overhead.py
    .venv/bin/python benchmarks/profile_overhead.py --batches 3 --warmup 1 --repeats 1 --micro-calls 5
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402
from _common import RESULTS, loadavg, machine, md_table, median, write_result  # noqa: E402


# --------------------------------------------------------------------------- 1. in-situ tally

class Tally:
    def __init__(self) -> None:
        self.active = False
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def add(self, key: str, dt: float) -> None:
        if self.active:
            self.seconds[key] += dt
            self.calls[key] += 1


@contextlib.contextmanager
def patched(obj: Any, attr: str, new: Any) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, new)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def _timed(fn: Callable[..., Any], tally: Tally, key: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            tally.add(key, time.perf_counter() - t0)
    return wrapper


def _timed_generator(fn: Callable[..., Iterator[Any]], tally: Tally, key: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Iterator[Any]:
        gen = fn(*a, **k)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(gen)
            except StopIteration:
                return
            tally.add(key, time.perf_counter() - t0)
            yield item
    return wrapper


# (label, object, attribute, what it covers)
def _targets() -> list[tuple[str, Any, str, str]]:
    import composer.trainer.trainer as trainer_mod
    from composer.core.engine import Engine
    from composer.loggers import Logger
    from composer.models import ComposerClassifier
    from composer.utils import dist

    from effrecipes.budget import FlopBudget
    from effrecipes.callbacks import EpochSync, History, RunGuard
    from effrecipes.lean_engine import LeanEngine

    T = trainer_mod.Trainer
    return [
        ("forward (ComposerClassifier.forward)", ComposerClassifier, "forward", "model"),
        ("backward (Tensor.backward)", torch.Tensor, "backward", "model"),
        ("train metrics: update (Trainer._eval_train_metrics)", T, "_eval_train_metrics",
         "no_grad + model.eval()/train() toggle + MulticlassAccuracy.update"),
        ("train metrics: compute+log (Trainer._compute_and_log_metrics)", T, "_compute_and_log_metrics",
         "MulticlassAccuracy.compute + log_metrics, every batch"),
        ("Logger.log_metrics (all callers)", Logger, "log_metrics", "includes the calls above/below"),
        ("dist.all_reduce (all callers)", dist, "all_reduce", "loss + batch-size reductions"),
        ("deepcopy in trainer (batch copy)", trainer_mod, "deepcopy", "_train_microbatch copies the batch"),
        ("FlopBudget.after_dataloader", FlopBudget, "after_dataloader", "effrecipes callback"),
        ("FlopBudget.batch_end", FlopBudget, "batch_end", "effrecipes callback (incl. log_metrics)"),
        ("RunGuard.batch_end", RunGuard, "batch_end", "effrecipes callback (state_dict copy / 50 ba)"),
        ("EpochSync.epoch_start", EpochSync, "epoch_start", "effrecipes callback (per epoch)"),
        ("History.eval_end", History, "eval_end", "effrecipes callback (per eval)"),
        ("Engine.run_event (all events)", LeanEngine, "run_event",
         "all Composer events incl. callbacks (effrecipes' LeanEngine)"),
        ("  of which Composer's Engine.run_event", Engine, "run_event",
         "events LeanEngine hands to Composer's (profiler, ENGINE_DEBUG)"),
    ]


def in_situ(name: str, shape: tuple[int, ...], batch: int, total: int, warmup: int, threads: int,
            workdir: Path, algorithms: Optional[list[dict[str, Any]]] = None,
            extra_callbacks: int = 0) -> dict[str, Any]:
    """`extra_callbacks` no-op callbacks are added too (to price one more callback per batch)."""
    from composer.core import Callback

    from effrecipes import runner

    from effrecipes.data.loader import BatchLoader

    tally = Tally()

    class Switch(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu: list[float] = []

        def batch_end(self, state: Any, logger: Any) -> None:
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())
            if len(self.ends) == warmup:
                tally.active = True

        def fit_end(self, state: Any, logger: Any) -> None:
            tally.active = False

    switch = Switch()
    targets = _targets()
    real_trainer = runner.Trainer

    def with_noops(*a: Any, **k: Any) -> Any:
        k["callbacks"] = list(k.get("callbacks") or []) + [Callback() for _ in range(extra_callbacks)]
        return real_trainer(*a, **k)

    with contextlib.ExitStack() as stack:
        if extra_callbacks:
            stack.enter_context(patched(runner, "Trainer", with_noops))
        for label, obj, attr, _ in targets:
            stack.enter_context(patched(obj, attr, _timed(getattr(obj, attr), tally, label)))
        stack.enter_context(patched(BatchLoader, "_batches",
                                    _timed_generator(BatchLoader._batches, tally, "BatchLoader next()")))
        torch.set_num_threads(threads)
        r = tp.run_effrecipes(name, shape, batch, total, warmup, workdir, threads,
                              algorithms=algorithms, timer=switch)
    n = r["batches"]
    per_batch_us = {k: 1e6 * v / n for k, v in tally.seconds.items()}
    calls = {k: tally.calls[k] / n for k in tally.seconds}
    step_us = 1e6 * r["seconds"] / n
    notes = {label: what for label, _, _, what in targets}
    notes["BatchLoader next()"] = "index_select (shuffle) + uint8->float32 + normalise"
    return {"batches": n, "step_us": step_us, "per_batch_us": per_batch_us, "calls_per_batch": calls,
            "notes": notes, "samples_per_second": r["samples_per_second"]}


# --------------------------------------------------------------------------- 2. micro-benchmarks

def _us(fn: Callable[[], Any], calls: int) -> float:
    for _ in range(min(5, calls)):
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(ts)


def micro(name: str, shape: tuple[int, ...], batch: int, calls: int) -> dict[str, float]:
    from composer.models import ComposerClassifier
    from composer.utils import dist
    from torchmetrics.classification import MulticlassAccuracy

    from effrecipes.data.loader import BatchLoader, channel_stats

    out: dict[str, float] = {}
    torch.manual_seed(0)
    model = ComposerClassifier(tp._model(name, shape), num_classes=tp.NUM_CLASSES)
    logits = torch.randn(batch, tp.NUM_CLASSES)
    y = torch.randint(0, tp.NUM_CLASSES, (batch,))
    acc = MulticlassAccuracy(num_classes=tp.NUM_CLASSES, average="micro")

    def metric_cycle() -> None:
        acc.reset()
        acc.update(logits, y)
        acc.compute()

    out["MulticlassAccuracy reset+update+compute"] = _us(metric_cycle, calls)

    def toggle() -> None:
        model.eval()
        model.train()

    out["model.eval()+model.train() (Composer's model_eval_mode)"] = _us(toggle, calls)
    x = torch.randn(batch, *shape)
    out["deepcopy((x, y)) batch"] = _us(lambda: copy.deepcopy((x, y)), calls)
    out["copy.deepcopy(state_dict) (RunGuard, every 50 ba)"] = _us(
        lambda: copy.deepcopy(model.module.state_dict()), calls)
    t = torch.zeros(1)
    out["dist.all_reduce (single process)"] = _us(lambda: dist.all_reduce(t), calls)
    out["loss.cpu().item()"] = _us(lambda: t.cpu().item(), calls)

    n = batch * 40
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, tp.NUM_CLASSES, (n,), generator=g)
    mean, std = channel_stats(images)
    loader = BatchLoader(images, labels, batch, mean=mean, std=std, shuffle=True, drop_last=True)
    idx = torch.randperm(n, generator=g)[:batch]
    xb = images.index_select(0, idx)
    out["BatchLoader: index_select (uint8)"] = _us(lambda: images.index_select(0, idx), calls)
    out["BatchLoader: to(float32).mul_().sub_()"] = _us(
        lambda: xb.to(torch.float32).mul_(loader._scale).sub_(loader._shift), calls)
    out["BatchLoader: one next() (whole batch)"] = _us(_next_batch(loader), calls)
    from torch.utils.data import DataLoader, TensorDataset
    dl = DataLoader(TensorDataset(images.float(), labels), batch_size=batch, shuffle=True,
                    drop_last=True)
    out["torch DataLoader(TensorDataset) next() (plain Composer path)"] = _us(_next_batch(dl), calls)
    xf = xb.to(torch.float32)
    out["x.contiguous(channels_last)"] = _us(
        lambda: xf.contiguous(memory_format=torch.channels_last), calls)
    out.update(_engine_micro(name, shape, batch, calls))
    return out


def _engine_micro(name: str, shape: tuple[int, ...], batch: int, calls: int) -> dict[str, float]:
    """Composer's Engine against effrecipes' LeanEngine (`effrecipes/lean_engine.py`) on the same
    Trainer, as effrecipes builds it (its four callbacks, no algorithms): one `_debug_log` call,
    and one whole `run_event(BATCH_START)` (what every one of the 13 events per batch pays)."""
    from composer.core import Event
    from composer.core.engine import Engine

    from effrecipes import runner
    from effrecipes.callbacks import RunGuard
    from effrecipes.lean_engine import LeanEngine
    from effrecipes.recipe import Recipe

    tmp = Path(tempfile.mkdtemp())
    recipe = Recipe.model_validate({
        "name": "engine-micro", "seed": 0, "model": {"name": name},
        "data": {"name": "synthetic", "batch_size": batch, "val_fraction": 0.1,
                 "kwargs": {"num_train": batch * 20, "num_test": batch, "channels": shape[0],
                            "image_size": shape[1], "num_classes": tp.NUM_CLASSES}},
        "budget": {"flops": 1e18}, "loggers": {"progress_bar": False},
        "output": {"root": str(tmp), "run_name": "m"}})
    prepared = runner.prepare(recipe)
    engine = runner._build_trainer(prepared, tmp, quiet=True, guard=RunGuard(budget=None),
                                   resume=False).trainer.engine
    out = {}
    for cls in (Engine, LeanEngine):
        engine.__class__ = cls
        out[f"{cls.__name__}._debug_log (one call)"] = _us(
            lambda: engine._debug_log(Event.BATCH_START, "Running event"), calls)
        out[f"{cls.__name__}.run_event(BATCH_START) (x13 events per batch)"] = _us(
            lambda: engine.run_event(Event.BATCH_START), calls)
    return out


def _next_batch(loader: Any) -> Callable[[], Any]:
    state = {"it": iter(loader)}

    def step() -> Any:
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])
    return step


# --------------------------------------------------------------------------- 4. op profile

def op_profile(name: str, shape: tuple[int, ...], batch: int, steps: int, threads: int,
               top: int = 12) -> dict[str, Any]:
    """torch.profiler over `steps` hand-loop training steps, NCHW vs channels_last: where the
    model's own time goes (FLOP-free ops such as BatchNorm and max-pool included)."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model = tp._model(name, shape).train().to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=tp.LR, momentum=tp.MOMENTUM, weight_decay=tp.WD)
        x, y = tp._data(batch, shape)
        x = x.contiguous(memory_format=fmt)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        events.sort(key=lambda e: -e.self_cpu_time_total)
        out[fmt_name] = {"step_ms": total / steps / 1e3,
                         "ops": [(e.key, e.self_cpu_time_total / steps / 1e3, e.count / steps)
                                 for e in events[:top]]}
    return out


# --------------------------------------------------------------------------- 3. A/B variants

VARIANTS: dict[str, dict[str, Any]] = {
    "hand": {"path": "hand"},
    "hand channels_last": {"path": "hand", "channels_last": True},
    "composer": {"path": "composer"},
    "composer no train metrics": {"path": "composer", "train_metrics": False},
    "effrecipes": {"path": "effrecipes"},  # defaults: channels_last model, no train metrics
    "effrecipes NCHW": {"path": "effrecipes", "channels_last": False},  # model.channels_last: false
}


def run_variant(v: dict[str, Any], name: str, shape: tuple[int, ...], batch: int, total: int,
                warmup: int, data: Any, threads: int, workdir: Path) -> dict[str, Any]:
    torch.set_num_threads(threads)
    if v["path"] == "hand":
        return tp.run_hand(name, shape, batch, total, warmup, data,
                           channels_last=v.get("channels_last", False))
    if v["path"] == "composer":
        return tp.run_composer(name, shape, batch, total, warmup, data,
                               train_metrics=v.get("train_metrics", True))
    return tp.run_effrecipes(name, shape, batch, total, warmup, workdir, threads,
                             algorithms=v.get("algorithms"), channels_last=v.get("channels_last", True))


# --------------------------------------------------------------------------- driver

def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gap_1p5k_dw", choices=sorted(tp.MODELS))
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shape", default=None, help="input CxHxW instead of the model's default, "
                    "e.g. 1x8x8 (the quickstart's digits)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--micro-calls", type=int, default=200)
    ap.add_argument("--op-steps", type=int, default=10, help="steps in the torch.profiler section")
    ap.add_argument("--extra-callbacks", type=int, default=10,
                    help="no-op callbacks added in a second in-situ run (0: skip)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    name, shape, bs = args.model, tp.MODELS[args.model]["shape"], args.batch_size
    if args.shape:
        shape = tuple(int(d) for d in args.shape.split("x"))
    warmup, total = max(1, args.warmup), max(1, args.warmup) + args.batches
    variants = [v for v in args.variants.split(",") if v]
    info = machine()
    print(f"# profile_overhead {name} batch {bs}, {args.threads} thread(s), {info['cpu_model']}, "
          f"load {info['loadavg_start']}")

    with tempfile.TemporaryDirectory(prefix="effprof-") as tmp:
        workdir = Path(tmp)
        # 1. in-situ
        situ = in_situ(name, shape, bs, total, warmup, args.threads, workdir)
        rows = [[k, f"{situ['per_batch_us'][k]:,.0f}", f"{situ['calls_per_batch'][k]:.2f}",
                 f"{100 * situ['per_batch_us'][k] / situ['step_us']:.1f}%", situ["notes"].get(k, "")]
                for k in sorted(situ["per_batch_us"], key=lambda k: -situ["per_batch_us"][k])]
        t1 = md_table(["where (timing wrapper)", "us / batch", "calls / batch", "% of step", "covers"], rows)
        print(f"\n## 1. in-situ, effrecipes path: {situ['step_us']:,.0f} us per batch "
              f"({situ['samples_per_second']:,.0f} samples/s) over {situ['batches']} batches")
        print(t1)

        # 1b. price of one more callback: the same run with 10 no-op callbacks added
        if args.extra_callbacks:
            more = in_situ(name, shape, bs, total, warmup, args.threads, workdir,
                           extra_callbacks=args.extra_callbacks)
            key = "Engine.run_event (all events)"
            per_cb = (more["per_batch_us"][key] - situ["per_batch_us"][key]) / args.extra_callbacks
            situ["per_callback_us_per_batch"] = per_cb
            situ["with_extra_callbacks"] = more
            print(f"\nEngine.run_event with {args.extra_callbacks} extra no-op callbacks: "
                  f"{more['per_batch_us'][key]:,.0f} us/batch vs {situ['per_batch_us'][key]:,.0f}: "
                  f"{per_cb:,.1f} us per callback per batch (effrecipes registers 4: RunGuard, "
                  "FlopBudget, History, EpochSync)")

        # 2. micro
        torch.set_num_threads(args.threads)
        mic = micro(name, shape, bs, args.micro_calls)
        t2 = md_table(["operation", "us / call (median)"], [[k, f"{v:,.1f}"] for k, v in mic.items()])
        print("\n## 2. micro-benchmarks")
        print(t2)

        # 4 (printed first: it explains the compute part). op profile
        ops = op_profile(name, shape, bs, args.op_steps, args.threads) if args.op_steps else {}
        t4 = {}
        for fmt_name, o in ops.items():
            t4[fmt_name] = md_table(["op (self CPU)", "ms / step", "calls / step"],
                                    [[k, f"{ms:.2f}", f"{c:.0f}"] for k, ms, c in o["ops"]])
            print(f"\n## 4. torch.profiler, hand loop, {fmt_name}: {o['step_ms']:.1f} ms per step "
                  "(self CPU time, profiler overhead included)")
            print(t4[fmt_name])

        # 3. A/B
        data = tp._data(total * bs, shape)
        raw: list[dict[str, Any]] = []
        for rep in range(args.repeats if variants else 0):  # --variants "": no A/B
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for vname in order:
                la = loadavg()
                r = run_variant(VARIANTS[vname], name, shape, bs, total, warmup, data, args.threads,
                                workdir)
                r.update({"variant": vname, "repeat": rep, "loadavg": la})
                raw.append(r)
                print(f"  rep {rep} {vname:45s} {r['samples_per_second']:8,.0f} samples/s "
                      f"{r.get('samples_per_cpu_second') or 0:8,.0f} /CPU-s "
                      f"(median batch {r['median_batch_ms']:.2f} ms) load {la}", flush=True)
    summary = {}
    for vname in variants:
        rs = [r for r in raw if r["variant"] == vname]
        summary[vname] = {"samples_per_second": median([r["samples_per_second"] for r in rs]),
                          "median_batch_ms": median([r["median_batch_ms"] for r in rs]),
                          "samples_per_cpu_second": median([r.get("samples_per_cpu_second") for r in rs]),
                          "samples_per_second_median_batch":
                              median([r["samples_per_second_median_batch"] for r in rs])}
    base = summary.get("effrecipes", {}).get("samples_per_second")
    hand = summary.get("hand", {}).get("samples_per_second")
    comp = summary.get("composer", {}).get("samples_per_second")
    cbase = summary.get("effrecipes", {}).get("samples_per_cpu_second")
    chand = summary.get("hand", {}).get("samples_per_cpu_second")
    ccomp = summary.get("composer", {}).get("samples_per_cpu_second")
    rows = []
    for vname, s in summary.items():
        sps, cps = s["samples_per_second"], s["samples_per_cpu_second"]
        rows.append([vname, sps, s["median_batch_ms"], sps / base if base else None,
                     sps / hand if hand else None, sps / comp if comp else None, cps,
                     cps / cbase if cbase else None, cps / chand if chand else None,
                     cps / ccomp if ccomp else None])
    t3 = md_table(["variant", "samples/s", "median batch ms", "vs effrecipes", "vs hand",
                   "vs composer", "samples/CPU-s", "vs effrecipes", "vs hand", "vs composer"], rows)
    print(f"\n## 3. A/B ({args.repeats} interleaved repeats, {args.batches} timed batches after "
          f"{warmup} warm-up)")
    print(t3)

    info["loadavg_end"] = loadavg()
    out = {"benchmark": "profile_overhead", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "argv": sys.argv[1:] if argv is None else argv, "machine": info, "model": name,
           "threads": args.threads, "batch_size": bs, "input": "x".join(map(str, shape)), "in_situ": situ, "micro_us": mic,
           "ab_summary": summary, "ab_raw": raw, "op_profile": ops,
           "tables_markdown": {"in_situ": t1, "micro": t2, "ab": t3, "ops": t4}}
    tag = f"-{args.shape}-b{bs}" if args.shape else ""
    path = Path(args.out) if args.out else RESULTS / f"profile_overhead-{name}{tag}-t{args.threads}-{datetime.date.today()}.json"
    write_result(out, path)
    return out


if __name__ == "__main__":
    main()
