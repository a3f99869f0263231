"""Tests for effrecipes.data: real on-disk formats, split, loaders, errors. Offline and fast."""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from effrecipes.data import BatchLoader, build_data, list_datasets, load_raw
from effrecipes.data import cache as data_cache
from effrecipes.data.formats import (read_cifar_pickle, read_idx, write_cifar10, write_cifar100,
                                     write_idx, write_k49)
from effrecipes.data.loader import channel_stats, crop_flip
from effrecipes.data.split import split_indices
from effrecipes.errors import DataError
from effrecipes.recipe import DataConfig
from effrecipes.registry import datasets

FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write dataset caches into the real home directory from tests."""
    monkeypatch.setenv("EFFRECIPES_CACHE_DIR", str(tmp_path / "fallback_cache"))


def _images(n: int, c: int, s: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)


def _labels(n: int, k: int, seed: int = 1) -> np.ndarray:
    return (np.arange(n) % k).astype(np.uint8)[np.random.default_rng(seed).permutation(n)]


def _write_mnist_like(d: Path, n_train: int = 40, n_test: int = 12, gz: bool = False) -> dict:
    suffix = ".gz" if gz else ""
    a = {"tx": _images(n_train, 1, 28)[:, 0], "ty": _labels(n_train, 10),
         "sx": _images(n_test, 1, 28, 2)[:, 0], "sy": _labels(n_test, 10, 3)}
    write_idx(d / f"train-images-idx3-ubyte{suffix}", a["tx"])
    write_idx(d / f"train-labels-idx1-ubyte{suffix}", a["ty"])
    write_idx(d / f"t10k-images-idx3-ubyte{suffix}", a["sx"])
    write_idx(d / f"t10k-labels-idx1-ubyte{suffix}", a["sy"])
    return a


def _cfg(**kw) -> DataConfig:
    kw.setdefault("download", False)
    return DataConfig(**kw)


# --------------------------------------------------------------------------- registry

def test_every_dataset_registered_with_meta() -> None:
    expected = {"mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "kuzushiji49", "digits",
                "synthetic"}
    assert expected <= set(list_datasets())
    for name in expected:
        info = datasets.entry(name).info
        assert info.channels in (1, 3) and info.image_size >= 8 and info.num_classes >= 2, name
        assert info.num_train > 0 and info.num_test > 0, name
        assert datasets.entry(name).description


# --------------------------------------------------------------------------- IDX

def test_idx_written_by_hand_follows_the_spec(tmp_path: Path) -> None:
    """Bytes built from the published spec (not our writer) decode to the same pixels."""
    rng = np.random.default_rng(5)
    tx = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    sx = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    ty, sy = np.array([0, 1, 2, 3, 4, 5, 9], np.uint8), np.array([7, 8, 9], np.uint8)
    for name, arr in (("train-images-idx3-ubyte", tx), ("t10k-images-idx3-ubyte", sx)):
        (tmp_path / name).write_bytes(struct.pack(">IIII", 0x00000803, len(arr), 28, 28) + arr.tobytes())
    for name, arr in (("train-labels-idx1-ubyte", ty), ("t10k-labels-idx1-ubyte", sy)):
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:  # mixed plain and gz on purpose
            f.write(struct.pack(">II", 0x00000801, len(arr)) + arr.tobytes())
    raw = load_raw(_cfg(name="mnist", root=str(tmp_path)))
    assert raw.train_x.shape == (7, 1, 28, 28) and raw.train_x.dtype == torch.uint8
    assert torch.equal(raw.train_x[:, 0], torch.from_numpy(tx))
    assert torch.equal(raw.test_x[:, 0], torch.from_numpy(sx))
    assert raw.train_y.tolist() == ty.tolist() and raw.test_y.dtype == torch.int64
    assert raw.class_names == [str(i) for i in range(10)]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_idx_roundtrip(tmp_path: Path, gz: bool, dtype: type) -> None:
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype) if dtype != np.uint8 else \
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    p = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a)
    assert (p.read_bytes()[:2] == b"\x1f\x8b") == gz
    b = read_idx(p)
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b) and b.flags.writeable


def test_idx_rejects_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">III", 0x00000803, 2, 28) + b"\x00")
    with pytest.raises(DataError, match="truncated IDX header|IDX header says"):
        read_idx(tmp_path / "short")
    (tmp_path / "trunc").write_bytes(struct.pack(">II", 0x00000801, 10) + b"\x00" * 9)
    with pytest.raises(DataError, match="IDX header says"):
        read_idx(tmp_path / "trunc")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_files_directly_under_root(tmp_path: Path, gz: bool) -> None:
    a = _write_mnist_like(tmp_path, gz=gz)
    raw = load_raw(_cfg(name="kmnist", root=str(tmp_path)))
    assert torch.equal(raw.train_x[:, 0], torch.from_numpy(a["tx"]))
    assert raw.test_y.tolist() == a["sy"].tolist()
    assert raw.class_names[0] == "o"


def test_torchvision_raw_layout(tmp_path: Path) -> None:
    a = _write_mnist_like(tmp_path / "FashionMNIST" / "raw", gz=True)
    raw = load_raw(_cfg(name="fashion_mnist", root=str(tmp_path)))
    assert raw.train_x.shape == (40, 1, 28, 28) and raw.test_x.shape == (12, 1, 28, 28)
    assert torch.equal(raw.test_x[:, 0], torch.from_numpy(a["sx"]))
    assert raw.class_names[-1] == "Ankle boot"


@pytest.mark.parametrize("name,title", [("mnist", "MNIST"), ("fashion_mnist", "Fashion-MNIST")])
def test_missing_idx_files_name_the_directory(tmp_path: Path, name: str, title: str) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        build_data(_cfg(name=name, root=str(root)), seed=0)
    msg = str(e.value)
    assert f"no {title} files in {root}" in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert "data.root" in msg and "data.download: true" in msg and "\n" not in msg


def test_download_goes_through_torchvision_into_root(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No network in tests: a stand-in for torchvision.datasets.MNIST writes the raw/ files."""
    import torchvision.datasets as tvd

    calls: list[str] = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append(root)
            _write_mnist_like(Path(root) / "MNIST" / "raw", gz=True)

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    raw = load_raw(_cfg(name="mnist", root=str(tmp_path), download=True))
    assert calls == [str(tmp_path)] and raw.train_x.shape == (40, 1, 28, 28)
    load_raw(_cfg(name="mnist", root=str(tmp_path), download=True))
    assert len(calls) == 1  # files present: no second download


def test_failed_download_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tvu

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error "
                           "[Errno -2] Name or service not known>")

    monkeypatch.setattr(tvd, "KMNIST", offline)
    monkeypatch.setattr(tvu, "download_url", offline)
    with pytest.raises(DataError, match=f"could not download KMNIST into {tmp_path}: Error down"):
        load_raw(_cfg(name="kmnist", root=str(tmp_path), download=True))
    with pytest.raises(DataError, match=f"could not download Kuzushiji-49 into {tmp_path}"):
        load_raw(_cfg(name="kuzushiji49", root=str(tmp_path), download=True))


def test_idx_labels_out_of_range_is_a_data_error(tmp_path: Path) -> None:
    _write_mnist_like(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(12, 11, np.uint8))
    with pytest.raises(DataError, match="labels span"):
        load_raw(_cfg(name="mnist", root=str(tmp_path), kwargs={"cache": False}))


# --------------------------------------------------------------------------- CIFAR

def test_cifar10_pickles(tmp_path: Path) -> None:
    tx, sx = _images(23, 3, 32), _images(9, 3, 32, 4)
    ty, sy = _labels(23, 10), _labels(9, 10, 5)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    d = write_cifar10(tmp_path, tx, ty, sx, sy, names)
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    with open(d / "data_batch_1", "rb") as f:  # the original layout: bytes keys, N x 3072 rows
        batch = pickle.load(f, encoding="bytes")
    assert batch[b"data"].shape[1] == 3072 and isinstance(batch[b"labels"], list)
    raw = load_raw(_cfg(name="cifar10", root=str(tmp_path)))
    assert raw.train_x.shape == (23, 3, 32, 32) and raw.test_x.shape == (9, 3, 32, 32)
    assert torch.equal(raw.train_x, torch.from_numpy(tx))
    assert torch.equal(raw.test_x, torch.from_numpy(sx))
    assert raw.train_y.tolist() == ty.tolist() and raw.class_names == names


def test_cifar100_pickles_fine_labels(tmp_path: Path) -> None:
    tx, sx = _images(30, 3, 32), _images(10, 3, 32, 4)
    ty = (np.arange(30) * 3) % 100
    sy = np.arange(10) * 9
    names = [f"fine_{i}" for i in range(100)]
    write_cifar100(tmp_path, tx, ty, sx, sy, names)
    raw = load_raw(_cfg(name="cifar100", root=str(tmp_path / "cifar-100-python")))  # dir itself works
    assert raw.train_y.tolist() == ty.tolist() and raw.test_y.tolist() == sy.tolist()
    assert torch.equal(raw.test_x, torch.from_numpy(sx)) and len(raw.class_names) == 100
    meta = read_cifar_pickle(tmp_path / "cifar-100-python" / "meta")
    assert meta["fine_label_names"][3] == "fine_3"


def test_cifar_reader_refuses_code_in_pickles(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="not a CIFAR pickle"):
        read_cifar_pickle(p)


def test_missing_cifar_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"no CIFAR-10 files in {tmp_path}"):
        load_raw(_cfg(name="cifar10", root=str(tmp_path)))


# --------------------------------------------------------------------------- K49, digits, synthetic

def test_kuzushiji49_npz(tmp_path: Path) -> None:
    tx, sx = _images(60, 1, 28)[:, 0], _images(20, 1, 28, 3)[:, 0]
    ty, sy = (np.arange(60) % 49).astype(np.uint8), (np.arange(20) * 2 % 49).astype(np.uint8)
    write_k49(tmp_path, tx, ty, sx, sy)
    with np.load(tmp_path / "k49-train-imgs.npz") as z:
        assert z.files == ["arr_0"]
    (tmp_path / "k49_classmap.csv").write_text("index,codepoint,char\n0,U+3042,あ\n1,U+3044,い\n",
                                               encoding="utf-8")
    raw = load_raw(_cfg(name="kuzushiji49", root=str(tmp_path)))
    assert raw.train_x.shape == (60, 1, 28, 28) and torch.equal(raw.test_x[:, 0], torch.from_numpy(sx))
    assert raw.train_y.tolist() == ty.tolist() and len(raw.class_names) == 49
    assert raw.class_names[:3] == ["あ", "い", "2"]
    (tmp_path / "k49-test-labels.npz").unlink()
    with pytest.raises(DataError, match=f"no Kuzushiji-49 files in {tmp_path}.*k49-test-labels.npz"):
        load_raw(_cfg(name="kuzushiji49", root=str(tmp_path), kwargs={"cache": False}))


def test_digits_offline() -> None:
    raw = load_raw(_cfg(name="digits"))
    assert raw.train_x.shape == (1438, 1, 8, 8) and raw.test_x.shape == (359, 1, 8, 8)
    assert raw.train_x.dtype == torch.uint8 and int(raw.train_x.max()) == 255
    assert torch.equal(load_raw(_cfg(name="digits")).test_y, raw.test_y)  # fixed test split
    b0 = build_data(_cfg(name="digits", batch_size=64), 0)
    b1 = build_data(_cfg(name="digits", batch_size=64), 1)
    assert b0.num_test == b1.num_test == 359 and b0.num_train + b0.num_val == 1438
    x, _ = next(iter(b0.test))
    assert x.shape == (359, 1, 8, 8)


def test_synthetic_sizes_determinism_and_learnability() -> None:
    kw = dict(num_train=300, num_test=100, channels=1, image_size=12, num_classes=4, seed=3)
    a, b = load_raw(_cfg(name="synthetic", kwargs=kw)), load_raw(_cfg(name="synthetic", kwargs=kw))
    assert a.train_x.shape == (300, 1, 12, 12) and a.test_x.shape == (100, 1, 12, 12)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, load_raw(_cfg(name="synthetic", kwargs={**kw, "seed": 4})).train_x)
    # nearest class mean beats chance (25%) by far: the data is learnable
    xf, sf = a.train_x.flatten(1).float(), a.test_x.flatten(1).float()
    means = torch.stack([xf[a.train_y == k].mean(0) for k in range(4)])
    acc = (torch.cdist(sf, means).argmin(1) == a.test_y).float().mean().item()
    assert acc > 0.8
    with pytest.raises(DataError, match="does not take"):
        load_raw(_cfg(name="synthetic", kwargs={"num_trian": 5}))


# --------------------------------------------------------------------------- split and subsets

@pytest.mark.parametrize("n,fraction", [(1000, 0.1), (1797, 0.15), (7, 0.3), (50, 0.0)])
def test_split_is_seeded_disjoint_and_sized(n: int, fraction: float) -> None:
    tr, va = split_indices(n, fraction, seed=11)
    tr2, va2 = split_indices(n, fraction, seed=11)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == round(fraction * n) and len(tr) + len(va) == n
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert set(tr.tolist()) | set(va.tolist()) == set(range(n))
    if fraction and n >= 100:
        assert not torch.equal(va, split_indices(n, fraction, seed=12)[1])


def test_build_data_split_and_subsets() -> None:
    cfg = _cfg(name="synthetic", val_fraction=0.2, train_subset=100, test_subset=50, batch_size=32,
               kwargs={"num_train": 400, "num_test": 120})
    b = build_data(cfg, seed=0)
    assert (b.num_train, b.num_val, b.num_test) == (100, 80, 50)
    assert len(b.train) == 100 // 32 and b.val is not None and len(b.val) == 1 and len(b.test) == 1
    assert b.in_channels == 3 and b.image_size == 32 and b.num_classes == 10 and len(b.class_names) == 10
    assert build_data(cfg.model_copy(update={"val_fraction": 0.0}), seed=0).val is None
    with pytest.raises(DataError, match="fewer than one batch"):
        build_data(cfg.model_copy(update={"batch_size": 101}), seed=0)


# --------------------------------------------------------------------------- BatchLoader

def _loader(n: int = 103, bs: int = 10, **kw) -> BatchLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 7
    return BatchLoader(x, y, bs, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), **kw)


def test_batch_loader_shapes_len_and_drop_last() -> None:
    train = _loader(shuffle=True, drop_last=True, augment=("random_crop", "hflip"), seed=1)
    batches = list(train)
    assert len(train) == 10 == len(batches)
    assert all(x.shape == (10, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
               for x, y in batches)
    ev = _loader()
    sizes = [len(y) for _, y in ev]
    assert len(ev) == 11 and sizes[-1] == 3 and sum(sizes) == 103
    assert torch.equal(torch.cat([y for _, y in ev]), torch.arange(103) % 7)  # eval keeps order


def test_batch_loader_epoch_order_is_seeded() -> None:
    a, b = _loader(shuffle=True, drop_last=True, seed=4), _loader(shuffle=True, drop_last=True, seed=4)
    a1, a2 = [y for _, y in a], [y for _, y in a]
    b1 = [y for _, y in b]
    assert not all(torch.equal(u, v) for u, v in zip(a1, a2))  # new order each epoch
    assert all(torch.equal(u, v) for u, v in zip(a1, b1))  # same seed, same order
    b.set_epoch(1)
    assert all(torch.equal(u, v) for u, v in zip(a2, [y for _, y in b]))
    c1 = [y for _, y in _loader(shuffle=True, drop_last=True, seed=5)]
    assert not all(torch.equal(u, v) for u, v in zip(a2, c1))  # seed+1 is not "seed, next epoch"


def test_crop_flip_matches_per_image_reference() -> None:
    """Each output is a window of the zero-padded image at some offset, maybe mirrored."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (64, 2, 9, 9), dtype=torch.uint8, generator=g)
    out = crop_flip(x, 3, True, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    flips = moved = 0
    for i in range(len(x)):
        windows = {(oy, ox): padded[i, :, oy:oy + 9, ox:ox + 9] for oy in range(7) for ox in range(7)}
        hits = [(oy, ox, f) for (oy, ox), w in windows.items() for f in (False, True)
                if torch.equal(out[i], w.flip(-1) if f else w)]
        assert hits, f"image {i} is not a crop of its padded original"
        flips += all(f for _, _, f in hits)
        moved += all((oy, ox) != (3, 3) for oy, ox, _ in hits)
    assert 15 < flips < 49 and moved > 40  # both flip states and many offsets occur


def test_augmentations_change_images_but_not_shapes() -> None:
    plain = _loader(shuffle=True, drop_last=True, seed=2)
    for aug in (("random_crop",), ("hflip",), ("random_crop", "hflip")):
        aug_loader = _loader(shuffle=True, drop_last=True, seed=2, augment=aug, crop_padding=2)
        (x0, y0), (x1, y1) = next(iter(plain)), next(iter(aug_loader))
        plain.set_epoch(0)
        assert torch.equal(y0, y1) and x0.shape == x1.shape
        assert not torch.equal(x0, x1), aug


def test_normalisation_gives_zero_mean_unit_std_on_train() -> None:
    b = build_data(_cfg(name="synthetic", val_fraction=0.1, batch_size=64), seed=0)
    xs = torch.cat([x for x, _ in b.train])
    assert xs.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (xs.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05
    m, s = channel_stats(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
    assert m == (0.5,) and abs(s[0] - 0.5) < 1e-9


# --------------------------------------------------------------------------- per-sample path

def test_per_sample_path_matches_fast_path() -> None:
    from torchvision import transforms as T

    cfg = _cfg(name="synthetic", batch_size=16, eval_batch_size=40, augment=["random_crop", "hflip"],
               val_fraction=0.0, kwargs={"num_train": 80, "num_test": 40})
    fast, slow = build_data(cfg, seed=0), build_data(cfg, seed=0, per_sample=True)
    assert not fast.per_sample and slow.per_sample
    assert isinstance(slow.train.dataset.transform, T.Compose)
    assert any(isinstance(t, T.ToTensor) for t in slow.train.dataset.transform.transforms)
    (xf, yf), (xs, ys) = next(iter(fast.train)), next(iter(slow.train))
    assert xf.shape == xs.shape == (16, 3, 32, 32)
    assert xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert len(fast.train) == len(slow.train) == 5
    # without augmentation both paths produce the same normalised pixels
    (tf, _), (ts, _) = next(iter(fast.test)), next(iter(slow.test))
    assert torch.allclose(tf, ts, atol=1e-5)
    # Composer's helper (used by RandAugment/AugMix) can insert a PIL transform before ToTensor
    from composer.utils import add_vision_dataset_transform
    add_vision_dataset_transform(slow.train.dataset, T.RandomVerticalFlip(), is_tensor_transform=False)
    assert next(iter(slow.train))[0].shape == (16, 3, 32, 32)


def test_autoaugment_and_resize_choose_per_sample() -> None:
    cfg = _cfg(name="digits", batch_size=32, image_size=16, augment=["autoaugment_imagenet"])
    b = build_data(cfg, 0)
    assert b.per_sample and b.image_size == 16
    x, y = next(iter(b.train))
    assert x.shape == (32, 1, 16, 16) and y.shape == (32,)


# --------------------------------------------------------------------------- cache

def test_cache_written_reused_and_invalidated(tmp_path: Path) -> None:
    _write_mnist_like(tmp_path)
    cfg = _cfg(name="mnist", root=str(tmp_path))
    first = load_raw(cfg)
    cache_file = tmp_path / ".effrecipes_cache_mnist.pt"
    assert cache_file.is_file()
    assert torch.equal(load_raw(cfg).train_x, first.train_x)
    new = _write_mnist_like(tmp_path, n_train=30)  # replaced files -> cache is stale
    assert torch.equal(load_raw(cfg).train_x[:, 0], torch.from_numpy(new["tx"]))
    cache_file.write_bytes(b"garbage")  # a corrupt cache is ignored, never an error
    assert load_raw(cfg).train_x.shape[0] == 30


def test_cache_falls_back_when_data_dir_is_not_ours(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "system"
    _write_mnist_like(root)
    monkeypatch.setattr(data_cache, "_system_dir", lambda p: True)
    load_raw(_cfg(name="mnist", root=str(root)))
    assert not (root / ".effrecipes_cache_mnist.pt").exists()
    assert len(list((tmp_path / "fallback_cache").glob("mnist_*.pt"))) == 1


# --------------------------------------------------------------------------- the real thing

@pytest.mark.skipif(not (FASHION_DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"{FASHION_DEBIAN} not installed (Debian package fashion-mnist)")
def test_debian_fashion_mnist() -> None:
    raw = load_raw(_cfg(name="fashion_mnist", root=str(FASHION_DEBIAN)))
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.test_x.shape == (10000, 1, 28, 28)
    assert sorted(torch.bincount(raw.train_y).tolist()) == [6000] * 10
    b = build_data(_cfg(name="fashion_mnist", root=str(FASHION_DEBIAN), val_fraction=0.0), seed=0)
    assert (b.num_train, b.num_test, b.num_classes) == (60000, 10000, 10)


# ---------------------------------------------------------------- image-folder datasets

def _write_food101(root: Path, classes: list[str], per_class: int) -> None:
    """The real Food-101 layout: images/<class>/<id>.jpg and meta/{train,test}.json."""
    import json as _json

    from PIL import Image

    base = root / "food-101"
    meta = {"train": {}, "test": {}}
    rng = np.random.default_rng(0)
    for c in classes:
        (base / "images" / c).mkdir(parents=True)
        for i in range(per_class):
            arr = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(base / "images" / c / f"{i}.jpg")
            meta["train" if i < per_class - 2 else "test"].setdefault(c, []).append(f"{c}/{i}")
    (base / "meta").mkdir()
    for split in ("train", "test"):
        (base / "meta" / f"{split}.json").write_text(_json.dumps(meta[split]))


def test_food101_layout_through_torchvision(tmp_path: Path) -> None:
    _write_food101(tmp_path, ["apple_pie", "ramen", "sushi"], 8)
    cfg = DataConfig(name="food101", root=str(tmp_path), download=False, batch_size=4,
                     eval_batch_size=5, image_size=32, val_fraction=0.2,
                     augment=["random_crop", "hflip", "autoaugment_imagenet"])
    bundle = build_data(cfg, seed=0)
    assert bundle.num_classes == 3 and bundle.num_test == 6 and bundle.per_sample
    assert bundle.num_train + bundle.num_val == 18
    x, y = next(iter(bundle.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert bundle.train.dataset.transform is not None


def test_folder_dataset_missing_names_root(tmp_path: Path) -> None:
    for name in ("food101", "stanford_cars"):
        cfg = DataConfig(name=name, root=str(tmp_path / "none"), download=False)
        with pytest.raises(DataError, match=str(tmp_path / "none")):
            build_data(cfg, seed=0)


def _write_stanford_cars(root: Path, n_classes: int, per_split: int) -> None:
    """torchvision's Stanford Cars layout: devkit/*.mat annotations (scipy), cars_{train,test}/."""
    import scipy.io as sio
    from PIL import Image

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sio.savemat(base / "devkit" / "cars_meta.mat",
                {"class_names": np.array([f"car {i}" for i in range(n_classes)], dtype=object)})
    for split, ann_path in (("train", base / "devkit" / "cars_train_annos.mat"),
                            ("test", base / "cars_test_annos_withlabels.mat")):
        (base / f"cars_{split}").mkdir()
        recs = []
        for i in range(per_split):
            name = f"{i:05d}.jpg"
            Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(base / f"cars_{split}" / name)
            recs.append((1, 1, 39, 29, i % n_classes + 1, name))  # bbox, 1-based class, fname
        dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
                 ("class", "O"), ("fname", "O")]
        sio.savemat(ann_path, {"annotations": np.array(recs, dtype=dtype)})


def test_stanford_cars_layout_through_torchvision(tmp_path: Path) -> None:
    _write_stanford_cars(tmp_path, n_classes=3, per_split=9)
    cfg = DataConfig(name="stanford_cars", root=str(tmp_path), download=False, batch_size=3,
                     eval_batch_size=4, image_size=24, val_fraction=0.0)
    bundle = build_data(cfg, seed=0)
    assert bundle.num_classes == 3 and bundle.num_train == 9 and bundle.num_test == 9
    x, y = next(iter(bundle.test))
    assert x.shape == (4, 3, 24, 24) and set(y.tolist()) <= {0, 1, 2}
