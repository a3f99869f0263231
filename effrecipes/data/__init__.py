"""Datasets and loaders: `build_data(cfg, seed)` turns a recipe's `data:` section into loaders.

Importing this package registers every dataset in `effrecipes.registry.datasets` (see
`sources.py`). Pipeline: decode (cached) uint8 arrays -> seeded train/val split -> subsets ->
per-channel mean/std -> loaders.

Normalisation uses the exact per-channel mean/std of the training split actually used (after the
val split and `train_subset`; computed from a histogram in well under a second), so every dataset,
including synthetic ones, is normalised without a table of constants and validation data never
leaks into the statistics. Val and test are normalised with the same train statistics.

Two loader paths:
- fast (default): `BatchLoader`, whole-batch tensor ops for random_crop/hflip;
- per-sample: `VisionDataset` + `DataLoader` with PIL transforms, chosen when `per_sample=True`,
  when `autoaugment_imagenet` is requested, or when `data.image_size` differs from the native
  size. Use it for Composer algorithms that edit `dataloader.dataset.transform`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional

import torch
from torch.utils.data import DataLoader

from effrecipes.data import folders, sources  # noqa: F401  (register the datasets)
from effrecipes.data.loader import BatchLoader, channel_stats
from effrecipes.data.persample import ArrayImageDataset, build_transform, make_loader
from effrecipes.data.shards import ShardLoader, shard_arrays
from effrecipes.data.sources import RawData
from effrecipes.data.split import split_indices
from effrecipes.errors import DataError
from effrecipes.recipe import DataConfig
from effrecipes.registry import datasets

__all__ = ["DataBundle", "BatchLoader", "RawData", "build_data", "load_raw", "list_datasets",
           "needs_per_sample", "stand_in_data"]


@dataclass
class DataBundle:
    """Loaders plus what a model and a report need to know about the data."""

    train: Iterable  # (x float32 N,C,H,W, y int64 N); len = batches per epoch (drop_last)
    val: Optional[Iterable]  # None when there is no validation split
    test: Iterable
    num_classes: int
    in_channels: int
    image_size: int
    num_train: int
    num_val: int
    num_test: int
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    per_sample: bool = False  # which loader path was chosen

    def to(self, device: "torch.device | str") -> "DataBundle":
        """Put the data where the model trains: in-memory `BatchLoader`s move their uint8 cache to
        `device` once (every batch is then made there, no per-batch host->device copy); a
        per-sample `DataLoader` (disk datasets, PIL transforms) pins its batches' memory when
        `device` is a GPU, so the trainer's `non_blocking=True` copies overlap compute."""
        dev = torch.device(device)
        for loader in (self.train, self.val, self.test):
            if isinstance(loader, BatchLoader):
                loader.to(dev)
            elif isinstance(loader, (DataLoader, ShardLoader)):
                loader.pin_memory = dev.type == "cuda"
        return self


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of registered datasets matching a glob pattern."""
    return datasets.names(pattern)


def load_raw(cfg: DataConfig) -> RawData:
    """The decoded official train/test arrays of `cfg.name` (no split, no subsets)."""
    raw = datasets.get(cfg.name, field_path="data.name")(cfg)
    num_classes = len(raw.class_names)
    for split, y in (("train", raw.train_y), ("test", raw.test_y)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{cfg.name} {split} labels span {int(y.min())}..{int(y.max())} but there "
                            f"are {num_classes} classes", field="data.root",
                            hint="the files are corrupt or from another dataset")
    if raw.train_x.shape[1:] != raw.test_x.shape[1:]:
        raise DataError(f"{cfg.name}: train images {tuple(raw.train_x.shape[1:])} and test images "
                        f"{tuple(raw.test_x.shape[1:])} differ in shape", field="data.root")
    return raw


def needs_per_sample(cfg: DataConfig, native_size: int) -> bool:
    """True when the recipe needs per-image PIL transforms (AutoAugment or resizing)."""
    return "autoaugment_imagenet" in cfg.augment or (
        cfg.image_size is not None and cfg.image_size != native_size)


def build_data(cfg: DataConfig, seed: int, *, per_sample: bool = False,
               pin_memory: bool = False) -> DataBundle:
    """Build train/val/test loaders for a recipe's data section; deterministic for a seed.

    `pin_memory`: the run will train on a GPU. Image-folder loaders keep their worker processes
    (and the first iterator, pin flag included) for the whole run, so they must pin from the start:
    the run draws a sample batch before its device is resolved and `DataBundle.to` comes too late."""
    if datasets.entry(cfg.name, field_path="data.name").info.folder:
        return _build_folder_data(cfg, seed, pin_memory)
    raw = load_raw(cfg)
    _, channels, height, width = raw.train_x.shape
    if height != width:
        raise DataError(f"{cfg.name}: images are {height}x{width}; only square images are supported",
                        field="data.name")
    train, val, test = _split(raw, cfg, seed)
    mean, std = channel_stats(train[0])
    size = cfg.image_size or height
    use_per_sample = per_sample or needs_per_sample(cfg, height)
    if use_per_sample:
        loaders = _per_sample_loaders(cfg, seed, train, val, test, size=size, resize=size != height,
                                      mean=mean, std=std)
    else:
        loaders = _batch_loaders(cfg, seed, train, val, test, mean=mean, std=std)
    train_loader, val_loader, test_loader = loaders
    return DataBundle(train_loader, val_loader, test_loader, num_classes=len(raw.class_names), in_channels=int(channels),
                      image_size=int(size), num_train=len(train[0]), num_val=len(val[0]),
                      num_test=len(test[0]), class_names=list(raw.class_names), mean=mean, std=std,
                      per_sample=use_per_sample)


_Arrays = tuple[torch.Tensor, torch.Tensor]  # images (uint8 N,C,H,W), labels (int64 N)


def _split(raw: RawData, cfg: DataConfig, seed: int) -> tuple[_Arrays, _Arrays, _Arrays]:
    """(train, val, test) arrays: the seeded validation split of the official training set, then
    the subsets; at least one full training batch must be left (train batches drop the rest)."""
    train_idx, val_idx = split_indices(len(raw.train_x), cfg.val_fraction, seed)
    if cfg.train_subset is not None:
        train_idx = train_idx[:cfg.train_subset]
    if len(train_idx) == 0:
        raise DataError(f"{cfg.name}: no training images left after the split",
                        field="data.val_fraction")
    train_x, train_y = raw.train_x[train_idx], raw.train_y[train_idx]
    val_x, val_y = raw.train_x[val_idx], raw.train_y[val_idx]
    test_x, test_y = raw.test_x, raw.test_y
    if cfg.test_subset is not None:
        test_x, test_y = test_x[:cfg.test_subset], test_y[:cfg.test_subset]
    if len(train_x) < cfg.batch_size:
        raise DataError(f"{len(train_x)} training images are fewer than one batch of "
                        f"{cfg.batch_size} (train batches drop the last partial batch)",
                        field="data.batch_size", hint="lower data.batch_size or use more data")
    return (train_x, train_y), (val_x, val_y), (test_x, test_y)


def _per_sample_loaders(cfg: DataConfig, seed: int, train: _Arrays, val: _Arrays, test: _Arrays, *,
                        size: int, resize: bool, mean: tuple[float, ...], std: tuple[float, ...]
                        ) -> tuple[Iterable, Optional[Iterable], Iterable]:
    """DataLoaders with per-image PIL transforms (AutoAugment, resizing; what Composer algorithms
    that edit `dataset.transform` need); evaluation images are only resized and normalised."""
    common: dict[str, Any] = dict(size=size, resize=resize, crop_padding=cfg.crop_padding,
                                  mean=mean, std=std)

    def ev(arrays: _Arrays) -> Iterable:
        ds = ArrayImageDataset(*arrays, build_transform([], **common))
        return make_loader(ds, cfg.eval_batch_size, train=False, num_workers=cfg.num_workers,
                           seed=seed)

    train_tf = build_transform(cfg.augment, **common)
    train_loader = make_loader(ArrayImageDataset(*train, train_tf), cfg.batch_size, train=True,
                               num_workers=cfg.num_workers, seed=seed)
    return train_loader, (ev(val) if len(val[0]) > 0 else None), ev(test)


def _batch_loaders(cfg: DataConfig, seed: int, train: _Arrays, val: _Arrays, test: _Arrays, *,
                   mean: tuple[float, ...], std: tuple[float, ...]
                   ) -> tuple[Iterable, Optional[Iterable], Iterable]:
    """The fast path: whole-batch `BatchLoader`s, each holding this rank's share (all of it for
    one process)."""
    from composer.utils import dist  # lazy: Composer (~3 s), unused by --list datasets

    rank, world = dist.get_global_rank(), dist.get_world_size()
    train_loader = BatchLoader(*train, cfg.batch_size, mean=mean, std=std, shuffle=True,
                               drop_last=True, augment=cfg.augment, crop_padding=cfg.crop_padding,
                               seed=seed, rank=rank, world_size=world)

    def ev(arrays: _Arrays) -> BatchLoader:  # each rank evaluates its own (padded) share
        return BatchLoader(*shard_arrays(*arrays, rank, world), cfg.eval_batch_size, mean=mean, std=std)

    return train_loader, (ev(val) if len(val[0]) > 0 else None), ev(test)


class StandInLoader:
    """`len()` batches per epoch of random normalised images of one shape (planning only)."""

    def __init__(self, batches: int, batch_size: int, shape: tuple[int, int, int], num_classes: int,
                 seed: int) -> None:
        self.batches, self.batch_size, self.shape = batches, batch_size, shape
        self.num_classes, self.seed = num_classes, seed

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.batches):
            yield (torch.randn((self.batch_size, *self.shape), generator=g),
                   torch.randint(0, self.num_classes, (self.batch_size,), generator=g))


def stand_in_data(cfg: DataConfig, seed: int) -> Optional[DataBundle]:
    """Loaders of the registered shape and size for data that is not on disk yet, so that
    `--dry-run` plans exactly what the real data would (the plan depends on shapes, the batch
    size and the number of images, never on pixel values). None when the registry does not know
    the dataset's shape and size (synthetic, image folders)."""
    info = datasets.entry(cfg.name, field_path="data.name").info
    if info is None or info.folder:
        return None
    train_idx, val_idx = split_indices(info.num_train, cfg.val_fraction, seed)
    n_train = min(len(train_idx), cfg.train_subset or len(train_idx))
    n_test = min(info.num_test, cfg.test_subset or info.num_test)
    size = cfg.image_size or info.image_size
    shape = (info.channels, size, size)
    if n_train < cfg.batch_size:
        return None

    def loader(n: int, batch: int, drop_last: bool) -> StandInLoader:
        return StandInLoader(n // batch if drop_last else -(-n // batch), batch, shape,
                             info.num_classes, seed)

    return DataBundle(train=loader(n_train, cfg.batch_size, True),
                      val=loader(len(val_idx), cfg.eval_batch_size, False) if len(val_idx) else None,
                      test=loader(n_test, cfg.eval_batch_size, False), num_classes=info.num_classes,
                      in_channels=info.channels, image_size=size, num_train=n_train,
                      num_val=len(val_idx), num_test=n_test,
                      per_sample=needs_per_sample(cfg, info.image_size))


def _build_folder_data(cfg: DataConfig, seed: int, pin_memory: bool = False) -> DataBundle:
    """Image-folder datasets (photos on disk): per-sample decoding with worker processes."""
    data = datasets.get(cfg.name)(cfg)
    train_idx, val_idx, test_idx = folders.split_folder(data, cfg.val_fraction, seed,
                                                        cfg.train_subset, cfg.test_subset)
    if len(train_idx) < cfg.batch_size:
        raise DataError(f"{len(train_idx)} training images are fewer than one batch of "
                        f"{cfg.batch_size}", field="data.batch_size", hint="lower data.batch_size")
    size = cfg.image_size or folders.DEFAULT_SIZE
    train_tf = folders.folder_transform(cfg.augment, size, train=True)
    eval_tf = folders.folder_transform([], size, train=False)

    def make(base: Any, idx: list[int], tf: Any, train: bool) -> Iterable:
        ds = folders.TransformedSubset(base, idx, tf)
        return folders.loader(ds, cfg.batch_size if train else cfg.eval_batch_size, train,
                              cfg.num_workers, seed, pin_memory=pin_memory)

    return DataBundle(train=make(data.train, train_idx, train_tf, True),
                      val=make(data.train, val_idx, eval_tf, False) if val_idx else None,
                      test=make(data.test, test_idx, eval_tf, False),
                      num_classes=len(data.class_names), in_channels=data.channels,
                      image_size=size, num_train=len(train_idx), num_val=len(val_idx),
                      num_test=len(test_idx), class_names=data.class_names,
                      mean=folders.IMAGENET_MEAN, std=folders.IMAGENET_STD, per_sample=True)
