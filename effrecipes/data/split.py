"""Seeded train/validation split.

The split depends only on (n, fraction, seed), through its own torch generator, so it is the same
on every machine and does not disturb (or depend on) the global RNG that seeds model init.
"""
from __future__ import annotations

import torch

from effrecipes.errors import DataError

_SPLIT_SALT = 0x5EED_5B17  # keeps the split stream apart from other uses of the recipe seed


def val_size(n: int, fraction: float) -> int:
    """Number of validation images: `round(fraction * n)` (Python rounding)."""
    return int(round(fraction * n))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): a seeded permutation of range(n), disjoint, covering all.

    Train indices are kept in ascending order so `train_subset` ("the first N") and the stored
    order of the dataset stay meaningful; val indices are ascending too.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}", field="data.val_fraction")
    n_val = val_size(n, val_fraction)
    if n_val == 0:
        return torch.arange(n, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    if n_val >= n:
        raise DataError(f"val_fraction {val_fraction} of {n} images leaves no training images",
                        field="data.val_fraction", hint="use a smaller fraction")
    g = torch.Generator().manual_seed(_SPLIT_SALT + int(seed))
    perm = torch.randperm(n, generator=g)
    val, train = perm[:n_val], perm[n_val:]
    return train.sort().values, val.sort().values
