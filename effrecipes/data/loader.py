"""Fast in-memory batch loader for small image datasets (the default training path).

Datasets here fit in memory as uint8, so a torch `DataLoader` with per-image PIL transforms wastes
most of a small model's step time. `BatchLoader` instead slices whole batches out of one uint8
tensor and augments them with a handful of tensor ops: random crop (zero padding) and horizontal
flip become a single `gather` with per-image row/column indices, done on uint8 before the float
conversion, so the cost per batch is a few memory passes regardless of batch size.

The uint8 cache lives on the training device (`BatchLoader.to(device)`, done by the runner): on a
GPU every batch is sliced, augmented and normalised there, with no per-batch host->device copy
(the epoch's permutation is drawn on the host, so every rank and device draws the same order, and
copied once per epoch; per-batch random numbers come from a generator on the device). On the
CPU the same code runs with a CPU generator.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

FAST_AUGMENTS = ("random_crop", "hflip")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std (in [0, 1] units) of uint8 N x C x H x W images.

    Uses a 256-bin histogram per channel, so it needs no float copy of the data and is exact.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError("channel_stats expects uint8 N x C x H x W")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum().clamp_min(1.0)
        mean = float((hist * values).sum() / total)
        var = float((hist * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(var ** 0.5, 1e-3))  # a constant channel must not divide by zero
    return tuple(means), tuple(stds)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence): nearby inputs, unrelated seeds."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed per (seed, epoch); mixed so run `seed+1` does not replay run `seed` shifted
    by one epoch, as plain `seed + epoch` would."""
    return mix_seed(seed, epoch)


def crop_flip(images: torch.Tensor, padding: int, flip: bool,
              generator: torch.Generator) -> torch.Tensor:
    """Random crop of each image from its zero-padded version, and/or a random horizontal flip
    (p=0.5), as one gather: per-image row and column index maps into the padded images."""
    n, c, h, w = images.shape
    p = int(padding)
    dev = images.device  # every tensor is made where the images are: no host->device copy
    if p > 0:
        src = images.new_zeros((n, c, h + 2 * p, w + 2 * p))
        src[:, :, p:p + h, p:p + w] = images
        oy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=dev)
        ox = torch.randint(0, 2 * p + 1, (n, 1), generator=generator, device=dev)
    else:
        src = images
        oy = ox = torch.zeros((n, 1), dtype=torch.int64, device=dev)
    rows = oy + torch.arange(h, device=dev)  # n x h
    cols = ox + torch.arange(w, device=dev)  # n x w
    if flip:
        flipped = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    lin = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).reshape(n, 1, h * w)
    return src.reshape(n, c, -1).gather(2, lin.expand(n, c, h * w)).reshape(n, c, h, w)


class BatchLoader:
    """Iterable of (float32 N x C x H x W normalised images, int64 labels) batches.

    Each `iter()` is one epoch: a permutation from a generator seeded by (seed, epoch), so the order
    differs between epochs and repeats exactly for the same seed; the epoch counter advances per
    iteration (Composer re-iterates once per epoch, also when spinning forward on resumption) and
    `set_epoch` can set it. `len()` is the number of batches per epoch.

    The cache (images, labels) and every batch live on `device` (default: where `images` are);
    `to(device)` moves the cache once.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 mean: Sequence[float], std: Sequence[float], shuffle: bool = False,
                 drop_last: bool = False, augment: Sequence[str] = (), crop_padding: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: "torch.device | str | None" = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("BatchLoader expects uint8 N x C x H x W images")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        unknown = [a for a in augment if a not in FAST_AUGMENTS]
        if unknown:
            raise ValueError(f"BatchLoader cannot apply {unknown}; use the per-sample path")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std need {c} values")
        self.images, self.labels = images.contiguous(), labels.to(torch.int64)
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.augment, self.crop_padding, self.seed = tuple(augment), int(crop_padding), int(seed)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        # x_norm = (x / 255 - mean) / std  ==  x * scale - shift
        std_t = torch.tensor(self.std, dtype=torch.float32).view(1, c, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = torch.tensor(self.mean, dtype=torch.float32).view(1, c, 1, 1) / std_t
        self.device = torch.device("cpu")
        self.to(images.device if device is None else device)
        # Data-parallel training (Composer's launcher): every rank draws the same epoch permutation
        # and takes its own interleaved share of it, so ranks never see the same image in an epoch.
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        # A trainer callback may pin the epoch to the trainer's clock (resume replays exactly).
        self.auto_advance = True

    def to(self, device: "torch.device | str") -> "BatchLoader":
        """Move the uint8 cache (and the normalisation constants) to `device`, once; batches are
        made there from then on. Returns self."""
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.images, self.labels = self.images.to(dev), self.labels.to(dev)
        self._scale, self._shift = self._scale.to(dev), self._shift.to(dev)
        self.device = dev
        return self

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def _shard_size(self) -> int:
        return len(self.images) // self.world_size if self.world_size > 1 else len(self.images)

    def __len__(self) -> int:
        n, b = self._shard_size(), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next `iter()` produces (for resuming)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        if self.auto_advance:
            self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = epoch_seed(self.seed, epoch)
        g = torch.Generator().manual_seed(seed)  # the order: on the host, identical on every rank
        n = self._shard_size()
        order = torch.randperm(len(self.images), generator=g) if self.shuffle else None
        if self.world_size > 1:
            full = order if order is not None else torch.arange(len(self.images))
            order = full[self.rank::self.world_size][:n]
        if order is not None:
            order = order.to(self.device)  # once per epoch (a no-op on the CPU)
        # crops and flips: a generator on the cache's device (on the CPU the same one; "meta",
        # the shape-only device tests use as a stand-in accelerator, has none and takes it too).
        # Data-parallel ranks share the order but not the draws: each rank its own crops and flips
        host = self.device.type in ("cpu", "meta")
        if self.world_size > 1:
            g_aug = torch.Generator("cpu" if host else self.device).manual_seed(mix_seed(seed, self.rank))
        else:
            g_aug = g if host else torch.Generator(self.device).manual_seed(seed)
        crop = "random_crop" in self.augment and self.crop_padding > 0
        flip = "hflip" in self.augment
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = self.images[lo:hi], self.labels[lo:hi]
            else:
                idx = order[lo:hi]
                x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            if crop or flip:
                x = crop_flip(x, self.crop_padding if crop else 0, flip, g_aug)
            xf = x.to(torch.float32).mul_(self._scale).sub_(self._shift)
            yield xf, y
