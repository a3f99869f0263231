"""GPU training speed: a hand-written loop vs plain Composer vs effrecipes, and one recipe's wall time.

Runs on any CUDA machine (and, slowly, on the CPU with `--device cpu` so a smoke test covers it).

(a) Throughput. For each configuration (default: the 143K CIFAR GAP CNN on 3x32x32 at batch 128
    and 512, the 1.5K-DW model on 1x28x28 at batch 128; 10 classes, SGD lr 0.01 momentum 0.9
    wd 5e-4), four paths train `warmup + batches` batches of the same shapes, interleaved (the
    order rotates per repeat), and the last `batches` are timed between two synchronisations:

      hand        a PyTorch loop: channels_last model and batches, bf16 autocast, every batch
                  already on the GPU (slices of one pre-made tensor), `zero_grad / backward / step`;
      hand_sync   the same loop plus the host syncs Composer 0.32.1's loop makes on every batch
                  (tests/test_device.py counts them): a small host tensor copied to the GPU and read
                  back before the forward (the batch size) and at the batch's start (the
                  dataloader-finished flag), the loss read after the backward (the optimizer
                  closure) and after the step, and three reads of the time accumulators. Its gap to
                  `hand` is what those syncs cost on this GPU, i.e. what removing them from
                  Composer's loop could win;
      composer    plain Composer: `Trainer(ComposerClassifier(model), device="gpu",
                  precision="amp_bf16", algorithms=[ChannelsLast()])` over the same GPU batches
                  (a list of (x, y) pairs: no DataLoader cost), train metrics on (the default);
      effrecipes  `effrecipes.runner.run` on a recipe (dataset `synthetic` with exactly
                  `warmup + batches` batches, one epoch, no validation split, no latency, no
                  checkpoint; `trainer: {device: gpu, precision: amp_bf16}`): composer-run's
                  real path, with its in-memory loader on the GPU. The Trainer is wrapped only to
                  append the timing callback.

    Reported: samples/s, ms per batch, MFU = train FLOPs/sample (FlopCounterMode, 2 per MAC,
    forward + backward; a bf16 multiply-add counts like an fp32 one) x samples/s / peak, against
    Composer's speed-monitor table for amp_bf16 (`get_gpu_flops_available`) and against the bf16
    matmul peak measured in this run; and the per-batch overhead: effrecipes ms/batch - hand
    ms/batch (and composer - hand, hand_sync - hand).

(b) Wall time of `recipes/cifar10_bp_co_m.yaml` at its own FLOP cap (1e14) with the data replaced
    by CIFAR-shaped synthetic data of CIFAR-10's size (50,000 train + 10,000 test images, the
    recipe's 10% validation split), through `effrecipes.runner.run` with dotted overrides
    (`data.name=synthetic data.kwargs={...}`).

One JSON (`--out`, default benchmarks/results/gpu-<date>.json) with the machine (GPU name, torch,
CUDA and Composer versions), and markdown tables on stdout. Sized for an H200 at an estimated 3-5
minutes (`--quick`: 2-3; estimates, not yet measured); on the CPU use `--device cpu --quick` with
tiny counts:

    python benchmarks/gpu.py                                  # full run on a GPU
    python benchmarks/gpu.py --quick --out /tmp/gpu.json
    python benchmarks/gpu.py --device cpu --quick --batches 2 --warmup 1 --recipe-flops 2e10 \\
        --recipe-train-images 512
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(REPO))
from _common import RESULTS, md_table, median, write_result  # noqa: E402

NUM_CLASSES = 10
LR, MOMENTUM, WD = 0.01, 0.9, 5e-4
# (model, input shape, batch size)
CONFIGS: list[tuple[str, tuple[int, int, int], int]] = [
    ("gap_143k", (3, 32, 32), 128),
    ("gap_143k", (3, 32, 32), 512),
    ("gap_1p5k_dw", (1, 28, 28), 128),
]
PATHS = ("hand", "hand_sync", "composer", "effrecipes")
# paths compared with `hand` (ratio and overhead columns)
VS_HAND = ("hand_sync", "composer", "effrecipes")
RECIPE = REPO / "recipes" / "cifar10_bp_co_m.yaml"


# --------------------------------------------------------------------------- helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _precision(device: torch.device) -> str:
    return "amp_bf16" if device.type == "cuda" else "fp32"


def _model(name: str, shape: tuple[int, ...], seed: int = 0) -> torch.nn.Module:
    from effrecipes.models import build_model

    torch.manual_seed(seed)
    return build_model(name, shape[0], NUM_CLASSES, shape[1])


def _data(n: int, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random batches made on the device (channels_last), once per configuration and repeat."""
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn((n, *shape), generator=g, device=device)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g, device=device)
    return x.contiguous(memory_format=torch.channels_last), y


def _timer_callback(warmup: int, total: int, device: torch.device) -> Any:
    """Composer callback: synchronise and time-stamp after batch `warmup` and after batch `total`
    (two synchronisations in the whole run, so the timing does not change the pipelining)."""
    from composer.core import Callback

    class SyncTimer(Callback):
        def __init__(self) -> None:
            self.count = 0
            self.t0: Optional[float] = None
            self.t1: Optional[float] = None

        def batch_end(self, state: Any, logger: Any) -> None:
            self.count += 1
            if self.count == warmup:
                _sync(device)
                self.t0 = time.perf_counter()
            elif self.count == total:
                _sync(device)
                self.t1 = time.perf_counter()

    return SyncTimer()


def _rate(t0: Optional[float], t1: Optional[float], batches: int, batch: int) -> dict[str, Any]:
    if t0 is None or t1 is None or t1 <= t0:
        raise RuntimeError("the timed window was not reached")
    seconds = t1 - t0
    return {"seconds": seconds, "samples_per_second": batches * batch / seconds,
            "ms_per_batch": 1000.0 * seconds / batches}


def train_flops_per_sample(name: str, shape: tuple[int, ...], batch: int) -> float:
    """The budget's count for one training step (on the CPU: FlopCounterMode counts shapes)."""
    from composer.loss import soft_cross_entropy

    from effrecipes.budget import train_step_flops

    x = torch.randn((batch, *shape))
    y = torch.randint(0, NUM_CLASSES, (batch,))
    return float(train_step_flops(_model(name, shape), soft_cross_entropy, (x, y))) / batch


# --------------------------------------------------------------------------- the paths

def _host_read(value: float, device: torch.device) -> float:
    """One of Composer's per-batch syncs: a host scalar to the device and back (`.item()`)."""
    return torch.tensor([value]).to(device, non_blocking=True).item()


def run_hand(name: str, shape: tuple[int, ...], batch: int, total: int, warmup: int,
             data: tuple[torch.Tensor, torch.Tensor], device: torch.device,
             composer_syncs: bool = False) -> dict[str, Any]:
    """The hand loop; `composer_syncs` adds the host syncs of Composer's loop (`hand_sync`)."""
    model = _model(name, shape).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    x_all, y_all = data
    amp = device.type == "cuda"
    t0 = t1 = None
    for i in range(total):
        if composer_syncs:
            _host_read(0, device)      # _iter_dataloader: iteration-finished flag
        x, y = x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]
        opt.zero_grad(set_to_none=True)
        if composer_syncs:
            _host_read(batch, device)  # _train_microbatches: the batch size, summed over ranks
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if composer_syncs:
            loss.item()                # the optimizer closure's return value
        opt.step()
        if composer_syncs:
            loss.cpu().item()          # _train_loop: the logged train loss
            for v in (batch, 0, 0.01):  # _accumulate_time_across_ranks: samples, tokens, time
                _host_read(v, device)
        if i + 1 == warmup:
            _sync(device)
            t0 = time.perf_counter()
    _sync(device)
    t1 = time.perf_counter()
    return _rate(t0, t1, total - warmup, batch)


def run_composer(name: str, shape: tuple[int, ...], batch: int, total: int, warmup: int,
                 data: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> dict[str, Any]:
    from composer import Trainer
    from composer.algorithms import ChannelsLast
    from composer.models import ComposerClassifier

    model = ComposerClassifier(_model(name, shape), num_classes=NUM_CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    x_all, y_all = data
    batches = [(x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch])
               for i in range(total)]
    timer = _timer_callback(warmup, total, device)
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, train_dataloader=batches, optimizers=opt,
                          max_duration=f"{total}ba", callbacks=[timer], algorithms=[ChannelsLast()],
                          device_train_microbatch_size=batch,  # a list has no .batch_size
                          device="gpu" if device.type == "cuda" else "cpu",
                          precision=_precision(device), progress_bar=False, log_to_console=False,
                          python_log_level=None, seed=0)
        torch.set_num_threads(threads)
        trainer.fit()
    trainer.close()
    return _rate(timer.t0, timer.t1, total - warmup, batch)


def _with_timer(timer: Any, fn: Callable[[], Any]) -> Any:
    """Run `fn` with effrecipes' Trainer wrapped to append `timer` to its callbacks."""
    from effrecipes import runner

    real = runner.Trainer

    def trainer_with_timer(*args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [timer]
        return real(*args, **kwargs)

    runner.Trainer = trainer_with_timer  # type: ignore[assignment]
    try:
        return fn()
    finally:
        runner.Trainer = real  # type: ignore[assignment]


def run_effrecipes(name: str, shape: tuple[int, ...], batch: int, total: int, warmup: int,
                   workdir: Path, device: torch.device) -> dict[str, Any]:
    from effrecipes import runner
    from effrecipes.recipe import load_recipe

    recipe = {
        "name": f"gpubench-{name}-b{batch}",
        "seed": 0,
        "data": {"name": "synthetic", "val_fraction": 0.0, "batch_size": batch,
                 "eval_batch_size": max(batch, 256),
                 "kwargs": {"num_train": total * batch, "num_test": batch, "channels": shape[0],
                            "image_size": shape[1], "num_classes": NUM_CLASSES}},
        "model": {"name": name},
        "optimizer": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "weight_decay": WD},
        "scheduler": {"name": "constant"},
        "budget": {"max_epochs": 1},
        "trainer": {"device": "gpu" if device.type == "cuda" else "cpu",
                    "precision": _precision(device)},
        "eval": {"latency_images": 0},
        "loggers": {"progress_bar": False},
        "output": {"root": str(workdir / "runs"), "overwrite": True, "save_checkpoint": False},
    }
    path = workdir / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    timer = _timer_callback(warmup, total, device)
    t0 = time.perf_counter()
    result = _with_timer(timer, lambda: runner.run(load_recipe(path), quiet=True))
    wall = time.perf_counter() - t0
    m = result.metrics
    if m["batches"] != total:
        raise RuntimeError(f"effrecipes trained {m['batches']} batches, expected {total}")
    out = _rate(timer.t0, timer.t1, total - warmup, batch)
    out.update({"run_wall_seconds": wall, "metrics_samples_per_second": m["samples_per_second"],
                "metrics_mfu": m.get("mfu"), "metrics_device": m.get("device_name"),
                "metrics_precision": m.get("precision")})
    return out


# --------------------------------------------------------------------------- (b) a real recipe

def run_recipe(workdir: Path, device: torch.device, flops: Optional[float],
               train_images: int, test_images: int) -> dict[str, Any]:
    """`recipes/cifar10_bp_co_m.yaml` on CIFAR-shaped synthetic data, through composer-run's path."""
    from effrecipes import runner
    from effrecipes.recipe import load_recipe

    overrides = [
        "data.name=synthetic",
        f"data.kwargs={{num_train: {train_images}, num_test: {test_images}, channels: 3, "
        f"image_size: 32, num_classes: 10}}",
        f"trainer.device={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"output.root={workdir / 'recipe-runs'}", "output.overwrite=true",
        "loggers.progress_bar=false",
    ]
    if flops is not None:
        overrides.append(f"budget.flops={flops:g}")
    recipe = load_recipe(RECIPE, overrides)
    t0 = time.perf_counter()
    m = runner.run(recipe, quiet=True).metrics
    wall = time.perf_counter() - t0
    keys = ("flops_cap", "flops_used", "stop_reason", "batches", "epochs", "samples",
            "train_seconds", "wall_seconds", "samples_per_second", "mfu", "peak_flops_per_device",
            "device_name", "precision", "compile", "test_accuracy", "best_val_accuracy",
            "train_flops_per_sample", "cpu_latency_ms_per_image", "device_latency_ms", "threads")
    out = {k: m.get(k) for k in keys}
    out.update({"recipe": str(RECIPE.relative_to(REPO)), "overrides": overrides,
                "outer_wall_seconds": wall, "train_images": train_images,
                "test_images": test_images})
    return out


# --------------------------------------------------------------------------- driver

def machine(device: torch.device) -> dict[str, Any]:
    import composer

    from effrecipes.device import cpu_model

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "composer": composer.__version__, "cpu_model": cpu_model(),
                            "nproc": os.cpu_count(), "platform": platform.platform(),
                            "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(), "gpu_count": torch.cuda.device_count(),
                     "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                     "capability": list(torch.cuda.get_device_capability(device)),
                     "bf16_supported": torch.cuda.is_bf16_supported(including_emulation=False)})
    return info


def peaks(device: torch.device, quick: bool) -> dict[str, Any]:
    from effrecipes.device import gpu_peak_flops, matmul_peak

    if device.type == "cuda":
        n, inner = (4096, 10) if quick else (8192, 10)
        bf16 = matmul_peak(None, n, 3 if quick else 5, device=device, dtype=torch.bfloat16,
                           inner=inner)["wall"]
        return {"table_amp_bf16": gpu_peak_flops("amp_bf16"),
                "table_source": "composer.callbacks.speed_monitor.get_gpu_flops_available",
                "measured_bf16_matmul": bf16 * 1e9 if bf16 else None,
                "measured_matmul": f"bf16 {n}x{n} @ {n}x{n}, {inner} per timing, best of "
                                   f"{3 if quick else 5}"}
    fp32 = matmul_peak(torch.get_num_threads(), 512 if quick else 2048, 3 if quick else 8)["wall"]
    return {"table_amp_bf16": None, "table_source": "none (CPU)",
            "measured_fp32_matmul": fp32 * 1e9 if fp32 else None,
            "measured_matmul": f"fp32 on {torch.get_num_threads()} thread(s)"}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="(a) 1 repeat of 5 warm-up + 40 timed batches; (b) unchanged on a GPU, "
                    "on the CPU a 2e10 cap on 5,000 images (1e14 would take hours)")
    ap.add_argument("--batches", type=int, default=None,
                    help="timed batches per path (default 200; --quick 40)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed batches first (default 20; "
                    "--quick 5); the FLOP-counted first batch and compilation fall here")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats, medians "
                    "reported (default 2; --quick 1)")
    ap.add_argument("--configs", default=None,
                    help="comma-separated model:CxHxW:batch (default gap_143k:3x32x32:128,"
                    "gap_143k:3x32x32:512,gap_1p5k_dw:1x28x28:128)")
    ap.add_argument("--paths", default=",".join(PATHS), help=",".join(PATHS))
    ap.add_argument("--skip-recipe", action="store_true", help="skip (b)")
    ap.add_argument("--recipe-flops", type=float, default=None,
                    help="(b) FLOP cap (default: the recipe's own, 1e14)")
    ap.add_argument("--recipe-train-images", type=int, default=None,
                    help="(b) synthetic training images (default 50,000, CIFAR-10's size)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu-<date>.json)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; use --device cpu (slow, for a smoke test)")
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cuda.matmul.allow_tf32 = True  # as Composer's DeviceGPU sets it
        torch.backends.cudnn.allow_tf32 = True
    warmup = max(1, args.warmup if args.warmup is not None else (5 if args.quick else 20))
    batches = max(1, args.batches if args.batches is not None else (40 if args.quick else 200))
    repeats = max(1, args.repeats if args.repeats is not None else (1 if args.quick else 2))
    configs = CONFIGS
    if args.configs:
        configs = []
        for item in args.configs.split(","):
            name, dims, bs = item.split(":")
            configs.append((name, tuple(int(d) for d in dims.split("x")), int(bs)))  # type: ignore[arg-type]
    paths = [p for p in args.paths.split(",") if p]
    if device.type == "cpu" and args.quick:
        recipe_flops = args.recipe_flops if args.recipe_flops is not None else 2e10
        recipe_images = args.recipe_train_images or 5000
    else:
        recipe_flops, recipe_images = args.recipe_flops, args.recipe_train_images or 50000

    t_start = time.perf_counter()
    info = machine(device)
    print(f"# gpu benchmark  {info.get('gpu', info['cpu_model'])}  torch {info['torch']}  "
          f"composer {info['composer']}  ({'quick' if args.quick else 'full'}: {repeats} repeat(s) "
          f"of {warmup} + {batches} batches)", flush=True)
    pk0 = peaks(device, args.quick)
    print(f"peaks: {pk0}", flush=True)
    flops = {(m, s): train_flops_per_sample(m, s, 8) for m, s, _ in configs}

    raw: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    recipe_result: Optional[dict[str, Any]] = None
    with tempfile.TemporaryDirectory(prefix="effgpu-") as tmp:
        workdir = Path(tmp)
        for rep in range(repeats):
            for name, shape, bs in configs:
                total = warmup + batches
                data = _data(total * bs, shape, device)
                order = paths[rep % len(paths):] + paths[:rep % len(paths)]
                for p in order:
                    try:
                        if p in ("hand", "hand_sync"):
                            r = run_hand(name, shape, bs, total, warmup, data, device,
                                         composer_syncs=p == "hand_sync")
                        elif p == "composer":
                            r = run_composer(name, shape, bs, total, warmup, data, device)
                        elif p == "effrecipes":
                            r = run_effrecipes(name, shape, bs, total, warmup, workdir, device)
                        else:
                            raise SystemExit(f"unknown path {p!r}")
                    except Exception as e:  # noqa: BLE001 - record and go on: one run, one machine
                        errors.append({"path": p, "model": name, "batch_size": bs, "repeat": rep,
                                       "error": f"{type(e).__name__}: {e}",
                                       "traceback": traceback.format_exc()})
                        print(f"  rep {rep} {name} b{bs} {p}: FAILED {type(e).__name__}: {e}",
                              flush=True)
                        continue
                    r.update({"model": name, "input": "x".join(map(str, shape)), "batch_size": bs,
                              "path": p, "repeat": rep, "timed": batches})
                    raw.append(r)
                    print(f"  rep {rep} {name:12s} b{bs:<4d} {p:10s} {r['samples_per_second']:11,.0f} "
                          f"samples/s  {r['ms_per_batch']:.3f} ms/batch  "
                          f"(elapsed {time.perf_counter() - t_start:.0f} s)", flush=True)
                del data
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if not args.skip_recipe:
            print(f"(b) {RECIPE.name} at {recipe_flops or 'its own'} cap on {recipe_images:,} "
                  f"synthetic 3x32x32 train images ...", flush=True)
            try:
                recipe_result = run_recipe(workdir, device, recipe_flops, recipe_images, 10000
                                           if recipe_images >= 50000 else max(256, recipe_images // 5))
                print(f"    wall {recipe_result['wall_seconds']:.1f} s, train "
                      f"{recipe_result['train_seconds']:.1f} s, {recipe_result['batches']} batches, "
                      f"{recipe_result['samples_per_second']:,.0f} samples/s", flush=True)
            except Exception as e:  # noqa: BLE001
                errors.append({"path": "recipe", "error": f"{type(e).__name__}: {e}",
                               "traceback": traceback.format_exc()})
                print(f"(b) FAILED {type(e).__name__}: {e}", flush=True)
    pk1 = peaks(device, args.quick)

    measured_key = "measured_bf16_matmul" if device.type == "cuda" else "measured_fp32_matmul"
    measured_peak = max(v for v in (pk0.get(measured_key), pk1.get(measured_key)) if v) \
        if (pk0.get(measured_key) or pk1.get(measured_key)) else None
    table_peak = pk0.get("table_amp_bf16")
    summary: list[dict[str, Any]] = []
    for name, shape, bs in configs:
        fps = flops[(name, shape)]
        row: dict[str, Any] = {"model": name, "input": "x".join(map(str, shape)), "batch_size": bs,
                               "train_flops_per_sample": fps}
        for p in paths:
            rs = [r for r in raw if r["model"] == name and r["batch_size"] == bs and r["path"] == p
                  and r["input"] == row["input"]]
            sps = median([r["samples_per_second"] for r in rs])
            row[f"{p}_sps"] = sps
            row[f"{p}_ms_per_batch"] = median([r["ms_per_batch"] for r in rs])
            row[f"{p}_mfu_table"] = sps * fps / table_peak if sps and table_peak else None
            row[f"{p}_mfu_measured"] = sps * fps / measured_peak if sps and measured_peak else None
        for p in VS_HAND:
            if row.get(f"{p}_sps") and row.get("hand_sps"):
                row[f"{p}_over_hand"] = row[f"{p}_sps"] / row["hand_sps"]
                row[f"{p}_overhead_ms_per_batch"] = (row[f"{p}_ms_per_batch"]
                                                     - row["hand_ms_per_batch"])
        summary.append(row)

    headers = ["model", "batch"] + [f"{p} samples/s" for p in paths] + \
        [f"{p} ms/batch" for p in paths] + \
        [f"{p}/hand" for p in VS_HAND if p in paths and "hand" in paths] + \
        [f"{p} overhead ms/batch" for p in VS_HAND if p in paths and "hand" in paths] + \
        [f"{p} MFU (table / measured)" for p in paths]

    def pct(v: Optional[float]) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    rows = []
    for s in summary:
        row = [f"{s['model']} {s['input']}", s["batch_size"]]
        row += [s.get(f"{p}_sps") for p in paths] + [s.get(f"{p}_ms_per_batch") for p in paths]
        row += [s.get(f"{p}_over_hand") for p in VS_HAND if p in paths and "hand" in paths]
        row += [s.get(f"{p}_overhead_ms_per_batch") for p in VS_HAND if p in paths and "hand" in paths]
        row += [f"{pct(s.get(f'{p}_mfu_table'))} / {pct(s.get(f'{p}_mfu_measured'))}" for p in paths]
        rows.append(row)
    table = md_table(headers, rows)
    recipe_table = ""
    if recipe_result:
        r = recipe_result
        recipe_table = md_table(
            ["recipe", "data", "FLOP cap", "FLOPs used", "batches (epochs)", "train s", "wall s",
             "samples/s", "MFU", "device", "precision"],
            [[r["recipe"], f"synthetic 3x32x32, {r['train_images']:,} train", f"{r['flops_cap']:.3g}",
              f"{r['flops_used']:.3g}", f"{r['batches']} ({r['epochs']:.1f})", r["train_seconds"],
              r["wall_seconds"], r["samples_per_second"], pct(r.get("mfu")), r["device_name"],
              r["precision"]]])
    print()
    print(f"(a) median of {repeats} repeat(s); {warmup} warm-up then {batches} timed batches; "
          f"MFU against Composer's table (amp_bf16: {table_peak or '-'}) / the measured matmul "
          f"peak ({measured_peak / 1e12 if measured_peak else 0:.1f} TFLOP/s); train FLOPs/sample: "
          + ", ".join(f"{m} {f / 1e6:.2f} M" for (m, _), f in flops.items()))
    print(table)
    if recipe_table:
        print("\n(b) one recipe at its cap")
        print(recipe_table)
    if errors:
        print(f"\n{len(errors)} error(s): " + "; ".join(f"{e['path']}: {e['error']}" for e in errors))
    total_s = time.perf_counter() - t_start
    print(f"\ntotal {total_s:.0f} s")
    out = {"benchmark": "gpu", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "argv": sys.argv[1:] if argv is None else argv, "machine": info, "quick": args.quick,
           "warmup": warmup, "batches": batches, "repeats": repeats,
           "peaks_start": pk0, "peaks_end": pk1, "peak_flops_table_amp_bf16": table_peak,
           "peak_flops_measured": measured_peak, "train_flops_per_sample":
               {f"{m} {'x'.join(map(str, s))}": f for (m, s), f in flops.items()},
           "summary": summary, "raw": raw, "recipe": recipe_result, "errors": errors,
           "table_markdown": table, "recipe_table_markdown": recipe_table,
           "total_seconds": total_s}
    path = Path(args.out) if args.out else RESULTS / f"gpu-{datetime.date.today()}.json"
    write_result(out, path)
    return out


if __name__ == "__main__":
    main()
