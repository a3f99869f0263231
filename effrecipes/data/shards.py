"""Validation and test sets split over data-parallel ranks, every rank with the same batch count.

Under `composer -n N` each rank evaluating the whole set does N times the work. Here rank r takes
images r, r+N, r+2N, ... Composer's evaluation loop makes a collective per batch, so every rank
needs the same number of batches: a rank whose share is one image short is padded with one
image whose label is `PAD_LABEL`, which the validation metrics and the test pass
(`effrecipes.evaluate`) ignore. The pad comes first in its shard, so with batches of two or more
it never fills a batch alone. A pad costs a forward pass like any image; `eval_flops` counts
the set's images only (at most N - 1 pads per pass). One process (N = 1) gets the set unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

PAD_LABEL = -100  # the `ignore_index` of torch's cross entropy and of torchmetrics


def shard_positions(n: int, rank: int, world_size: int) -> list[int]:
    """Positions of rank `rank`'s share of `n` items, padded to ceil(n / world_size) with -1
    (a padding slot) first when the share is one short."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    own = list(range(rank, n, world_size))
    size = -(-n // world_size)
    return [-1] * (size - len(own)) + own


def shard_arrays(images: torch.Tensor, labels: torch.Tensor, rank: int, world_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of in-memory images and labels (a new tensor; the inputs themselves for
    one process), pads labelled `PAD_LABEL` with the set's first image."""
    if world_size <= 1:
        return images, labels
    pos = torch.tensor(shard_positions(len(labels), rank, world_size), dtype=torch.int64)
    pad = pos < 0
    take = pos.clamp_min(0)
    out_labels = labels.index_select(0, take).to(torch.int64)
    out_labels[pad] = PAD_LABEL
    return images.index_select(0, take), out_labels


class PaddedShard(Dataset):
    """This rank's share of a map-style dataset of (image, label) pairs, padded as above: for
    DataLoaders over images decoded one at a time (per-sample transforms, image folders)."""

    def __init__(self, dataset: Any, rank: int, world_size: int) -> None:
        self.dataset = dataset
        self.positions = shard_positions(len(dataset), rank, world_size)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        pos = self.positions[index]
        if pos < 0:
            image, _ = self.dataset[0]
            return image, PAD_LABEL
        return self.dataset[pos]


class ShardLoader:
    """A rank's evaluation DataLoader over a `PaddedShard`, passed on as a plain iterable (like
    `BatchLoader`): under several ranks Composer refuses a DataLoader whose sampler is not a
    `DistributedSampler` (its check is meant for training data), and a DistributedSampler would
    pad with duplicates that count in the metrics. `pin_memory` reaches the DataLoader."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.batch_size = loader.batch_size  # Composer's eval microbatch size

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def pin_memory(self) -> bool:
        return self.loader.pin_memory

    @pin_memory.setter
    def pin_memory(self, value: bool) -> None:
        self.loader.pin_memory = value


def eval_share(dataset: Any, make: Callable[[Any], DataLoader]) -> "DataLoader | ShardLoader":
    """`make(dataset)` for one process; under data parallelism `make` over this rank's padded
    share, wrapped in a `ShardLoader`. For the evaluation DataLoaders of the per-sample and
    image-folder paths."""
    from composer.utils import dist  # lazy: Composer (~3 s), unused by --list datasets

    if dist.get_world_size() <= 1:
        return make(dataset)
    return ShardLoader(make(PaddedShard(dataset, dist.get_global_rank(), dist.get_world_size())))


def real_samples(batch: Any) -> int:
    """Images in a batch that are not padding (Composer's count of evaluated samples)."""
    return int((batch[1] != PAD_LABEL).sum())
