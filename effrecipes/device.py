"""Where a run trains: device, precision and torch.compile from the recipe's `trainer:` section,
and the peak FLOP/s that MFU is measured against.

Resolution is a set of pure functions over torch.cuda's answers (`torch.cuda.is_available`,
`torch.cuda.is_bf16_supported`), so tests patch those and check every branch on a CPU machine:

- device `auto` = a GPU when CUDA is available, else the CPU; `gpu` without CUDA is a one-line
  `RecipeError` naming `trainer.device`.
- precision `auto` = `amp_bf16` on GPUs with native bf16 (compute capability >= 8.0: A100, H100,
  ...), `amp_fp16` on older GPUs (V100, T4, which only emulate bf16), `fp32` on
  the CPU; an `amp_*` precision on the CPU (Composer trains fp32 only there) is a `RecipeError`
  naming `trainer.precision`, and so is `amp_bf16` on a GPU without bf16.
- `$EFFRECIPES_DEVICE=cpu` says this process was given no GPU (a Ray cell started with
  `--gpus-per-cell 0` on a GPU node): `auto` resolves to the CPU there, and `gpu` is an error.
- with Composer's launcher (`composer -n N`) each rank trains on `cuda:$LOCAL_RANK`, the device
  Composer's `DeviceGPU` picks for the same environment.

Peaks for MFU: on a GPU, Composer's speed-monitor table (`get_gpu_flops_available`, keyed by
the device name and the precision); on the CPU, a short measured fp32 matmul (`matmul_peak`, the
function the benchmarks use too).
"""
from __future__ import annotations

import functools
import os
import platform
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from effrecipes.errors import RecipeError

DEVICE_ENV = "EFFRECIPES_DEVICE"  # "cpu": this process was given no GPU (Ray, --gpus-per-cell 0)

DEVICES = ("auto", "cpu", "gpu")
PRECISIONS = ("auto", "fp32", "amp_bf16", "amp_fp16")


@dataclass(frozen=True)
class RunDevice:
    """A run's resolved device: what the Trainer gets and what metrics.json records."""

    device: str                                # Composer's device string: "cpu" | "gpu"
    precision: str                             # Composer's precision: fp32 | amp_bf16 | amp_fp16
    compile: bool
    torch_device: torch.device                 # cpu, or cuda:<local rank>

    @property
    def compile_config(self) -> Optional[dict[str, Any]]:
        """Composer's `Trainer(compile_config=...)`: an empty dict compiles with torch.compile's
        defaults; None does not compile."""
        return {} if self.compile else None

    @property
    def is_gpu(self) -> bool:
        return self.device == "gpu"

    @property
    def name(self) -> str:
        return device_name(self.torch_device)


def _given_cpu_only() -> bool:
    return os.environ.get(DEVICE_ENV, "").strip().lower() == "cpu"


def will_train_on_gpu(trainer: Any) -> bool:
    """What `resolve_device` will say, without its errors (for the data set-up, which runs before
    the device is resolved, and for dry runs planned on a machine without a GPU)."""
    try:
        return resolve_device(trainer.device) == "gpu"
    except RecipeError:
        return False


def resolve_device(requested: str) -> str:
    """`auto` | `cpu` | `gpu` -> `cpu` | `gpu`, or a one-line RecipeError for a missing GPU."""
    if requested not in DEVICES:
        raise RecipeError(f"unknown device {requested!r}; valid choices: {', '.join(DEVICES)}",
                          field="trainer.device")
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        return "gpu" if not _given_cpu_only() and torch.cuda.is_available() else "cpu"
    if _given_cpu_only():
        raise RecipeError(f"gpu requested but this process was given no GPU (${DEVICE_ENV}=cpu, "
                          "e.g. composer-ablate --gpus-per-cell 0)", field="trainer.device",
                          hint="give cells a GPU with --gpus-per-cell 1, or set trainer.device: auto")
    if not torch.cuda.is_available():
        raise RecipeError("gpu requested but no CUDA GPU is available here "
                          "(torch.cuda.is_available() is False)", field="trainer.device",
                          hint="set trainer.device: auto or cpu")
    return "gpu"


def resolve_precision(requested: str, device: str) -> str:
    """`auto` | `fp32` | `amp_bf16` | `amp_fp16` on `device` -> Composer's precision string."""
    if requested not in PRECISIONS:
        raise RecipeError(f"unknown precision {requested!r}; valid choices: {', '.join(PRECISIONS)}",
                          field="trainer.precision")
    if device == "cpu":
        if requested in ("auto", "fp32"):
            return "fp32"
        raise RecipeError(f"{requested} needs a GPU; this run trains on the CPU, where Composer "
                          "trains in fp32 only", field="trainer.precision",
                          hint="set trainer.precision: auto or fp32")
    # native bf16 only (compute capability >= 8.0): torch's default also says yes for GPUs that
    # merely emulate it (V100, T4), and finds out by allocating a tensor on cuda:0 in every rank
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if requested == "auto":
        return "amp_bf16" if bf16 else "amp_fp16"
    if requested == "amp_bf16" and not bf16:
        raise RecipeError(f"amp_bf16 is not supported by this GPU ({_cuda_name()})",
                          field="trainer.precision", hint="set trainer.precision: auto or amp_fp16")
    return requested


def resolve(trainer: Any, local_rank: Optional[int] = None) -> RunDevice:
    """The recipe's `trainer:` section (device, precision, compile) -> a RunDevice.

    On a GPU the torch device is `cuda:<local rank>` (`LOCAL_RANK`, set by Composer's launcher;
    0 for a single process or a Ray task, where CUDA_VISIBLE_DEVICES names the assigned GPU)."""
    device = resolve_device(trainer.device)
    precision = resolve_precision(trainer.precision, device)
    if device == "gpu":
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    return RunDevice(device, precision, bool(trainer.compile), torch_device)


# --------------------------------------------------------------------------- names and peaks

def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cuda_name(index: Optional[int] = None) -> str:
    try:
        return torch.cuda.get_device_name(index)
    except Exception:  # noqa: BLE001 - a name is only for messages and metrics
        return "unknown GPU"


def device_name(torch_device: torch.device) -> str:
    """torch.cuda.get_device_name for a GPU, the CPU model otherwise."""
    if torch_device.type == "cuda":
        return _cuda_name(torch_device.index)
    return cpu_model()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(threads: Optional[int] = None, n: int = 2048, tries: int = 8, *,
                device: "torch.device | str" = "cpu", dtype: torch.dtype = torch.float32,
                inner: int = 1) -> dict[str, Optional[float]]:
    """Best-of-`tries` GFLOP/s of an n x n @ n x n matmul, by wall clock and (CPU only) per
    process CPU-second; each try times `inner` back-to-back matmuls (use several on a GPU,
    where one is microseconds), synchronised on CUDA.

    On a machine other jobs are loading, the wall-clock best is depressed when no try runs
    undisturbed; the CPU-time figure (on one thread) is close to the idle-core peak."""
    dev = torch.device(device)
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device=dev, dtype=dtype)
        b = torch.randn(n, n, generator=g).to(device=dev, dtype=dtype)
        out = torch.empty(n, n, device=dev, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up
        _sync(dev)
        best, best_cpu = float("inf"), float("inf")
        for _ in range(max(1, tries)):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(max(1, inner)):
                torch.mm(a, b, out=out)
            _sync(dev)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        flops = 2.0 * n ** 3 * max(1, inner)
        return {"wall": flops / best / 1e9,
                "cpu": flops / max(best_cpu, 1e-9) / 1e9 if dev.type == "cpu" else None}
    finally:
        torch.set_num_threads(old)


@functools.lru_cache(maxsize=None)
def cpu_fp32_peak_flops(threads: int) -> float:
    """FLOP/s of the CPU on `threads` threads: a short measured fp32 matmul (1024^3, best of 5,
    ~0.1-0.2 s), once per process and thread count."""
    return matmul_peak(threads, n=1024, tries=5)["wall"] * 1e9  # type: ignore[operator]


def tf32_allowed() -> bool:
    """Whether fp32 convolutions or matmuls may run as TF32 (Composer's `DeviceGPU` allows both;
    torch allows it for cuDNN convolutions by default)."""
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def gpu_peak_key(precision: str) -> str:
    """The column of Composer's peak table that `precision` runs at: fp32 with TF32 allowed runs
    its convolutions and matmuls as TF32, so its peak is the tf32 one (the fp32 peak would let
    MFU pass 100%)."""
    return "tf32" if precision == "fp32" and tf32_allowed() else precision


def gpu_peak_flops(precision: str) -> Optional[float]:
    """Peak FLOP/s of the current CUDA device for `precision` (see `gpu_peak`)."""
    return gpu_peak(precision)[0]


def gpu_peak(precision: str) -> tuple[Optional[float], str]:
    """(peak FLOP/s, the column it came from) of the current CUDA device for `precision`, from
    Composer's speed-monitor table: the tf32 column for fp32 when TF32 is allowed, the fp32 one
    where the GPU has no tf32 entry (V100, T4); None when the GPU or the precision is not in it."""
    # lazy: Composer (~3 s), only for a GPU's peak; the CPU benchmarks import this module without it
    from composer.callbacks.speed_monitor import get_gpu_flops_available

    def lookup(key: str) -> Optional[float]:
        # get_gpu_flops_available reads only `state.precision.value`, the table's column
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "gpu_flop count not found ..." is recorded as None
            flops = get_gpu_flops_available(types.SimpleNamespace(
                precision=types.SimpleNamespace(value=key)))
        return float(flops) if flops else None

    key = gpu_peak_key(precision)
    flops = lookup(key)
    if flops is None and key != precision:
        key, flops = precision, lookup(precision)
    return flops, key


def peak_flops(run_device: RunDevice, threads: int) -> tuple[Optional[float], str]:
    """(peak FLOP/s, where it came from) for the precision the run trains in."""
    if run_device.is_gpu:
        flops, column = gpu_peak(run_device.precision)
        return flops, f"composer GPU_AVAILABLE_FLOPS[{column}]"
    return cpu_fp32_peak_flops(max(1, int(threads))), "measured fp32 matmul (1024^3)"


def mfu(flops: float, seconds: Optional[float], peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None when either is unknown)."""
    if not seconds or not peak or seconds <= 0 or peak <= 0:
        return None
    return flops / seconds / peak
