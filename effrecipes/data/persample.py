"""Per-sample path: a torchvision `VisionDataset` over the uint8 arrays plus a torch `DataLoader`.

Slower than `BatchLoader`, but needed when transforms only exist per PIL image (AutoAugment,
Resize) and when Composer algorithms such as RandAugment/AugMix must insert their transform into
`dataloader.dataset.transform` (they require a `DataLoader` over a `VisionDataset` whose transform
is a `Compose` containing `ToTensor`). Padding for RandomCrop is black (0), as in `BatchLoader`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import VisionDataset

from effrecipes.data.shards import ShardLoader, eval_share
from effrecipes.errors import DataError


class ArrayImageDataset(VisionDataset):
    """uint8 N x C x H x W images (C = 1 or 3) served as PIL images through `transform`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 transform: Optional[Callable[[Any], Any]] = None) -> None:
        super().__init__(root="", transform=transform)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"the per-sample path needs uint8 images with 1 or 3 channels, got "
                            f"{tuple(images.shape)} {images.dtype}", field="data.augment",
                            hint="drop autoaugment_imagenet / data.image_size for this dataset")
        hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        self._pixels: np.ndarray = hwc[..., 0] if hwc.shape[-1] == 1 else hwc  # PIL 'L' or 'RGB'
        self._labels: np.ndarray = labels.to(torch.int64).numpy()

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self._pixels[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self._labels[index])


def build_transform(augment: Sequence[str], *, size: int, resize: bool, crop_padding: int,
                    mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Resize (if asked), the augmentations in recipe order, then ToTensor and Normalize."""
    ops: list[Any] = [T.Resize((size, size), antialias=True)] if resize else []
    for name in augment:
        if name == "random_crop":
            ops.append(T.RandomCrop(size, padding=crop_padding, fill=0))
        elif name == "hflip":
            ops.append(T.RandomHorizontalFlip())
        elif name == "autoaugment_imagenet":
            ops.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
        else:
            raise DataError(f"unknown augmentation {name!r}", field="data.augment")
    ops += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    return T.Compose(ops)


def make_loader(dataset: ArrayImageDataset, batch_size: int, *, train: bool, num_workers: int,
                seed: int) -> "DataLoader | ShardLoader":
    """Shuffled, drop_last loader for training; ordered, keep-last for evaluation (under
    data parallelism each rank its share: training drops the remainder, evaluation pads, see
    `effrecipes.data.shards`). The generator
    seeds the shuffle and the workers' base seeds, so runs repeat for a seed. Memory is pinned
    only when the run trains on a GPU (`DataBundle.to`)."""
    from composer.utils import dist  # lazy: Composer (~3 s), unused by --list datasets

    if train and dist.get_world_size() > 1:  # data-parallel: each rank its share of the data
        sampler = dist.get_sampler(dataset, shuffle=True, drop_last=True, seed=int(seed))
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                          num_workers=num_workers, pin_memory=False)

    def make(ds: Any) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=num_workers, generator=torch.Generator().manual_seed(int(seed)),
                          pin_memory=False)

    return make(dataset) if train else eval_share(dataset, make)  # each rank its share
