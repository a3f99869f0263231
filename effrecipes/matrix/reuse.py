"""`composer-ablate --reuse-from DIR`: take finished runs of identical recipes instead of training
them again.

Two matrices often share cells: a tuned Table 4 contains the tuned baseline's own learning-rate
sweep, a seeds matrix repeats a search's best point. A cell's identity is its recipe hash (the
resolved recipe without `output`), so a finished run directory anywhere whose `recipe.yaml` hashes
to a pending cell's hash *is* that cell's result. It is copied into the matrix (never moved or
linked: the source stays intact and the copy is independent), and `cell.json` records where it came
from, so nobody mistakes a reused result for a fresh one. Interrupted runs are never reused.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from effrecipes.errors import UserError
from effrecipes.matrix.cells import Cell, Matrix, run_dir_hash
from effrecipes.recipe import path_problem
from effrecipes.rundir import FINISHED, METRICS_FILE, RECIPE_FILE, status_of
from effrecipes.files import json_dict_or_none

MAX_DEPTH = 4  # <root>/<matrix>/cells/<cell>/<run>/: a run is 3 levels below its matrix directory


def check_sources(sources: Iterable[str]) -> list[Path]:
    """The --reuse-from directories (a matrix directory, a directory of matrices, or a composer-run
    output root), each an existing directory (a one-line error otherwise)."""
    out = []
    for s in sources:
        problem = path_problem(s)
        if problem is None and not Path(s).expanduser().is_dir():
            problem = "no such directory"
        if problem:
            raise UserError(f"--reuse-from {s}: {problem}", hint="give a matrix directory "
                            "(e.g. results/matrices/NAME) or a composer-run output root")
        out.append(Path(s).expanduser().resolve())
    return out


def _run_dirs(root: Path) -> Iterable[Path]:
    """Directories at most MAX_DEPTH below root that hold a metrics.json and a recipe.yaml."""
    base = len(root.parts)
    for here, dirs, files in os.walk(root):
        depth = len(Path(here).parts) - base
        dirs[:] = [d for d in dirs if not d.startswith(".")] if depth < MAX_DEPTH else []
        if METRICS_FILE in files and RECIPE_FILE in files:
            yield Path(here)


def _finished(run_dir: Path) -> bool:
    m = json_dict_or_none(run_dir / METRICS_FILE)
    return m is not None and status_of(m) in FINISHED


def find_reusable(matrix: Matrix, cells: list[Cell], sources: list[Path]) -> dict[str, Path]:
    """cell id -> a finished run directory (in one of `sources`, outside this matrix) that trained
    exactly the cell's recipe. The first source wins when several hold one."""
    wanted = {c.hash: c.id for c in cells if c.hash}
    found: dict[str, Path] = {}
    own = matrix.matrix_dir.resolve()
    for root in sources:
        for run_dir in _run_dirs(root):
            if run_dir.resolve().is_relative_to(own):
                continue
            cid = wanted.get(run_dir_hash(run_dir) or "")
            if cid and cid not in found and _finished(run_dir):
                found[cid] = run_dir
    return found


def copy_run(matrix: Matrix, cell: Cell, source: Path) -> Optional[str]:
    """Copy `source` into the cell's run directory (staged, then renamed into place, replacing a
    stale run of another recipe); None on success, else why it could not."""
    dest = matrix.run_dir(cell)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{cell.id}.tmp-{os.getpid()}")
    old = dest.with_name(f".{cell.id}.old-{os.getpid()}")
    try:
        shutil.copytree(source, tmp, symlinks=True)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.replace(old, dest)
        return f"cannot copy {source}: {e.strerror or e}"
    shutil.rmtree(old, ignore_errors=True)
    return None


__all__ = ["check_sources", "find_reusable", "copy_run"]
