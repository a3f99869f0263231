"""Small numeric helpers shared by the matrix tables and the reports (no heavy imports)."""
from __future__ import annotations

import math
from typing import Any, Optional


def num(v: Any) -> Optional[float]:
    """A finite float, or None (bools, blanks, NaN and junk are None)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def mean_std(xs: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof=1; None for fewer than 2 values)."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
