"""Large image datasets kept on disk (Stanford Cars, Food-101), read through torchvision.

They do not fit the in-memory uint8 path: images are decoded per sample by a `DataLoader` with
worker processes, resized to `data.image_size` (default 224) and augmented with PIL transforms
(e.g. AutoAugment's ImageNet policy, as paper 000 does). Each split is a `VisionDataset` with its
own `transform`, so Composer's RandAugment/AugMix can insert themselves into it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torchvision
import torchvision.transforms as T
from torch.utils.data import Dataset
from torchvision.datasets import VisionDataset

from effrecipes.data.shards import ShardLoader, eval_share
from effrecipes.data.split import split_indices
from effrecipes.errors import DataError, DataMissing
from effrecipes.recipe import DataConfig
from effrecipes.registry import DatasetInfo, datasets

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # photos: the usual ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


@dataclass
class FolderData:
    """Train and test splits as datasets of (PIL image, class index)."""

    train: Dataset
    test: Dataset
    class_names: list[str]
    channels: int = 3


class TransformedSubset(VisionDataset):
    """Indices of a base dataset served through this split's own `transform`."""

    def __init__(self, base: Dataset, indices: Sequence[int],
                 transform: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__(root="", transform=transform)
        self.base, self.indices = base, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img, label = self.base[self.indices[i]]
        if self.transform is not None:
            img = self.transform(img.convert("RGB") if hasattr(img, "convert") else img)
        return img, int(label)


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else (
        Path.home() / ".cache" / "effrecipes" / "datasets" / cfg.name)


def _open(cls: Any, cfg: DataConfig, title: str, layout: str, download_ok: bool) -> FolderData:
    root = _root(cfg)
    try:
        train = cls(str(root), split="train", download=cfg.download and download_ok)
        test = cls(str(root), split="test", download=False)
    except (RuntimeError, ValueError, OSError) as e:
        how = ("set data.root to a directory holding it, or data.download: true on a machine with "
               "internet" if download_ok else "it can no longer be downloaded automatically; "
               "place the files there by hand and set data.root")
        raise DataMissing(f"{title} not found in {root} (expected {layout}; {str(e).splitlines()[0]})",
                        field="data.root", hint=how) from None
    return FolderData(train, test, list(train.classes))


@datasets.register("food101", description="Food-101 (101 classes, photos; torchvision)",
                   info=DatasetInfo(channels=3, image_size=DEFAULT_SIZE, num_classes=101,
                                    num_train=75750, num_test=25250, folder=True))
def food101(cfg: DataConfig) -> FolderData:
    return _open(torchvision.datasets.Food101, cfg, "Food-101",
                 "food-101/images/<class>/*.jpg and food-101/meta/{train,test}.json", True)


@datasets.register("stanford_cars", description="Stanford Cars (196 classes, photos; torchvision)",
                   info=DatasetInfo(channels=3, image_size=DEFAULT_SIZE, num_classes=196,
                                    num_train=8144, num_test=8041, folder=True))
def stanford_cars(cfg: DataConfig) -> FolderData:
    return _open(torchvision.datasets.StanfordCars, cfg, "Stanford Cars",
                 "stanford_cars/{cars_train,cars_test,devkit}/ and cars_test_annos_withlabels.mat",
                 False)


def split_folder(data: FolderData, val_fraction: float, seed: int,
                 train_subset: Optional[int], test_subset: Optional[int]) -> tuple[list[int], list[int], list[int]]:
    train_idx, val_idx = split_indices(len(data.train), val_fraction, seed)
    train = train_idx.tolist()[:train_subset] if train_subset else train_idx.tolist()
    test = list(range(len(data.test)))[:test_subset] if test_subset else list(range(len(data.test)))
    return train, val_idx.tolist(), test


def folder_transform(augment: Sequence[str], size: int, train: bool) -> Any:
    ops: list[Any] = [T.Resize((size, size), antialias=True)]
    if train:
        for name in augment:
            if name == "random_crop":
                ops.append(T.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True))
            elif name == "hflip":
                ops.append(T.RandomHorizontalFlip())
            elif name == "autoaugment_imagenet":
                ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    ops += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(ops)


def loader(ds: Dataset, batch_size: int, train: bool, workers: int, seed: int, *,
           pin_memory: bool = False) -> "torch.utils.data.DataLoader | ShardLoader":
    from composer.utils import dist  # lazy: Composer (~3 s), unused by --list datasets

    if train and dist.get_world_size() > 1:  # data-parallel: each rank its share of the data
        sampler = dist.get_sampler(ds, shuffle=True, drop_last=True, seed=int(seed))
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler,
                                           drop_last=True, num_workers=workers,
                                           persistent_workers=workers > 0, pin_memory=pin_memory)

    def make(d: Any) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(d, batch_size=batch_size, shuffle=train, drop_last=train,
                                           num_workers=workers, persistent_workers=workers > 0,
                                           generator=torch.Generator().manual_seed(int(seed)),
                                           pin_memory=pin_memory)

    return make(ds) if train else eval_share(ds, make)  # each rank its share
