"""The seed papers' published figures (`seed_results.csv`), for tables and reports to show beside ours.

Columns: paper, table, dataset, model, params, setting, metric, value. Paper 000 is "The
Methodologies Behind Computationally Efficient CNNs"; paper 004 is "Training Efficient CNNs".
"""
from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources
from typing import Optional


# Our registry names -> the names used in seed_results.csv where they differ.
PAPER_NAMES = {"mobilenet_v3_large": "mobilenet_v3_medium"}


@lru_cache(maxsize=1)
def rows() -> list[dict[str, str]]:
    with resources.files(__package__).joinpath("seed_results.csv").open() as f:
        return list(csv.DictReader(f))


def lookup(*, paper: str, metric: str, dataset: Optional[str] = None, model: Optional[str] = None,
           setting: Optional[str] = None, table: Optional[str] = None) -> Optional[float]:
    """The paper's value for one cell, or None when the paper has no such figure."""
    model = PAPER_NAMES.get(model, model) if model else model
    for r in rows():
        if (r["paper"] == paper and r["metric"] == metric
                and (dataset is None or r["dataset"] == dataset)
                and (model is None or r["model"] == model)
                and (setting is None or r["setting"] == setting)
                and (table is None or r["table"] == table)):
            return float(r["value"])
    return None


def paper_params(paper: str, model: str) -> Optional[int]:
    model = PAPER_NAMES.get(model, model)
    for r in rows():
        if r["paper"] == paper and r["model"] == model and r["params"]:
            return int(r["params"])
    return None
