"""`composer-ablate`: run an ablation matrix (techniques x grid x seeds) from a YAML spec.

Exit codes: 0 every selected cell finished (done or diverged); 1 some cells failed (recorded in
<matrix_dir>/failed/, the others ran); 2 a user mistake (bad spec, invalid cells, matrix locked),
one line; 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from effrecipes.cli_common import (ENVIRONMENT, OneLineParser, dotted_flags_to_overrides, finite_float,
                                   guard, int_at_least, package_version, run_entrypoint)
from effrecipes.errors import UserError
from effrecipes.matrix.cells import Matrix, cell_problem, check_valid, load_matrix
from effrecipes.matrix.dryrun import dry_run
from effrecipes.matrix.execute import format_outcome, run_matrix
from effrecipes.matrix.reuse import check_sources
from effrecipes.matrix.spec import MatrixSpec
from effrecipes.matrix.state import classify
from effrecipes.recipe import Recipe

EPILOG = """\
examples:
  composer-ablate recipes/ablations/cifar10_table4.yaml --dry-run
  composer-ablate recipes/ablations/cifar10_table4.yaml --workers 2
  composer-ablate SPEC.yaml --only 'blurpool*' --retry-failed
  composer-ablate SPEC.yaml --reuse-from results/matrices/OTHER_MATRIX
  composer-ablate SPEC.yaml --executor ray --ray-address auto --cpus-per-cell 4
  composer-ablate SPEC.yaml seeds=[0,1,2] grid.optimizer.lr=[0.1,0.01] budget.flops=1e11
      (key=value edits the spec; a recipe key such as budget.flops is applied to every cell)

Re-running the same spec resumes: finished cells (same recipe hash) are skipped, interrupted and
changed cells run again, failed cells run again with --retry-failed. Results are rebuilt in
<out>/<name>/results.{md,csv,json} after every finished cell.

exit codes: 0 every selected cell finished; 1 some cells failed (recorded, the others ran);
2 a mistake in the spec or arguments (one line; --dry-run lists every invalid cell);
130 interrupted

""" + ENVIRONMENT


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="composer-ablate", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an ablation matrix: technique combinations x a grid of recipe settings x "
        "seeds, each cell a full composer-run of a resolved recipe, resumable, with aggregate "
        "tables (mean +/- std over seeds, delta vs the baseline).")
    p.add_argument("spec", help="matrix spec YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="edit the spec (seeds=[0,1], view=equal_epochs, grid.optimizer.lr=[0.1,0.01],"
                   " algorithms.mode=all_subsets) or, for recipe keys (budget.flops=1e11), every cell")
    p.add_argument("--version", action="version", version=package_version())
    p.add_argument("--workers", type=int_at_least(1, 1024), default=None,
                   help="local: worker processes, each with cores//N torch threads (default 1); "
                   "ray: at most N cells at once (default: cluster CPUs / --cpus-per-cell)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="run cells in local worker processes or as Ray tasks")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address (default $RAY_ADDRESS, else start a local instance)")
    p.add_argument("--cpus-per-cell", type=finite_float(0.0, inclusive=False), default=1.0,
                   help="ray: CPUs reserved per cell (also its torch threads)")
    p.add_argument("--gpus-per-cell", type=finite_float(0.0), default=0.0,
                   help="ray: GPUs reserved per cell; each cell trains on the GPU Ray assigned "
                   "it (trainer.device: auto), or on the CPU with 0")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells with planned FLOPs and an estimated wall time from a short "
                   "calibration run; write nothing")
    p.add_argument("--calibration-batches", type=int_at_least(0, 100_000), default=30,
                   help="dry-run: real training batches timed for the estimate (0 = skip)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also re-run cells whose last attempt failed (default: keep them failed)")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="run only cells whose id matches this glob (repeatable), e.g. 'blurpool*'")
    p.add_argument("--reuse-from", action="append", metavar="DIR", default=[],
                   help="copy finished runs of identical recipes (same recipe hash) from DIR (another "
                   "matrix directory, a directory of matrices, or a composer-run output root) "
                   "instead of training them again (repeatable; cell.json records the source)")
    p.add_argument("--out", dest="output", metavar="DIR", default=None,
                   help="directory holding matrix directories (overrides the spec's output)")
    p.add_argument("--output", dest="output", default=None, help=argparse.SUPPRESS)  # old name
    p.add_argument("--list-cells", action="store_true",
                   help="print each cell's id, status and overrides; train nothing")
    p.add_argument("--json", action="store_true", help="machine-readable --dry-run/--list-cells")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _list_cells(matrix: Matrix, as_json: bool) -> str:
    """Every cell with its status and overrides; an invalid cell with `invalid` and its message."""
    items = []
    for c in matrix.cells:
        if c.error:
            items.append({"cell_id": c.id, "status": "invalid", "hash": None,
                          "overrides": c.overrides, "error": cell_problem(matrix, c)})
            continue
        status = classify(matrix, c)[0] if matrix.matrix_dir.exists() else "pending"
        items.append({"cell_id": c.id, "status": status, "hash": c.hash, "overrides": c.overrides})
    if as_json:
        return json.dumps(items, indent=2)
    width = max(len(i["cell_id"]) for i in items)
    lines = [f"{i['cell_id']:<{width}}  {i['status']:<8}  "
             + (i["error"] if i.get("error") else " ".join(i["overrides"])) for i in items]
    return "\n".join(lines + [f"{len(items)} cells; base recipe {matrix.base_path}"])


def _workers(args: argparse.Namespace) -> int:
    """The local worker count, after the checks argparse cannot make (flags combined)."""
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1 (got {args.workers})")
    if args.cpus_per_cell <= 0 or args.gpus_per_cell < 0:
        raise UserError("--cpus-per-cell must be > 0 and --gpus-per-cell >= 0")
    return args.workers or 1


def _print_dry_run(matrix: Matrix, args: argparse.Namespace, workers: int) -> int:
    """--dry-run: the plan and time estimate; a cell that cannot be prepared is a user error, so
    the exit code says whether the matrix is ready to run."""
    text, report, ok = dry_run(matrix, workers=workers, only=args.only,
                               reuse_from=check_sources(args.reuse_from),
                               retry_failed=args.retry_failed,
                               calibration_batches=args.calibration_batches,
                               executor=args.executor, cpus_per_cell=args.cpus_per_cell)
    print(json.dumps(report, indent=2, default=str) if args.json else text)
    check_valid(matrix, hint="all of them are listed above")
    if not ok:
        raise UserError("some cells cannot be prepared (see the table); fix them before "
                        "running", file=args.spec)
    return 0


def _run(matrix: Matrix, args: argparse.Namespace, workers: int) -> int:
    """Train the selected cells; exit 1 when some failed (they are recorded, the others ran)."""
    outcome = run_matrix(matrix, executor=args.executor, workers=workers,
                         retry_failed=args.retry_failed, only=args.only,
                         ray_address=args.ray_address, cpus_per_cell=args.cpus_per_cell,
                         gpus_per_cell=args.gpus_per_cell, window=args.workers,
                         quiet=args.quiet, reuse_from=check_sources(args.reuse_from))
    print(format_outcome(matrix, outcome))
    return 1 if outcome.failed_ids else 0


def _ablate(args: argparse.Namespace) -> int:
    """Load the matrix (spec + command-line overrides), then list, dry-run or run it. Invalid
    cells are one error line (their count and the first one); --dry-run and --list-cells print
    every one of them with its message on stdout first."""
    workers = _workers(args)
    matrix = load_matrix(args.spec, args.overrides, output=args.output)
    if args.list_cells:
        print(_list_cells(matrix, args.json))
        check_valid(matrix, hint="all of them are listed above")
        return 0
    if args.dry_run:
        return _print_dry_run(matrix, args, workers)
    return _run(matrix, args, workers)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:  # --grid.optimizer.lr=[...] / --budget.flops 1e11, as W&B sweep agents pass them
        argv = dotted_flags_to_overrides(sys.argv[1:] if argv is None else list(argv), parser,
                                         sorted(set(MatrixSpec.model_fields) | set(Recipe.model_fields)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return guard(lambda: _ablate(args))


def entrypoint() -> None:
    run_entrypoint(main)


if __name__ == "__main__":
    entrypoint()
