"""The registered datasets: each builder turns a `DataConfig` into decoded uint8 arrays.

A builder returns `RawData` (uint8 N x C x H x W images and int64 labels for the official train
and test sets, plus class names); splitting, subsets, normalisation and loading happen in
`effrecipes.data.build_data`. Files are found under `data.root` (default
`~/.cache/effrecipes/datasets/<name>`), decoded by our own readers (`formats.py`), and fetched
through torchvision / the official URLs only when missing and `data.download` is true.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torchvision.datasets as tvd
import torchvision.datasets.utils as tv_utils

from effrecipes.data import cache
from effrecipes.data.formats import read_cifar_batch, read_cifar_pickle, read_idx, read_npz_array
from effrecipes.errors import DataError, DataMissing
from effrecipes.recipe import DataConfig
from effrecipes.registry import DatasetInfo, datasets


@dataclass
class RawData:
    """A dataset as decoded from disk: official train and test sets, uint8 images."""

    train_x: torch.Tensor  # uint8 N x C x H x W
    train_y: torch.Tensor  # int64 N
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: list[str]


def default_root(name: str) -> Path:
    """Where a dataset lives when `data.root` is not set."""
    return Path.home() / ".cache" / "effrecipes" / "datasets" / name


def resolve_root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_root(cfg.name)


def _check_kwargs(cfg: DataConfig, allowed: set[str]) -> None:
    unknown = sorted(set(cfg.kwargs) - allowed)
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none"
        raise DataError(f"dataset {cfg.name!r} does not take {', '.join(unknown)}; valid: {valid}",
                        field="data.kwargs")


def _fix_hint(what: str) -> str:
    return (f"set data.root to a directory holding {what}, or data.download: true on a machine "
            "with internet")


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _to_raw(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            class_names: list[str], where: str) -> RawData:
    """numpy arrays (N,H,W or N,C,H,W) -> checked uint8/int64 tensors."""
    def images(a: np.ndarray, split: str) -> torch.Tensor:
        a = np.asarray(a)
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4:
            raise DataError(f"{where}: {split} images have shape {a.shape}, expected N x H x W "
                            "or N x C x H x W", field="data.root")
        if a.dtype != np.uint8:
            if a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() > 255)):
                raise DataError(f"{where}: {split} images are {a.dtype}, expected uint8 0..255",
                                field="data.root")
            a = a.astype(np.uint8)
        return torch.from_numpy(np.ascontiguousarray(a))

    def labels(a: np.ndarray, n: int, split: str) -> torch.Tensor:
        a = np.asarray(a).reshape(-1)
        if a.dtype.kind not in "iu" or len(a) != n:
            raise DataError(f"{where}: {split} labels are {a.dtype} x {len(a)}, expected {n} integers",
                            field="data.root")
        return torch.from_numpy(a.astype(np.int64))

    tx, sx = images(train_x, "train"), images(test_x, "test")
    return RawData(tx, labels(train_y, len(tx), "train"), sx, labels(test_y, len(sx), "test"),
                   list(class_names))


def _cached(cfg: DataConfig, root: Path, files: list[Path], decode: Callable[[], RawData]) -> RawData:
    """Decode via `decode()` unless a cache for exactly these files exists; then save one."""
    use_cache = cfg.kwargs.get("cache", True)
    if not isinstance(use_cache, bool):
        raise DataError(f"cache must be true or false, got {use_cache!r}", field="data.kwargs.cache")
    fp = cache.fingerprint(files) if use_cache else []
    if use_cache:
        hit = cache.load(root, cfg.name, fp)
        if hit is not None:
            return RawData(hit["train_x"], hit["train_y"], hit["test_x"], hit["test_y"],
                           list(hit["class_names"]))
    raw = decode()
    if use_cache:
        cache.save(root, cfg.name, fp, {"train_x": raw.train_x, "train_y": raw.train_y,
                                        "test_x": raw.test_x, "test_y": raw.test_y,
                                        "class_names": raw.class_names})
    return raw


# --------------------------------------------------------------------------- IDX datasets

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _idx_variants(base: str) -> list[str]:
    """Accepted spellings: as published, .gz, and the `train-images.idx3-ubyte` variant."""
    dotted = base.replace("-idx", ".idx")
    return [base, base + ".gz", dotted, dotted + ".gz"]


def idx_search_dirs(root: Path, tv_class: str) -> list[Path]:
    """`root` itself, torchvision's `<root>/<Class>/raw`, and `<root>/raw`."""
    return [root, root / tv_class / "raw", root / "raw"]


def find_idx_files(root: Path, tv_class: str) -> Optional[dict[str, Path]]:
    """The four IDX files from the first directory that holds all of them, else None."""
    for d in idx_search_dirs(root, tv_class):
        found: dict[str, Path] = {}
        for key, base in IDX_FILES.items():
            for cand in _idx_variants(base):
                if (d / cand).is_file():
                    found[key] = d / cand
                    break
        if len(found) == len(IDX_FILES):
            return found
    return None


def _torchvision_download(tv_class: str, root: Path, title: str, what: str) -> None:
    """Fetch a dataset with torchvision's own downloader (md5-checked) into `root`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(tvd, tv_class)(str(root), train=True, download=True)
    except Exception as e:  # URLError, RuntimeError (all mirrors failed), OSError...
        raise DataMissing(f"could not download {title} into {root}: {_short(e)}", field="data.root",
                        hint=f"retry with internet, put the files ({what}) into {root} by hand, "
                        "or set data.root to a directory holding them") from None


def _idx_builder(name: str, tv_class: str, title: str,
                 class_names: list[str]) -> Callable[[DataConfig], RawData]:
    def build(cfg: DataConfig) -> RawData:
        _check_kwargs(cfg, {"cache"})
        root = resolve_root(cfg)
        files = find_idx_files(root, tv_class)
        what = ", ".join(f"{b}[.gz]" for b in IDX_FILES.values())
        if files is None and cfg.download:
            _torchvision_download(tv_class, root, title, what)
            files = find_idx_files(root, tv_class)
        if files is None:
            raise DataMissing(f"no {title} files in {root} (looked there and in {tv_class}/raw/ and "
                            f"raw/ for {what})", field="data.root", hint=_fix_hint("them"))

        def decode() -> RawData:
            arrays = {k: read_idx(p) for k, p in files.items()}
            return _to_raw(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                           class_names, str(files["train_x"].parent))

        return _cached(cfg, root, list(files.values()), decode)

    build.__doc__ = f"{title} (IDX files; torchvision download)"
    return build


_DIGITS = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
KMNIST_CLASSES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
_IDX_INFO = DatasetInfo(channels=1, image_size=28, num_classes=10, num_train=60000, num_test=10000)

datasets.add("mnist", _idx_builder("mnist", "MNIST", "MNIST", _DIGITS),
             description="MNIST handwritten digits, 28x28 grey, 10 classes", info=_IDX_INFO)
datasets.add("fashion_mnist", _idx_builder("fashion_mnist", "FashionMNIST", "Fashion-MNIST",
                                           FASHION_CLASSES),
             description="Fashion-MNIST clothing, 28x28 grey, 10 classes", info=_IDX_INFO)
datasets.add("kmnist", _idx_builder("kmnist", "KMNIST", "KMNIST", KMNIST_CLASSES),
             description="Kuzushiji-MNIST cursive Japanese, 28x28 grey, 10 classes", info=_IDX_INFO)


# --------------------------------------------------------------------------- CIFAR

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


def _cifar_dir(root: Path, sub: str, marker: str) -> Optional[Path]:
    """`<root>/<sub>/` or `root` itself when the user pointed straight at it."""
    for d in (root / sub, root):
        if (d / marker).is_file():
            return d
    return None


def _cifar_builder(name: str, tv_class: str, title: str, sub: str, train_files: list[str],
                   label_key: str, meta_file: str, names_key: str,
                   fallback_names: Optional[list[str]]) -> Callable[[DataConfig], RawData]:
    def build(cfg: DataConfig) -> RawData:
        _check_kwargs(cfg, {"cache"})
        root = resolve_root(cfg)
        want = train_files + ["test"] if sub.startswith("cifar-100") else train_files + ["test_batch"]
        what = f"{', '.join(want)}, {meta_file}"
        d = _cifar_dir(root, sub, want[0])
        if d is None and cfg.download:
            _torchvision_download(tv_class, root, title, what)
            d = _cifar_dir(root, sub, want[0])
        if d is None:
            raise DataMissing(f"no {title} files in {root} (looked there and in {sub}/ for {what})",
                            field="data.root", hint=_fix_hint("them"))
        missing = [f for f in want if not (d / f).is_file()]
        if missing:
            raise DataError(f"{title} in {d} is incomplete: missing {', '.join(missing)}",
                            field="data.root", hint="re-download the dataset")
        files = [d / f for f in want] + ([d / meta_file] if (d / meta_file).is_file() else [])

        def decode() -> RawData:
            parts = [read_cifar_batch(d / f, label_key) for f in train_files]
            tx, ty = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            sx, sy = read_cifar_batch(d / want[-1], label_key)
            names = fallback_names
            if (d / meta_file).is_file():
                meta = read_cifar_pickle(d / meta_file)
                names = [str(n) for n in meta.get(names_key, [])] or fallback_names
            if names is None:
                names = [str(i) for i in range(int(max(ty.max(), sy.max())) + 1)]
            return _to_raw(tx, ty, sx, sy, names, str(d))

        return _cached(cfg, root, files, decode)

    build.__doc__ = f"{title} (python pickles; torchvision download)"
    return build


datasets.add("cifar10", _cifar_builder(
    "cifar10", "CIFAR10", "CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
    "labels", "batches.meta", "label_names", CIFAR10_CLASSES),
    description="CIFAR-10, 32x32 RGB, 10 classes",
    info=DatasetInfo(channels=3, image_size=32, num_classes=10, num_train=50000, num_test=10000))
datasets.add("cifar100", _cifar_builder(
    "cifar100", "CIFAR100", "CIFAR-100", "cifar-100-python", ["train"], "fine_labels", "meta",
    "fine_label_names", None),
    description="CIFAR-100 (fine labels), 32x32 RGB, 100 classes",
    info=DatasetInfo(channels=3, image_size=32, num_classes=100, num_train=50000, num_test=10000))


# --------------------------------------------------------------------------- Kuzushiji-49

K49_URL = "http://codh.rois.ac.jp/kmnist/dataset/k49/"
K49_FILES = {"train_x": "k49-train-imgs.npz", "train_y": "k49-train-labels.npz",
             "test_x": "k49-test-imgs.npz", "test_y": "k49-test-labels.npz"}
K49_CLASSMAP = "k49_classmap.csv"


def _k49_class_names(path: Path, n: int) -> list[str]:
    """Characters from k49_classmap.csv (index,codepoint,char) when present, else indices."""
    names = [str(i) for i in range(n)]
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                i = int(row["index"])
                if 0 <= i < n and row.get("char"):
                    names[i] = row["char"]
    except (OSError, KeyError, ValueError):
        pass
    return names


@datasets.register("kuzushiji49", description="Kuzushiji-49 hiragana, 28x28 grey, 49 classes",
                   info=DatasetInfo(channels=1, image_size=28, num_classes=49, num_train=232365,
                                    num_test=38547))
def kuzushiji49(cfg: DataConfig) -> RawData:
    """Kuzushiji-49 (npz files, key arr_0; downloaded from codh.rois.ac.jp)."""
    _check_kwargs(cfg, {"cache"})
    root = resolve_root(cfg)
    missing = [f for f in K49_FILES.values() if not (root / f).is_file()]
    if missing and cfg.download:
        try:
            for f in missing:
                tv_utils.download_url(K49_URL + f, str(root), filename=f)
        except Exception as e:
            raise DataMissing(f"could not download Kuzushiji-49 into {root}: {_short(e)}",
                            field="data.root", hint=f"fetch {', '.join(K49_FILES.values())} from "
                            f"{K49_URL} by hand into data.root, or retry with internet") from None
        if not (root / K49_CLASSMAP).is_file():
            try:
                tv_utils.download_url(K49_URL + K49_CLASSMAP, str(root), filename=K49_CLASSMAP)
            except Exception:
                pass  # class names are cosmetic; indices are used without the map
        missing = [f for f in K49_FILES.values() if not (root / f).is_file()]
    if missing:
        raise DataMissing(f"no Kuzushiji-49 files in {root} (missing {', '.join(missing)})",
                        field="data.root", hint=_fix_hint("them"))
    files = [root / f for f in K49_FILES.values()]

    def decode() -> RawData:
        a = {k: read_npz_array(root / f) for k, f in K49_FILES.items()}
        return _to_raw(a["train_x"], a["train_y"], a["test_x"], a["test_y"],
                       _k49_class_names(root / K49_CLASSMAP, 49), str(root))

    return _cached(cfg, root, files, decode)


# --------------------------------------------------------------------------- digits (offline)

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 1797  # fixed: the test set must not move with the recipe seed


@datasets.register("digits", description="scikit-learn digits, 8x8 grey, 10 classes (offline)",
                   info=DatasetInfo(channels=1, image_size=8, num_classes=10, num_train=1438,
                                    num_test=359))
def digits(cfg: DataConfig) -> RawData:
    """scikit-learn's bundled 8x8 digits; a fixed 20% test split (seed independent of the recipe)."""
    _check_kwargs(cfg, set())
    from sklearn.datasets import load_digits  # lazy: scikit-learn (SciPy) for this dataset only

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(x))
    n_test = int(round(DIGITS_TEST_FRACTION * len(x)))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return _to_raw(x[train], y[train], x[test], y[test], _DIGITS, "sklearn.datasets.load_digits")


# --------------------------------------------------------------------------- synthetic (tests)

SYNTHETIC_DEFAULTS: dict[str, int] = dict(num_train=512, num_test=256, channels=3, image_size=32,
                                          num_classes=10, seed=0)


@datasets.register("synthetic", description="random learnable images for tests (data.kwargs sets "
                   "num_train, num_test, channels, image_size, num_classes, seed)",
                   info=DatasetInfo(channels=3, image_size=32, num_classes=10, num_train=512,
                                    num_test=256))
def synthetic(cfg: DataConfig) -> RawData:
    """Class-dependent smooth patterns plus noise: learnable in a few steps, deterministic per seed.

    Each class has a random 4x4-per-channel prototype, upsampled to the image size; an image is
    128 + 48 * prototype + N(0, 32) noise, clipped to uint8. Channel means differ by class, so
    even a crop/flip-augmented linear model beats chance quickly.
    """
    _check_kwargs(cfg, set(SYNTHETIC_DEFAULTS))
    opts: dict[str, Any] = {**SYNTHETIC_DEFAULTS, **cfg.kwargs}
    for k, v in opts.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "seed" else 1):
            raise DataError(f"synthetic {k} must be a positive integer, got {v!r}",
                            field=f"data.kwargs.{k}")
    if opts["num_classes"] < 2:
        raise DataError("synthetic num_classes must be at least 2", field="data.kwargs.num_classes")
    c, s, k = opts["channels"], opts["image_size"], opts["num_classes"]
    rng = np.random.default_rng(opts["seed"])
    cells = min(4, s)
    protos = rng.normal(size=(k, c, cells, cells))
    reps = -(-s // cells)
    protos = protos.repeat(reps, axis=2).repeat(reps, axis=3)[:, :, :s, :s]

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % k  # balanced, then shuffled
        rng.shuffle(y)
        x = 128.0 + 48.0 * protos[y] + rng.normal(scale=32.0, size=(n, c, s, s))
        return np.rint(x).clip(0, 255).astype(np.uint8), y.astype(np.int64)

    tx, ty = make(opts["num_train"])
    sx, sy = make(opts["num_test"])
    return _to_raw(tx, ty, sx, sy, [f"class_{i}" for i in range(k)], "synthetic")
