"""Paper 000's Tables I-II for any models and dataset: params, training GFLOPs per epoch, and how
many epochs a FLOP cap affords — with the paper's own figures beside ours.

Ours follow the project's convention (FlopCounterMode, 2 FLOPs per multiply-add, forward +
backward, the model as built for the dataset's channels, size and classes). The paper estimated
FLOPs with `pthflops` (forward pass plus an estimate for backpropagation), so a factor of about
2-3 between the columns is expected from the convention alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from effrecipes.budget import train_step_flops
from effrecipes.models import build_model
from effrecipes.reference import lookup, paper_params
from effrecipes.registry import datasets, models


@dataclass
class BudgetRow:
    model: str
    params: int
    train_flops_per_sample: float
    gflops_per_epoch: float
    epochs_affordable: float
    paper_params: Optional[float]
    paper_gflops_per_epoch: Optional[float]
    paper_epochs: Optional[float]


def budget_table(dataset: str, model_names: list[str], flops_cap: float,
                 val_fraction: float = 0.1, image_size: Optional[int] = None,
                 stock_stem: bool = False) -> list[BudgetRow]:
    """One row per model. `stock_stem=True` keeps torchvision's stems unchanged on small images
    (the setting paper 000's Kuzushiji-49 figures fit); by default small images get our
    stride-1 stem (see effrecipes/models/zoo.py)."""
    info = datasets.entry(dataset, field_path="--dataset").info
    channels, size = info.channels, int(image_size or info.image_size)
    classes, n_train = info.num_classes, info.num_train
    per_epoch_samples = round(n_train * (1 - val_fraction))
    rows = []
    for name in model_names:
        models.entry(name, field_path="--models")
        torch.manual_seed(0)
        kwargs = ({"small_stem": False} if stock_stem and models.entry(name).info.family
                  in ("paper000", "reference") else {})
        model = build_model(name, channels, classes, size, **kwargs)
        batch = (torch.randn(2, channels, size, size), torch.randint(0, classes, (2,)))
        per_sample = train_step_flops(model, torch.nn.functional.cross_entropy, batch) / 2
        per_epoch = per_sample * per_epoch_samples
        paper_gf = lookup(paper="000", metric="gflops", dataset=dataset, model=name)
        rows.append(BudgetRow(
            model=name, params=sum(p.numel() for p in model.parameters()),
            train_flops_per_sample=per_sample, gflops_per_epoch=per_epoch / 1e9,
            epochs_affordable=flops_cap / per_epoch, paper_params=paper_params("000", name),
            paper_gflops_per_epoch=paper_gf,
            paper_epochs=(flops_cap / (paper_gf * 1e9)) if paper_gf else None))
    return rows


def format_budget_table(dataset: str, rows: list[BudgetRow], flops_cap: float, per_epoch_samples: int) -> str:
    def opt(v: Optional[float], fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    out = [f"Training budget on {dataset}: cap {flops_cap:.3g} FLOPs, {per_epoch_samples:,} training "
           "images per epoch.",
           "Ours: FlopCounterMode, 2 FLOPs/multiply-add, forward + backward, as built for this "
           "dataset. Paper 000: pthflops estimate (Tables I-II).", "",
           "| model | params | paper params | train MFLOPs/sample | GFLOPs/epoch | paper GFLOPs/epoch "
           "| epochs under cap | paper epochs |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r.model} | {r.params:,} | {opt(r.paper_params, ',.0f')} | "
                   f"{r.train_flops_per_sample / 1e6:,.2f} | {r.gflops_per_epoch:,.1f} | "
                   f"{opt(r.paper_gflops_per_epoch, ',.0f')} | {r.epochs_affordable:,.1f} | "
                   f"{opt(r.paper_epochs, ',.1f')} |")
    return "\n".join(out)
