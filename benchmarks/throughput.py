"""Training throughput: hand-written PyTorch loop vs plain Composer vs effrecipes, same batches.

For each model (default: the 143K CIFAR GAP CNN on random 3x32x32 and the 1.5K-DW MNIST GAP CNN
on random 1x28x28, 10 classes, batch 128) and each intra-op thread count, in one process and
interleaved (so load from other jobs hits every path alike), it trains `warmup + batches` batches
four ways and times the last `batches`:

  hand       a PyTorch loop over an in-memory float tensor (SGD momentum 0.9, wd 5e-4,
             cross-entropy), the same model builder and thread count, default NCHW format;
  hand_cl    the same loop with the model and batches in channels_last (what effrecipes does
             by default, `model.channels_last: true`): the fastest hand loop we know here;
  composer   plain Composer `Trainer` + `ComposerClassifier` over a torchvision-style
             `DataLoader(TensorDataset, shuffle=True)` (progress bar off, no eval);
  effrecipes `effrecipes.runner.run(load_recipe(path))` on a recipe written here (dataset
             `synthetic` of exactly `warmup + batches` batches, one epoch, no validation split,
             eval.latency_images 0, no checkpoint). The trainer is wrapped only to append a
             callback that time-stamps BATCH_END; `train_seconds` / `samples_per_second` from
             metrics.json (which include the first, FLOP-counted batch) and the wall time are
             reported beside the steady-state rate.

Achieved GFLOP/s = train FLOPs per sample (`effrecipes.budget.train_step_flops` on one batch /
batch size: FlopCounterMode, 2 per MAC, forward + backward) x samples/s; MFU = that / the best
fp32 2048x2048 matmul GFLOP/s on the same thread count.

    .venv/bin/python benchmarks/throughput.py                  # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/throughput.py --batches 3 --warmup 1 --repeats 1 --threads 1
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, loadavg, machine, matmul_peak, md_table, median,  # noqa: E402
                     steady_rate, write_result)

MODELS: dict[str, dict[str, Any]] = {
    "gap_143k": {"shape": (3, 32, 32), "batches": 60},
    "gap_1p5k_dw": {"shape": (1, 28, 28), "batches": 300},
}
NUM_CLASSES = 10
LR, MOMENTUM, WD = 0.01, 0.9, 5e-4


def _model(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    from effrecipes.models import build_model

    torch.manual_seed(seed)
    return build_model(name, shape[0], NUM_CLASSES, shape[1])


def _data(n: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn((n, *shape), generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _timer_callback() -> Any:
    from composer.core import Callback

    class BatchTimer(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu: list[float] = []

        def batch_end(self, state: Any, logger: Any) -> None:
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())

    return BatchTimer()


# --------------------------------------------------------------------------- the three paths

def run_hand(name: str, shape: tuple[int, ...], batch: int, total: int, warmup: int,
             data: tuple[torch.Tensor, torch.Tensor], channels_last: bool = False) -> dict[str, Any]:
    model = _model(name, shape).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    x_all, y_all = data
    ends: list[float] = []
    cpu: list[float] = []
    for i in range(total):
        x, y = x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]
        if channels_last:
            x = x.contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        ends.append(time.perf_counter())
        cpu.append(time.process_time())
    return steady_rate(ends, warmup, batch, cpu)


def run_composer(name: str, shape: tuple[int, ...], batch: int, total: int, warmup: int,
                 data: tuple[torch.Tensor, torch.Tensor], train_metrics: bool = True) -> dict[str, Any]:
    from composer import Trainer
    from composer.models import ComposerClassifier
    from torch.utils.data import DataLoader, TensorDataset
    from torchmetrics import MetricCollection

    model = ComposerClassifier(_model(name, shape), num_classes=NUM_CLASSES,
                               train_metrics=None if train_metrics else MetricCollection([]))
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    loader = DataLoader(TensorDataset(*data), batch_size=batch, shuffle=True, drop_last=True)
    timer = _timer_callback()
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, train_dataloader=loader, optimizers=opt,
                          max_duration=f"{total}ba", callbacks=[timer], device="cpu",
                          precision="fp32", progress_bar=False, log_to_console=False,
                          python_log_level=None, seed=0)
        torch.set_num_threads(threads)
        trainer.fit()
    trainer.close()
    return steady_rate(timer.ends, warmup, batch, timer.cpu)


def run_effrecipes(name: str, shape: tuple[int, ...], batch: int, total: int, warmup: int,
                   workdir: Path, threads: int, algorithms: Optional[list[dict[str, Any]]] = None,
                   timer: Any = None, channels_last: bool = True) -> dict[str, Any]:
    """effrecipes' real path on a recipe written to `workdir`; `timer` (a Composer callback with
    `.ends`) is appended to the trainer's callbacks (a fresh one when None); `channels_last` is
    the recipe's `model.channels_last` (default true, as in a recipe)."""
    from effrecipes import runner
    from effrecipes.recipe import load_recipe

    recipe = {
        "name": f"bench-{name}-t{threads}",
        "seed": 0,
        "data": {"name": "synthetic", "val_fraction": 0.0, "batch_size": batch,
                 "eval_batch_size": batch,
                 "kwargs": {"num_train": total * batch, "num_test": batch, "channels": shape[0],
                            "image_size": shape[1], "num_classes": NUM_CLASSES}},
        "model": {"name": name, "channels_last": channels_last},
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WD},
        "scheduler": {"name": "constant"},
        "algorithms": algorithms or [],
        "budget": {"max_epochs": 1},
        "eval": {"latency_images": 0},
        "loggers": {"progress_bar": False},
        "output": {"root": str(workdir / "runs"), "overwrite": True, "save_checkpoint": False},
    }
    path = workdir / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    timer = timer or _timer_callback()
    real_trainer = runner.Trainer

    def trainer_with_timer(*args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [timer]
        return real_trainer(*args, **kwargs)

    runner.Trainer = trainer_with_timer  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        result = runner.run(load_recipe(path), threads=threads, quiet=True)
        wall = time.perf_counter() - t0
    finally:
        runner.Trainer = real_trainer  # type: ignore[assignment]
    m = result.metrics
    if m["batches"] != total:
        raise RuntimeError(f"effrecipes trained {m['batches']} batches, expected {total}")
    out = steady_rate(timer.ends, warmup, batch, timer.cpu)
    out.update({"metrics_train_seconds": m["train_seconds"],
                "metrics_samples_per_second": m["samples_per_second"],
                "metrics_wall_seconds": m["wall_seconds"], "outer_wall_seconds": wall,
                "metrics_threads": m["threads"], "train_flops_per_sample": m["train_flops_per_sample"]})
    return out


# --------------------------------------------------------------------------- driver

def train_flops_per_sample(name: str, shape: tuple[int, ...], batch: int) -> float:
    from composer.loss import soft_cross_entropy

    from effrecipes.budget import train_step_flops

    x, y = _data(batch, shape)
    return train_step_flops(_model(name, shape), soft_cross_entropy, (x, y)) / batch


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    ap.add_argument("--batches", type=int, default=None,
                    help="timed batches per path (default: 60 for gap_143k, 300 for gap_1p5k_dw)")
    ap.add_argument("--batches-multithread", type=int, default=None,
                    help="timed batches when threads > 1 (default: as --batches). On a loaded "
                    "2-core machine a 2-thread step can take 10x longer; all paths still train "
                    "the same batches")
    ap.add_argument("--warmup", type=int, default=5, help="untimed batches first (>= 1)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shape", default="", help="override input shapes, e.g. gap_1p5k_dw=1x8x8")
    ap.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians reported")
    ap.add_argument("--paths", default="hand,hand_cl,composer,effrecipes",
                    help="hand (NCHW, the usual loop), hand_cl (the same loop with a channels_last "
                    "model), composer (plain Trainer + DataLoader), effrecipes (composer-run's path)")
    ap.add_argument("--peak-n", type=int, default=2048, help="matmul size for the peak")
    ap.add_argument("--peak-tries", type=int, default=8)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/"
                    "throughput-<date>.json)")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for item in (x for x in args.shape.split(",") if x):
        key, _, dims = item.partition("=")
        MODELS[key] = {**MODELS.get(key, {"batches": 100}), "shape": tuple(int(d) for d in dims.split("x"))}
    threads_list = [int(t) for t in args.threads.split(",") if t]
    paths = [p for p in args.paths.split(",") if p]
    warmup = max(1, args.warmup)
    bs = args.batch_size

    info = machine()
    print(f"# throughput  {info['cpu_model']}  nproc={info['nproc']}  load={info['loadavg_start']}  "
          f"torch {info['torch']}  composer {info['composer']}")
    p0 = {t: matmul_peak(t, args.peak_n, args.peak_tries) for t in threads_list}
    print(f"matmul peak (fp32 {args.peak_n}^3, best of {args.peak_tries}): " +
          ", ".join(f"{t} thread(s) {g['wall']:.1f} GFLOP/s wall, {g['cpu']:.1f} per CPU-s"
                    for t, g in p0.items()))

    flops = {m: train_flops_per_sample(m, MODELS[m]["shape"], bs) for m in models}

    raw: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="effbench-") as tmp:
        workdir = Path(tmp)
        for rep in range(args.repeats):
            for m in models:
                shape = MODELS[m]["shape"]
                for t in threads_list:
                    n = (args.batches_multithread if t > 1 and args.batches_multithread
                         else args.batches or MODELS[m]["batches"])
                    total = warmup + n
                    data = _data(total * bs, shape)
                    order = paths[rep % len(paths):] + paths[:rep % len(paths)]  # rotate per repeat
                    for p in order:
                        torch.set_num_threads(t)
                        la = loadavg()
                        if p == "hand":
                            r = run_hand(m, shape, bs, total, warmup, data)
                        elif p == "composer":
                            r = run_composer(m, shape, bs, total, warmup, data)
                        elif p == "effrecipes":
                            r = run_effrecipes(m, shape, bs, total, warmup, workdir, t)
                        elif p == "hand_cl":
                            r = run_hand(m, shape, bs, total, warmup, data, channels_last=True)
                        else:
                            raise SystemExit(f"unknown path {p!r}")
                        r.update({"model": m, "threads": t, "path": p, "repeat": rep, "timed": n,
                                  "loadavg": la})
                        raw.append(r)
                        print(f"  rep {rep} {m:12s} t={t} {p:10s} {r['samples_per_second']:9,.0f} "
                              f"samples/s (median batch {r['median_batch_ms']:.2f} ms)  load {la}",
                              flush=True)
                del data

    p1 = {t: matmul_peak(t, args.peak_n, args.peak_tries) for t in threads_list}
    # best = least disturbed by other jobs
    peaks = {t: max(p0[t]["wall"], p1[t]["wall"]) for t in threads_list}
    peaks_cpu = {t: max(p0[t]["cpu"], p1[t]["cpu"]) for t in threads_list}
    print("matmul peak again at the end: " +
          ", ".join(f"{t}: {g['wall']:.1f} wall, {g['cpu']:.1f} per CPU-s" for t, g in p1.items()) +
          " GFLOP/s; MFU uses the better of the two (wall MFU vs wall peak, CPU-time MFU vs "
          "CPU-time peak)")
    summary: list[dict[str, Any]] = []
    for m in models:
        for t in threads_list:
            row: dict[str, Any] = {"model": m, "threads": t, "batch_size": bs,
                                   "input": "x".join(str(d) for d in MODELS[m]["shape"]),
                                   "timed_batches": (args.batches_multithread if t > 1 and
                                                     args.batches_multithread else
                                                     args.batches or MODELS[m]["batches"]),
                                   "train_flops_per_sample": flops[m],
                                   "matmul_peak_gflops": peaks[t],
                                   "matmul_peak_gflops_per_cpu_s": peaks_cpu[t]}
            for p in paths:
                rs = [r for r in raw if r["model"] == m and r["threads"] == t and r["path"] == p]
                sps = median([r["samples_per_second"] for r in rs])
                row[f"{p}_sps"] = sps
                row[f"{p}_sps_median_batch"] = median(
                    [r["samples_per_second_median_batch"] for r in rs])
                row[f"{p}_sps_cpu"] = median([r.get("samples_per_cpu_second") for r in rs])
                row[f"{p}_mfu_cpu"] = (row[f"{p}_sps_cpu"] * flops[m] / 1e9 / peaks_cpu[t]
                                       if row[f"{p}_sps_cpu"] else None)
                row[f"{p}_gflops"] = sps * flops[m] / 1e9 if sps else None
                row[f"{p}_mfu"] = row[f"{p}_gflops"] / peaks[t] if sps else None
                if p == "effrecipes":
                    row["effrecipes_metrics_sps"] = median(
                        [r["metrics_samples_per_second"] for r in rs])
                    row["effrecipes_wall_s"] = median([r["outer_wall_seconds"] for r in rs])
                    row["effrecipes_train_s"] = median([r["metrics_train_seconds"] for r in rs])
            for other in (p for p in paths if p != "effrecipes" and "effrecipes" in paths):
                row[f"eff_over_{other}"] = row["effrecipes_sps"] / row[f"{other}_sps"]
                row[f"eff_over_{other}_cpu"] = (row["effrecipes_sps_cpu"] / row[f"{other}_sps_cpu"]
                                                if row[f"{other}_sps_cpu"] else None)
            summary.append(row)

    headers = ["model", "threads"]
    cols: list[str] = []
    for p in paths:
        headers.append(f"{p} samples/s")
        cols.append(f"{p}_sps")
    if "effrecipes" in paths:
        headers += ["effrecipes samples/s (metrics.json)", "effrecipes wall s"]
        cols += ["effrecipes_metrics_sps", "effrecipes_wall_s"]
    others = [p for p in paths if p != "effrecipes"] if "effrecipes" in paths else []
    headers += [f"eff/{p}" for p in others]
    cols += [f"eff_over_{p}" for p in others]
    for p in paths:
        headers.append(f"{p} GFLOP/s (MFU)")
    rows = []
    for s in summary:
        row = [f"{s['model']} {s['input']}", s["threads"]] + [s.get(c) for c in cols]
        row += [f"{s[f'{p}_gflops']:.1f} ({100 * s[f'{p}_mfu']:.0f}%)" for p in paths]
        rows.append(row)
    table = md_table(headers, rows)
    cheaders = ["model", "threads"] + [f"{p} samples/CPU-s" for p in paths]
    ccols = [f"{p}_sps_cpu" for p in paths]
    cheaders += [f"eff/{p}" for p in others]
    ccols += [f"eff_over_{p}_cpu" for p in others]
    cheaders += [f"{p} MFU (CPU-time)" for p in paths]
    ctable = md_table(cheaders, [[f"{s['model']} {s['input']}", s["threads"]] + [s.get(c) for c in ccols] +
                                 [f"{100 * s[f'{p}_mfu_cpu']:.0f}%" for p in paths] for s in summary])
    print()
    print(f"median of {args.repeats} repeat(s); {warmup} warm-up batches then the timed batches; "
          f"batch {bs}; train FLOPs/sample: " +
          ", ".join(f"{m} {flops[m] / 1e6:.2f} M" for m in models))
    print(table)
    print("\nSame runs, per process CPU-second (load-insensitive on 1 thread; on 2 threads it "
          "counts both threads' CPU time, spinning included):")
    print(ctable)

    info["loadavg_end"] = loadavg()
    out = {"benchmark": "throughput", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "argv": sys.argv[1:] if argv is None else argv, "machine": info,
           "matmul_peak_gflops": {str(t): g for t, g in peaks.items()},
           "matmul_peak_gflops_per_cpu_s": {str(t): g for t, g in peaks_cpu.items()},
           "matmul_peak_start": {str(t): g for t, g in p0.items()},
           "matmul_peak_end": {str(t): g for t, g in p1.items()},
           "train_flops_per_sample": flops, "warmup": warmup, "summary": summary, "raw": raw,
           "table_markdown": table, "cpu_table_markdown": ctable}
    path = Path(args.out) if args.out else RESULTS / f"throughput-{datetime.date.today()}.json"
    write_result(out, path)
    return out


if __name__ == "__main__":
    main()
