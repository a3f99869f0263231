"""Shared helpers for the benchmark scripts (machine description, matmul peak, timing callback)."""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

# the CPU model name and the matmul peak are shared with effrecipes' MFU (effrecipes/device.py)
from effrecipes.device import cpu_model, matmul_peak  # noqa: F401  (re-exported to the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def load_run(run_dir: Path) -> tuple[Any, Any, torch.nn.Module]:
    """(recipe, data, network in eval mode) of a finished run directory: the recipe's network
    after its algorithms' surgery, with the weights the run saved in `checkpoint.pt`, and the data
    split of the run's seed."""
    from effrecipes import algorithms as algos
    from effrecipes.data import build_data
    from effrecipes.models import build_model
    from effrecipes.recipe import load_recipe
    from effrecipes.rundir import CHECKPOINT_FILE

    recipe = load_recipe(run_dir / "recipe.yaml")
    data = build_data(recipe.data, recipe.seed)
    net = build_model(recipe.model.name, data.in_channels, data.num_classes, data.image_size,
                      **recipe.model.kwargs)
    net = algos.inference_module(algos.apply_surgery(net, recipe.algorithms))
    net.load_state_dict(torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["model"])
    return recipe, data, net.eval()


def loadavg() -> Optional[list[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return None


def machine() -> dict[str, Any]:
    import composer

    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "loadavg_start": loadavg(),
            "python": platform.python_version(), "torch": torch.__version__,
            "composer": composer.__version__, "mkldnn": torch.backends.mkldnn.is_available(),
            "platform": platform.platform()}


def matmul_peak_gflops(threads: int, n: int = 2048, tries: int = 8) -> float:
    """Best-of-`tries` fp32 GFLOP/s (wall clock) of an n x n @ n x n matmul on `threads` threads."""
    return matmul_peak(threads, n, tries)["wall"]


def median(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def steady_rate(ends: Sequence[float], warmup: int, batch_size: int,
                cpu: Optional[Sequence[float]] = None) -> dict[str, float]:
    """Samples/s over the batches after the first `warmup` (>= 1), from per-batch end times.

    `ends[i]` is when batch i ended. Returns the mean rate (samples / time from the end of batch
    warmup-1 to the end of the last batch: includes periodic overheads) and the rate from the
    median batch time (robust to load spikes from other jobs on a shared machine). With `cpu`
    (process CPU time, `time.process_time()`, at the same points) it also returns samples per
    CPU-second: on one thread, the throughput the code would reach on an otherwise idle core,
    largely insensitive to other jobs' load (on n threads it counts every thread's CPU time).
    """
    if warmup < 1 or len(ends) < warmup + 1:
        raise ValueError(f"need warmup >= 1 and more than {warmup} batch times, got {len(ends)}")
    times = [b - a for a, b in zip(ends[warmup - 1:-1], ends[warmup:])]
    total = ends[-1] - ends[warmup - 1]
    n = len(times)
    out = {"batches": n, "seconds": total, "samples_per_second": n * batch_size / total,
           "median_batch_ms": 1e3 * statistics.median(times),
           "samples_per_second_median_batch": batch_size / statistics.median(times)}
    if cpu is not None:
        cpu_total = cpu[-1] - cpu[warmup - 1]
        out["cpu_seconds"] = cpu_total
        out["samples_per_cpu_second"] = n * batch_size / cpu_total if cpu_total > 0 else None
        out["cpu_utilisation"] = cpu_total / total if total > 0 else None
    return out


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if abs(v) >= 100:
                return f"{v:,.0f}"
            if abs(v) >= 1:
                return f"{v:.2f}"
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(out: dict[str, Any], path: "Path") -> "Path":
    """Write a benchmark's JSON result (creating its folder) and say where."""
    import json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {path}")
    return path
