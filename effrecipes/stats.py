"""One statistics and formatting layer for the matrix tables (`effrecipes.matrix.results`) and the
reports (`effrecipes.report`): aggregation over seeds, the delta against the reference group and
the noise rule (its text and its computation), which cell earns the "best" star, and the number
and markdown formatting both print.

A *row* is one planned seed of a configuration: a mapping with `techniques`, the grid keys,
`seed`, `status` (done / diverged / failed / pending / ...), `hash` (the recipe's hash, when
known) and the metrics of `metrics.json` (`test_accuracy`, `best_val_accuracy`, `flops_used`,
`params`, ...). A matrix builds its rows from the cells, a report from the run directories or from
`results.json`; both aggregate them here, so both print the same numbers.

No heavy imports; from the rest of effrecipes only the run contract's status names
(`effrecipes.rundir`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

from effrecipes.rundir import FINISHED, CellStatus  # noqa: E402,F401  (FINISHED: re-exported)

DONE, DIVERGED, FAILED = CellStatus.DONE, CellStatus.DIVERGED, CellStatus.FAILED

NOISE_RULE = ("within_noise = yes when |delta| <= sqrt(std_cell^2 + std_reference^2) (the sample "
              "standard deviations over seeds, ddof=1), or when either group has fewer than 2 "
              "finished seeds (no noise estimate: never call such a difference real)")

BEST_RULE = ("★ best cell: the highest mean test accuracy among the reference cells and the cells "
             "whose Δ is outside noise (a cell within noise of its reference cannot be told apart "
             "from it, so it never gets the star)")


# --------------------------------------------------------------------------- numbers

def num(v: Any) -> Optional[float]:
    """A finite float, or None (bools, blanks, NaN and junk are None)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class MeanStd(NamedTuple):
    """A mean over seeds and its sample standard deviation; None where there is no value (no
    seeds; the std of fewer than 2)."""

    mean: Optional[float] = None
    std: Optional[float] = None


def mean_std(xs: list[float]) -> MeanStd:
    """Mean and sample standard deviation (ddof=1; None for fewer than 2 values)."""
    if not xs:
        return MeanStd()
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return MeanStd(m)
    return MeanStd(m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)))


# --------------------------------------------------------------------------- seeds and groups

def identity(row: Mapping[str, Any]) -> Optional[tuple[str, Any]]:
    """What makes two rows the same run: the recipe hash and the seed (None when the hash is
    unknown: such a row is never merged with another)."""
    h, seed = row.get("hash"), row.get("seed")
    try:
        hash(seed)
    except TypeError:  # a seed of the wrong type read back from a file: compared as text
        seed = repr(seed)
    return None if h in (None, "") else (str(h), seed)


def split_duplicates(rows: Iterable[Mapping[str, Any]]) -> tuple[list[Any], list[Any]]:
    """(distinct rows, repeats): a row whose recipe hash and seed an earlier row already has is a
    repeat of the same run, not another seed."""
    seen: set[tuple[str, Any]] = set()
    kept, repeats = [], []
    for row in rows:
        key = identity(row)
        if key is not None and key in seen:
            repeats.append(row)
            continue
        if key is not None:
            seen.add(key)
        kept.append(row)
    return kept, repeats


def _values(rows: list[Mapping[str, Any]], key: str) -> list[float]:
    return [x for r in rows if (x := num(r.get(key))) is not None]


def seed_stats(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate of one group's rows (its seeds): counts, mean +/- std of test accuracy, means of
    best validation accuracy and FLOPs used, the parameter count. A repeated run counts once."""
    members, _ = split_duplicates(rows)
    fin = [r for r in members if r.get("status") in FINISHED]
    acc = _values(fin, "test_accuracy")
    m, s = mean_std(acc)
    return {"n": len(acc), "n_cells": len(members),
            "n_failed": sum(r.get("status") == FAILED for r in members),
            "n_diverged": sum(r.get("status") == DIVERGED for r in members),
            "test_accuracy_mean": m, "test_accuracy_std": s,
            "best_val_accuracy_mean": mean_std(_values(fin, "best_val_accuracy"))[0],
            "flops_used_mean": mean_std(_values(fin, "flops_used"))[0],
            "params": next((r.get("params") for r in fin if r.get("params") is not None), None)}


def delta(cell: Mapping[str, Any], ref: Mapping[str, Any]) -> tuple[Optional[float], Optional[float],
                                                                     Optional[bool]]:
    """(delta mean, delta std, within noise) of a group against its reference, both `seed_stats`
    dicts: the one computation of NOISE_RULE."""
    m, ref_m = cell.get("test_accuracy_mean"), ref.get("test_accuracy_mean")
    if m is None or ref_m is None:
        return None, None, None
    d = m - ref_m
    s, ref_s = cell.get("test_accuracy_std"), ref.get("test_accuracy_std")
    if cell.get("n", 0) >= 2 and ref.get("n", 0) >= 2 and s is not None and ref_s is not None:
        d_std = math.sqrt(s ** 2 + ref_s ** 2)
        return d, d_std, abs(d) <= d_std
    return d, None, True


def group_key(row: Mapping[str, Any], grid_keys: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Everything but the seed: the techniques label and the grid values (as text)."""
    return str(row.get("techniques")), tuple(str(row.get(k)) for k in grid_keys)


def aggregate(rows: Iterable[Mapping[str, Any]], grid_keys: Sequence[str], reference: Optional[str],
              published: Optional[Mapping[str, Any]] = None) -> list[dict[str, Any]]:
    """One dict per configuration (rows grouped by everything but the seed, in order of first
    appearance): `seed_stats`, the delta against the `reference` group with the same grid values
    (`delta`), and the published figure for its techniques."""
    groups: dict[tuple[str, tuple[str, ...]], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_key(row, grid_keys), []).append(row)
    computed = {key: seed_stats(members) for key, members in groups.items()}
    out = []
    for (label, gvals), st in computed.items():
        agg: dict[str, Any] = {"techniques": label, **dict(zip(grid_keys, gvals)), **st}
        ref = computed.get((reference, gvals)) if reference is not None else None
        agg["reference"] = reference
        agg["delta_mean"] = agg["delta_std"] = agg["within_noise"] = None
        if ref is not None and label != reference:
            agg["delta_mean"], agg["delta_std"], agg["within_noise"] = delta(st, ref)
        agg["published"] = (published or {}).get(label)
        out.append(agg)
    return out


TUNE_RULE = ("tuned: for each arm (technique set and the grid values not tuned), the tuned "
             "setting with the highest mean best-validation accuracy over seeds is selected (test "
             "data never takes part), and its test accuracy is reported; untuned: the setting of "
             "the base recipe; tuning FLOPs: every run of the arm's search")


def _pick(candidates: list[Mapping[str, Any]], tune_keys: Sequence[str],
          default: Mapping[str, str]) -> tuple[Optional[Mapping[str, Any]], Optional[Mapping[str, Any]]]:
    """(selected by validation accuracy, the base recipe's setting) among one arm's groups."""
    scored = [g for g in candidates if g.get("best_val_accuracy_mean") is not None]
    best = max(scored, key=lambda g: g["best_val_accuracy_mean"], default=None)
    untuned = next((g for g in candidates if all(g.get(k) == default.get(k) for k in tune_keys)), None)
    return best, untuned


def tuned(groups: Sequence[Mapping[str, Any]], grid_keys: Sequence[str], tune_keys: Sequence[str],
          reference: Optional[str], default: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per arm: the selected setting (TUNE_RULE) with its test accuracy and delta against the
    reference arm's own selected setting, the untuned result and its delta against the untuned
    reference, the FLOPs of one result and the FLOPs spent on the arm's whole search."""
    fixed = [k for k in grid_keys if k not in tune_keys]
    arms: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for g in groups:
        arms.setdefault((str(g["techniques"]), *(str(g.get(k)) for k in fixed)), []).append(g)
    picked = {key: _pick(members, tune_keys, default) for key, members in arms.items()}
    out = []
    for key, members in arms.items():
        best, untuned = picked[key]
        ref_best, ref_untuned = picked.get((str(reference), *key[1:]), (None, None))
        row: dict[str, Any] = {"techniques": key[0], **dict(zip(fixed, key[1:])),
                               "selected": {k: best.get(k) for k in tune_keys} if best else None,
                               "tuning_flops": sum((g.get("flops_used_mean") or 0) * g.get("n", 0)
                                                   for g in members),
                               "flops_per_result": best.get("flops_used_mean") if best else None}
        for name, g, ref in (("tuned", best, ref_best), ("untuned", untuned, ref_untuned)):
            row[f"{name}_n"] = g.get("n") if g else 0
            row[f"{name}_test_mean"] = g.get("test_accuracy_mean") if g else None
            row[f"{name}_test_std"] = g.get("test_accuracy_std") if g else None
            d = delta(g, ref) if g and ref and key[0] != reference else (None, None, None)
            row[f"{name}_delta_mean"], row[f"{name}_delta_std"], row[f"{name}_within_noise"] = d
        out.append(row)
    return out


def best_index(groups: Sequence[tuple[Optional[float], Optional[float], Optional[bool]]]) -> Optional[int]:
    """The group that gets the "best cell" star (BEST_RULE), from (mean test accuracy, mean FLOPs
    used, within noise) per group: the highest mean (fewer FLOPs break ties) among the groups not
    within noise of their reference; None when no group has a mean."""
    scored = [i for i, (m, _, noise) in enumerate(groups) if m is not None and noise is not True]
    if not scored:
        return None
    return max(scored, key=lambda i: (groups[i][0], -(groups[i][1] or 0.0)))


def status_counts(statuses: Iterable[Any], order: Sequence[str] = ()) -> dict[str, int]:
    """How many rows have each status: the statuses of `order` first (zeros included), then any
    other in order of appearance."""
    out = {s: 0 for s in order}
    for s in statuses:
        out[str(s)] = out.get(str(s), 0) + 1
    return out


# --------------------------------------------------------------------------- formatting

def fmt(x: Any, spec: str = ".2f", signed: bool = False) -> str:
    """A number with a format spec ('.2f': accuracies in %), '-' when missing."""
    x = num(x)
    if x is None:
        return "-"
    return format(x, ("+" if signed else "") + spec)


def pm(m: Any, s: Any, signed: bool = False, digits: int = 2) -> str:
    """'mean ± std' ('mean' alone without a std, '-' without a mean)."""
    text = fmt(m, f".{digits}f", signed)
    s = num(s)
    return f"{text} ± {s:.{digits}f}" if s is not None and text != "-" else text


def signed_pm(m: Any, s: Any) -> str:
    """A delta: '+mean ± std'."""
    return pm(m, s, signed=True)


def fmt_flops(x: Any) -> str:
    """FLOPs with a unit: 1.2G, 999.9G reads as 1T (never 1e+03G); '-' when missing."""
    x = num(x)
    if x is None:
        return "-"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale * 0.9995:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def fmt_count(x: Any) -> str:
    """An integer with thousands separators (parameter counts), '-' when missing."""
    x = num(x)
    return "-" if x is None else f"{int(x):,}"


def yes_no(flag: Optional[bool]) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
             numeric: Optional[Sequence[bool]] = None, bold: Optional[Sequence[bool]] = None) -> str:
    """A GitHub markdown table: `|` in cells escaped, None shown as '-', right-aligned `numeric`
    columns, rows flagged in `bold` set in bold."""
    def esc(v: Any) -> str:
        return ("-" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    align = numeric or [False] * len(header)
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---:" if n else "---" for n in align) + "|"]
    for i, row in enumerate(rows):
        cells = [esc(v) for v in row]
        if bold and bold[i]:
            cells = [f"**{x}**" if x not in ("", "-") else x for x in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
