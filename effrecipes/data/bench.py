"""Loader throughput on a CIFAR-sized random uint8 array: `python -m effrecipes.data.bench`.

Reports images/s for the fast `BatchLoader` and for the per-sample `DataLoader` path with the
same augmentations, so a regression in either shows up as a number, not a feeling.
"""
from __future__ import annotations

import argparse
import time

import torch

from effrecipes.data.loader import BatchLoader, channel_stats
from effrecipes.data.persample import ArrayImageDataset, build_transform, make_loader


def _rate(loader: object, max_batches: int, batch_size: int) -> float:
    it = iter(loader)  # type: ignore[call-overload]
    next(it)  # warm-up (worker start, first allocations)
    t0, n = time.perf_counter(), 0
    for i, (x, _) in enumerate(it):
        n += len(x)
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--augment", default="random_crop,hflip")
    ap.add_argument("--workers", type=int, default=0, help="per-sample DataLoader workers")
    ap.add_argument("--per-sample-batches", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    augment = [a for a in args.augment.split(",") if a]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.n,), generator=g)
    mean, std = channel_stats(x)
    fast = BatchLoader(x, y, args.batch_size, mean=mean, std=std, shuffle=True, drop_last=True,
                       augment=augment, crop_padding=4, seed=0)
    t0 = time.perf_counter()
    n = sum(len(xb) for xb, _ in fast)
    full = time.perf_counter() - t0
    print(f"BatchLoader  {args.n}x3x32x32 {augment} batch {args.batch_size}: "
          f"{n / full:,.0f} images/s (one full epoch, {full:.2f} s, torch threads "
          f"{torch.get_num_threads()})")

    tf = build_transform(augment, size=32, resize=False, crop_padding=4, mean=mean, std=std)
    slow = make_loader(ArrayImageDataset(x, y, tf), args.batch_size, train=True,
                       num_workers=args.workers, seed=0)
    rate = _rate(slow, args.per_sample_batches, args.batch_size)
    print(f"per-sample   {args.n}x3x32x32 {augment} batch {args.batch_size}, "
          f"{args.workers} workers: {rate:,.0f} images/s ({args.per_sample_batches} batches)")


if __name__ == "__main__":
    main()
