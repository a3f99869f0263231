"""Screening loop for <= 10K-parameter Fashion-MNIST networks at a FLOP cap (docs/results.md §4).

Composer's runs cost ~3 minutes each here; ideas that need new model code are cheaper to screen
with a plain loop first, and only the ones that pay go into `gap_custom` and a real matrix. The
loop is `benchmarks/hand_loop.py`'s, with the <= 10K recipe's data (same split and batches) and
training (SGD + Nesterov, one-cycle peak lr 0.2, 30% warm-up, weight decay 1e-4, label smoothing
0.1, batch 64) but **no BlurPool**, so its numbers compare with each other, not with the matrices'.

A network is a layer string: the `gap_custom` tokens (`c16` 3x3 conv block, `dw32` depthwise-
separable block, `m` 2x2 max-pool) plus three only screened here: `rdw32` a residual
depthwise-separable block, `mdw32` one with ReLU + BatchNorm between its depthwise and pointwise
convs, a leading `silu ` (SiLU for every ReLU) or `bnfirst ` (BatchNorm before ReLU). `|gd` ends
it with learned pooling (gap_custom's `pool: depthwise`) instead of global average pooling.
Runs are appended to one JSON file, one process per run (two side by side on these 2 cores):

    python benchmarks/screen_10k.py "c16 m dw32 m dw56 dw48 |gd" --seed 0 --lr 0.2

`--stem whiten` sets a 1-channel 3x3 stem's 16 filters before training to the top 8 eigenvectors
of the covariance of 5,000 training images' 3x3 patches (zero-padded border patches included, as
the conv sees them), scaled by 1/sqrt(eigenvalue + 5e-4), with both signs; `whiten_frozen` also
stops the stem's weight gradient, so the cap buys more steps (round 27). The covariance is not
charged here (6.4e8 FLOPs, 0.06% of 1e12); effrecipes' `whiten_stem` charges it and uses only the
patches inside the image.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, loadavg, machine  # noqa: E402
from hand_loop import accuracy, append_run, train_steps  # noqa: E402

from effrecipes.budget import train_step_flops  # noqa: E402
from effrecipes.data import build_data  # noqa: E402
from effrecipes.models.gap_cnn import LearnedPool, final_size  # noqa: E402
from effrecipes.recipe import load_recipe  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion_mnist_10k.yaml"
OUT = RESULTS / "screen-10k-2026-11-30.json"


class Residual(nn.Module):
    def __init__(self, *body: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Screened(nn.Module):
    def __init__(self, features: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.features, self.head = nn.Sequential(*features), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten(1)


def build(layers: str, in_channels: int = 1, size: int = 28, num_classes: int = 10) -> nn.Module:
    """The network a layer string describes (module docstring), built in layer order."""
    act: Callable[[], nn.Module] = nn.ReLU
    bn_first = False
    for prefix, change in (("silu ", "silu"), ("bnfirst ", "bnfirst")):
        if layers.startswith(prefix):
            layers = layers[len(prefix):]
            act, bn_first = (nn.SiLU, False) if change == "silu" else (nn.ReLU, True)
    body, _, head = layers.partition("|")

    def post(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c), act()] if bn_first else [act(), nn.BatchNorm2d(c)]

    def sep(cin: int, cout: int, mid: bool = False) -> list[nn.Module]:
        return ([nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)]
                + ([act(), nn.BatchNorm2d(cin)] if mid else [])
                + [nn.Conv2d(cin, cout, 1, bias=False)] + post(cout))

    feats: list[nn.Module] = []
    c = in_channels
    for tok in body.split():
        if tok == "m":
            feats.append(nn.MaxPool2d(2))
            continue
        m = re.fullmatch(r"(c|dw|mdw|rdw)(\d+)", tok)
        kind, out = (m.group(1), int(m.group(2))) if m else ("", 0)
        if kind == "c":
            feats += [nn.Conv2d(c, out, 3, padding=1, bias=False)] + post(out)
        elif kind == "dw":
            feats += sep(c, out)
        elif kind == "mdw":
            feats += sep(c, out, mid=True)
        elif kind == "rdw" and out == c:
            feats.append(Residual(*sep(c, out)))
        else:
            raise SystemExit(f"layer {tok!r}: not one of c<N>, dw<N>, mdw<N>, rdw<N> (same width), m")
        c = out
    if head.strip() == "gd":  # max-pools are the only tokens here that change the map's size
        side = final_size([("m",)] * body.split().count("m"), size)
        pool: nn.Module = LearnedPool(c, side, bias=False)
    else:
        pool = nn.AdaptiveAvgPool2d(1)
    return Screened(feats, nn.Sequential(pool, nn.Conv2d(c, num_classes, 1, bias=False)))


def whiten_(conv: nn.Conv2d, loader: Any, images: int = 5000, eps: float = 5e-4) -> None:
    """Set a 1-channel 3x3 conv's 16 filters to the +/- top 8 whitening filters of the images."""
    xs, got = [], 0
    for x, _ in loader:
        xs.append(x)
        got += len(x)
        if got >= images:
            break
    x = torch.cat(xs)[:images].float()
    p = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 9)
    lam, vec = torch.linalg.eigh(p.T @ p / len(p))
    lam, vec = lam.flip(0)[:8], vec.flip(1)[:, :8]
    w = (vec / torch.sqrt(lam + eps)).T.reshape(8, 1, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([w, -w]).to(conv.weight.dtype))


def train(layers: str, seed: int, lr: float, cap: float, smoothing: float = 0.1,
          stem: str = "plain") -> dict[str, Any]:
    """One run: seed, data, model; exactly floor(cap / step FLOPs) steps; validation per epoch."""
    recipe = load_recipe(RECIPE, [f"seed={seed}"])
    torch.manual_seed(seed)
    data = build_data(recipe.data, seed)
    model = build(layers).to(memory_format=torch.channels_last)
    if stem != "plain":
        whiten_(model.features[0], data.train)
        model.features[0].weight.requires_grad_(stem != "whiten_frozen")

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, label_smoothing=smoothing)

    step_flops = train_step_flops(model, loss_fn, next(iter(data.train)))
    steps = int(cap // step_flops)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.3)
    vals: list[float] = []
    t0 = time.perf_counter()
    train_steps(model, loss_fn, data.train, opt, sched, steps, lambda: vals.append(accuracy(model, data.val)))
    return {"layers": layers, "stem": stem, "seed": seed, "lr": lr, "cap": cap,
            "params": sum(p.numel() for p in model.parameters()), "step_flops": step_flops,
            "steps": steps, "epochs": round(steps / len(data.train), 2), "val_per_epoch": vals,
            "best_val": max(vals), "test": accuracy(model, data.test),
            "wall_s": round(time.perf_counter() - t0), "loadavg_end": loadavg()}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("layers", help='a layer string, e.g. "c16 m dw32 m dw56 dw48 |gd"')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--cap", type=float, default=1e12)
    ap.add_argument("--stem", choices=["plain", "whiten", "whiten_frozen"], default="plain")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = train(args.layers, args.seed, args.lr, args.cap, stem=args.stem)
    print(json.dumps(run), flush=True)
    append_run(args.out, {
        "what": "docs/results.md §4 screening: plain loop, <= 10K recipe's training without BlurPool",
        "command": "python benchmarks/screen_10k.py LAYERS --seed S --lr LR (two runs side by side)",
        "date": datetime.date.today().isoformat(), "machine": machine()}, run)
    return run


if __name__ == "__main__":
    main()
