"""The training device: resolution of `trainer:` (CUDA availability patched), the one-line error for
an absent GPU, the in-memory data path on the training device, MFU and latency. CPU only, fast."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from effrecipes import device as devices
from effrecipes.data.loader import BatchLoader, crop_flip
from effrecipes.errors import RecipeError
from tests.conftest import tiny_recipe, write_recipe


def _cuda(monkeypatch: pytest.MonkeyPatch, available: bool, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    def native_bf16(including_emulation: bool = True) -> bool:
        # torch's default also answers yes for GPUs that only emulate bf16 (V100, T4): refuse it
        assert including_emulation is False, "ask for native bf16 support only"
        return bf16

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", native_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA Test GPU")


def _trainer(device: str = "auto", precision: str = "auto", compile: bool = False) -> Any:
    return SimpleNamespace(device=device, precision=precision, compile=compile)


@pytest.fixture(autouse=True)
def _no_device_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


# --------------------------------------------------------------------------- resolution

@pytest.mark.parametrize("cuda,bf16,device,precision,want", [
    (False, False, "auto", "auto", ("cpu", "fp32", "cpu")),
    (False, False, "cpu", "fp32", ("cpu", "fp32", "cpu")),
    (True, True, "auto", "auto", ("gpu", "amp_bf16", "cuda:0")),
    (True, False, "auto", "auto", ("gpu", "amp_fp16", "cuda:0")),   # an older GPU: no bf16
    (True, True, "gpu", "fp32", ("gpu", "fp32", "cuda:0")),
    (True, True, "gpu", "amp_fp16", ("gpu", "amp_fp16", "cuda:0")),
    (True, True, "cpu", "auto", ("cpu", "fp32", "cpu")),            # CPU asked on a GPU machine
])
def test_resolution(monkeypatch: pytest.MonkeyPatch, cuda: bool, bf16: bool, device: str,
                    precision: str, want: tuple[str, str, str]) -> None:
    _cuda(monkeypatch, cuda, bf16)
    rd = devices.resolve(_trainer(device, precision))
    assert (rd.device, rd.precision, str(rd.torch_device)) == want
    assert rd.compile_config is None


def test_each_rank_takes_its_local_gpu_and_compile_maps_to_compile_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Composer's launcher sets LOCAL_RANK; DeviceGPU then uses cuda:LOCAL_RANK, and so do we."""
    _cuda(monkeypatch, True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    rd = devices.resolve(_trainer(compile=True))
    assert rd.torch_device == torch.device("cuda", 3)
    assert rd.compile_config == {}  # Composer: an empty dict = torch.compile with its defaults


@pytest.mark.parametrize("cuda,bf16,device,precision,field", [
    (False, False, "gpu", "auto", "trainer.device"),
    (False, False, "auto", "amp_bf16", "trainer.precision"),
    (False, False, "cpu", "amp_fp16", "trainer.precision"),
    (True, False, "gpu", "amp_bf16", "trainer.precision"),
])
def test_impossible_requests_are_one_line_recipe_errors(monkeypatch: pytest.MonkeyPatch, cuda: bool,
                                                        bf16: bool, device: str, precision: str,
                                                        field: str) -> None:
    _cuda(monkeypatch, cuda, bf16)
    with pytest.raises(RecipeError) as e:
        devices.resolve(_trainer(device, precision))
    text = str(e.value)
    assert text.startswith(f"{field}: ") and "\n" not in text
    assert "set trainer." in text  # the fix is named


def test_a_process_given_no_gpu_uses_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray cell with --gpus-per-cell 0 on a GPU node: auto -> CPU; gpu -> an error."""
    _cuda(monkeypatch, True)
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    assert devices.resolve(_trainer()).device == "cpu"
    with pytest.raises(RecipeError, match="trainer.device: .*given no GPU"):
        devices.resolve(_trainer("gpu"))


def test_ray_cells_set_the_device_env_from_their_gpu_request(monkeypatch: pytest.MonkeyPatch) -> None:
    from effrecipes.matrix.execute import run_cell

    for gpus, env in ((0, "cpu"), (1, None), (0.5, None)):
        monkeypatch.setenv(devices.DEVICE_ENV, "stale")
        res = run_cell({"cell_id": "c", "recipe": {"name": "bad"}, "gpus": gpus})
        assert not res["ok"]  # invalid recipe: the cell fails fast, after the env is set
        assert os.environ.get(devices.DEVICE_ENV) == env
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    run_cell({"cell_id": "c", "recipe": {"name": "bad"}})  # the local executor leaves it alone
    assert os.environ.get(devices.DEVICE_ENV) == "cpu"


def test_gpu_peak_comes_from_composers_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from composer.callbacks.speed_monitor import GPU_AVAILABLE_FLOPS

    _cuda(monkeypatch, True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100 80GB HBM3")
    for precision in ("amp_bf16", "amp_fp16"):
        assert devices.gpu_peak_flops(precision) == GPU_AVAILABLE_FLOPS["h100-sxm"][precision]
    # fp32 runs its convolutions as TF32 where that is allowed (Composer's DeviceGPU allows it):
    # its peak is the tf32 column, and the plain fp32 one only where TF32 is off
    assert torch.backends.cudnn.allow_tf32  # torch's default for convolutions
    assert devices.gpu_peak_flops("fp32") == GPU_AVAILABLE_FLOPS["h100-sxm"]["tf32"]
    assert devices.peak_flops(devices.RunDevice("gpu", "fp32", False, torch.device("cuda", 0)),
                              1)[1].endswith("[tf32]")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100-SXM2-16GB")
    assert "tf32" not in GPU_AVAILABLE_FLOPS["v100-sxm"]  # no TF32 there: the fp32 column, named
    assert devices.gpu_peak("fp32") == (GPU_AVAILABLE_FLOPS["v100-sxm"]["fp32"], "fp32")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(devices, "tf32_allowed", lambda: False)
    assert devices.gpu_peak_flops("fp32") == GPU_AVAILABLE_FLOPS["h100-sxm"]["fp32"]
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Some Unknown GPU")
    assert devices.gpu_peak_flops("amp_bf16") is None  # not in the table: MFU unknown, not guessed


def test_mfu() -> None:
    assert devices.mfu(2e12, 2.0, 1e12) == pytest.approx(1.0)
    assert devices.mfu(1e12, 0.0, 1e12) is None and devices.mfu(1e12, 1.0, None) is None


# --------------------------------------------------------------------------- the CLI

@pytest.mark.parametrize("override,field", [("trainer.device=gpu", "trainer.device"),
                                            ("trainer.precision=amp_bf16", "trainer.precision")])
def test_cli_absent_gpu_is_one_line_exit_2_before_any_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str],
                                                           override: str, field: str) -> None:
    from effrecipes.cli import main

    _cuda(monkeypatch, False)
    # a dataset that is not there: had the data been loaded first, this would be a data error
    recipe = tiny_recipe(tmp_path, data={"name": "cifar10", "root": str(tmp_path / "none"),
                                         "download": False})
    path = write_recipe(tmp_path, recipe)
    assert main([str(path), override, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {path}: {field}: ")
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the data path

class _OpLog(TorchDispatchMode):
    """Every aten op with the devices of its tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, set[str], dict[str, Any]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen: set[str] = set()
        for t in torch.utils._pytree.tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                seen.add(t.device.type)
        self.ops.append((str(func), seen, kwargs))
        return out


def _loader(**kw: Any) -> BatchLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    return BatchLoader(images, labels, 8, mean=(0.5,) * 3, std=(0.25,) * 3, **kw)


def test_batches_are_made_on_the_cache_device_with_no_per_batch_copy() -> None:
    """A loader on a device other than the host ("meta" stands in for a GPU here: a real device
    distinct from the CPU) makes every batch there: no op after the first batch reads a host
    tensor or copies across devices (the epoch's order is copied once, before the first batch)."""
    loader = _loader(shuffle=True, drop_last=True, augment=("random_crop", "hflip")).to("meta")
    assert loader.images.device.type == loader.labels.device.type == "meta"
    it = iter(loader)
    x, y = next(it)  # the epoch's set-up (permutation, its one copy) happens here
    assert x.device.type == y.device.type == "meta" and x.dtype == torch.float32
    with _OpLog() as log:
        rest = list(it)
    assert len(rest) == len(loader) - 1 and all(b[0].device.type == "meta" for b in rest)
    assert log.ops, "no ops recorded"
    # a host tensor anywhere (a per-batch copy in, an index made on the CPU) shows up here
    offending = [(op, seen) for op, seen, _ in log.ops if seen != {"meta"}]
    assert not offending, offending[:5]


def test_crop_flip_makes_its_index_tensors_on_the_images_device() -> None:
    """Every tensor crop_flip creates names the images' device: under a different default device
    (meta) it still returns exactly the CPU result."""
    images = _loader().images[:6]
    want = crop_flip(images, 2, True, torch.Generator().manual_seed(1))
    with torch.device("meta"):
        got = crop_flip(images, 2, True, torch.Generator().manual_seed(1))
    assert got.device.type == "cpu" and torch.equal(got, want)


def test_run_keeps_the_cache_on_the_resolved_device_and_passes_it_to_the_trainer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """device=cpu through the runner's own code path: the resolved device reaches the loaders
    (their uint8 cache is there), the Trainer (device, precision, compile_config) and metrics.json."""
    from effrecipes import runner
    from effrecipes.recipe import load_recipe

    _cuda(monkeypatch, False)
    resolved: list[devices.RunDevice] = []
    real_resolve = devices.resolve

    def spy_resolve(*a: Any, **k: Any) -> devices.RunDevice:
        resolved.append(real_resolve(*a, **k))
        return resolved[-1]

    moved: list[tuple[int, torch.device]] = []
    real_to = BatchLoader.to

    def spy_to(self: BatchLoader, device: Any) -> BatchLoader:
        if resolved:  # moved after the device was resolved (not BatchLoader's own init)
            moved.append((id(self), torch.device(device)))
        return real_to(self, device)

    seen: list[dict[str, Any]] = []
    real_trainer = runner.Trainer

    def capture(*a: Any, **k: Any) -> Any:
        seen.append(dict(k))
        k["compile_config"] = None  # checked above; compiling would take minutes here
        return real_trainer(*a, **k)

    monkeypatch.setattr(devices, "resolve", spy_resolve)
    monkeypatch.setattr(BatchLoader, "to", spy_to)
    monkeypatch.setattr(runner, "Trainer", capture)
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 5e7, "trainer": {"compile": True}})
    m = runner.run(load_recipe(write_recipe(tmp_path, recipe)), quiet=True).metrics
    rd = resolved[-1]
    assert (rd.device, rd.precision) == ("cpu", "fp32")
    kw = seen[0]
    assert (kw["device"], kw["precision"], kw["compile_config"]) == ("cpu", "fp32", {})
    train, val = kw["train_dataloader"].dataloader, kw["eval_dataloader"]  # train: lean_train_data's DataSpec
    for loader in (train, val):
        assert isinstance(loader, BatchLoader)
        assert (id(loader), rd.torch_device) in moved
        assert loader.device == rd.torch_device == loader.images.device == loader.labels.device
    assert (m["device"], m["precision"], m["compile"]) == ("cpu", "fp32", True)
    assert m["device_name"] == devices.cpu_model() and m["device_latency_ms"] is None
    assert m["peak_flops_source"].startswith("measured fp32 matmul")
    assert m["mfu"] == pytest.approx(m["flops_used"] / m["train_seconds"] / m["peak_flops_per_device"])
    assert json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())["mfu"] == m["mfu"]


def test_device_latency_times_each_batch_size() -> None:
    """The GPU-only latency helper, run on the CPU (the synchronisation is a no-op there)."""
    from effrecipes.evaluate import measure_device_latency

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    sizes: list[int] = []
    model.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
    out = measure_device_latency(model, _loader(), (1, 16, 1000), iters=3, warmup=1)
    assert set(out) == {"batch_1_ms", "batch_16_ms", "batch_1000_ms"}
    assert all(out[k] > 0 for k in ("batch_1_ms", "batch_16_ms", "batch_1000_ms"))
    # a batch larger than the loader's 64 images (a rank's share of the test set) repeats them
    assert sizes == [1] * 4 + [16] * 4 + [1000] * 4


def test_cpu_latency_cycles_a_short_loader() -> None:
    """A data-parallel rank holds a share of the test set: CPU latency still times the asked
    number of single images, cycling through the ones it has."""
    from effrecipes.evaluate import measure_latency

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    sizes: list[int] = []
    model.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
    short = _loader()
    short.images, short.labels = short.images[:5], short.labels[:5]
    assert measure_latency(model, short, images=20, warmup=2) > 0
    assert sizes == [1] * 22


def test_per_sample_loaders_pin_memory_only_for_a_gpu() -> None:
    """Disk datasets (per-sample DataLoader): pinned batches when the run trains on a GPU, so the
    trainer's non_blocking copies overlap; not pinned on the CPU."""
    from torch.utils.data import DataLoader, TensorDataset

    from effrecipes.data import DataBundle

    ds = TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64))
    bundle = DataBundle(train=DataLoader(ds, batch_size=2), val=None, test=DataLoader(ds, batch_size=2),
                        num_classes=2, in_channels=1, image_size=2, num_train=4, num_val=0,
                        num_test=4, per_sample=True)
    assert not bundle.train.pin_memory
    bundle.to(torch.device("cuda", 0))  # only flags the loaders: no CUDA needed to check
    assert bundle.train.pin_memory and bundle.test.pin_memory
    bundle.to("cpu")
    assert not bundle.train.pin_memory and not bundle.test.pin_memory


def test_folder_loaders_pin_from_their_first_iterator_when_the_run_will_use_a_gpu(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image-folder loaders keep their workers for the whole run (`persistent_workers`), and a
    DataLoader then reuses the iterator of its first `iter()`, pin flag and all. The set-up draws
    a sample batch before the run's device is resolved, so the loaders are built pinned when the
    run will train on a GPU (`device.will_train_on_gpu`), not re-flagged by `DataBundle.to`."""
    from effrecipes import runner
    from effrecipes.data import build_data
    from effrecipes.recipe import DataConfig, load_recipe
    from tests.test_data import _write_food101

    _cuda(monkeypatch, True)
    assert devices.will_train_on_gpu(_trainer("auto")) and devices.will_train_on_gpu(_trainer("gpu"))
    assert not devices.will_train_on_gpu(_trainer("cpu"))
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    assert not devices.will_train_on_gpu(_trainer("auto"))  # a Ray cell given no GPU
    monkeypatch.delenv(devices.DEVICE_ENV)
    _cuda(monkeypatch, False)
    assert not devices.will_train_on_gpu(_trainer("gpu"))  # resolve() will refuse it, not this

    seen: dict[str, Any] = {}
    monkeypatch.setattr(devices, "will_train_on_gpu", lambda trainer: True)
    monkeypatch.setattr(runner, "build_data", lambda cfg, seed, **kw: seen.update(kw))
    runner._build_data(load_recipe(write_recipe(tmp_path, tiny_recipe(tmp_path))), False, False, [])
    assert seen == {"per_sample": False, "pin_memory": True}

    _write_food101(tmp_path, ["apple_pie", "ramen"], 6)
    cfg = DataConfig(name="food101", root=str(tmp_path), download=False, batch_size=2,
                     eval_batch_size=2, image_size=16, val_fraction=0.2, num_workers=1)
    pinned = build_data(cfg, seed=0, pin_memory=True)
    assert pinned.train.persistent_workers and pinned.train.pin_memory and pinned.test.pin_memory
    assert not build_data(cfg, seed=0).train.pin_memory


def test_effrecipes_makes_no_per_batch_host_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU every `.item()`, `.cpu()`, `.tolist()`, `.numpy()` or `float()` of a device
    tensor makes the host wait for the device. Each such call is charged to the innermost
    effrecipes or Composer frame on the stack: effrecipes' own (callbacks, budget, loader,
    engine) must not grow with the number of batches. Composer's own loop makes such calls on
    every batch (`loss.cpu().item()` for its loss log among them): the spy must see those grow."""
    import sys
    from collections import Counter

    from effrecipes import runner
    from effrecipes.recipe import load_recipe

    package_dirs = {"effrecipes": str(Path(runner.__file__).parent),
                    "composer": str(Path(sys.modules["composer"].__file__).parent)}
    counts: Counter[str] = Counter()

    def owner() -> str:
        frame = sys._getframe(2)
        while frame is not None:
            for name, where in package_dirs.items():
                if frame.f_code.co_filename.startswith(where):
                    return name
            frame = frame.f_back
        return "other"

    for name in ("item", "cpu", "tolist", "numpy", "__float__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, **k: (
            counts.update([owner()]), _real(self, *a, **k))[1])
    seen = {}
    for flops in (2e7, 1e8):  # the tiny recipe: ~7e6 FLOPs per batch; validation once, at the end
        counts.clear()
        recipe = tiny_recipe(tmp_path / str(flops), **{"budget.flops": flops, "eval.every_epochs": "1dur",
                                                       "eval.latency_images": 0})
        metrics = runner.run(load_recipe(write_recipe(tmp_path, recipe, f"r{flops}.yaml")),
                             quiet=True).metrics
        seen[metrics["batches"]] = dict(counts)
    (few, c_few), (many, c_many) = sorted(seen.items())
    assert many >= few + 10, seen
    assert c_many.get("composer", 0) >= c_few.get("composer", 0) + (many - few), seen
    assert c_many.get("effrecipes", 0) == c_few.get("effrecipes", 0), seen


def test_only_rank_zero_times_the_host_once_every_rank_has_tested(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Data-parallel ranks timing the CPU latency or the CPU's matmul peak at once (or testing
    while rank 0 times) would share the cores and skew rank 0's figures, the ones metrics.json
    keeps: all ranks wait for each other, then rank 0 alone measures."""
    from composer.utils import dist

    from effrecipes.runner import host_timings

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    cpu = devices.RunDevice("cpu", "fp32", False, torch.device("cpu"))
    peaks: list[int] = []
    monkeypatch.setattr(devices, "peak_flops", lambda dev, threads: (peaks.append(threads) or 1e9, "m"))
    latency, peak, source = host_timings(model, _loader(), 4, cpu)
    assert latency > 0 and (peak, source) == (1e9, "m") and len(peaks) == 1
    waits: list[str] = []
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: waits.append("barrier"))
    monkeypatch.setattr(dist, "get_global_rank", lambda: 1)
    assert host_timings(model, _loader(), 4, cpu)[:2] == (None, None)
    assert waits == ["barrier"] and len(peaks) == 1  # rank 1 waited, measured nothing
    monkeypatch.setattr(dist, "get_global_rank", lambda: 0)
    assert host_timings(model, _loader(), 4, cpu)[0] > 0 and waits == ["barrier"] * 2
