"""`composer-report`: comparison reports (report.html, report.md, PNG plots, optionally a W&B
Report) from a run directory, a matrix directory, or a directory of run directories.

Exit codes: 0 written; 2 a user mistake (no runs, unwritable output, ...), one line; 130
interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from effrecipes.cli_common import OneLineParser, guard, package_version, run_entrypoint
from effrecipes.errors import UserError, writable_dir
from effrecipes.recipe import file_kind
from effrecipes.report.html import render_html
from effrecipes.report.load import collect
from effrecipes.report.markdown import render_markdown
from effrecipes.report.plots import PLOTS, render_all
from effrecipes.report.wandb_report import _wr, publish

EPILOG = """\
examples:
  composer-report runs/matrices/cifar10_table4            (a matrix from composer-ablate)
  composer-report runs/cifar10_baseline                   (one run directory)
  composer-report runs/ --out reports/all --title "All runs so far"
  composer-report runs/matrices/cifar10_table4 --wandb    (also a W&B Report; offline: its
                                                           blocks go to wandb_report.json)

exit codes: 0 written; 2 a mistake (no runs, unwritable --out, ...), one line; 130 interrupted

environment:
  WANDB_API_KEY       --wandb uploads the W&B Report when a key is set and W&B is online
  WANDB_MODE          offline | disabled: write wandb_report.json instead of uploading"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="composer-report", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a comparison report (report.html: one self-contained file; report.md "
        "with PNG plots beside it) of a run directory, an ablation-matrix directory, or a "
        "directory of run directories: results table (mean ± std over seeds, delta vs baseline, "
        "the paper's figures), accuracy vs training FLOPs with the Pareto front, validation "
        "curves against FLOPs spent, and delta-vs-baseline bars.")
    p.add_argument("dir", metavar="DIR", help="run directory, matrix directory, or a directory "
                   "searched recursively for run directories (metrics.json)")
    p.add_argument("--version", action="version", version=package_version())
    p.add_argument("--out", metavar="OUTDIR", default=None,
                   help="where to write report.html, report.md and the plots (default: DIR)")
    p.add_argument("--output", dest="out", default=None, help=argparse.SUPPRESS)  # composer-ablate's old name
    p.add_argument("--title", default=None, help="report title (default: from the runs)")
    p.add_argument("--wandb", action="store_true",
                   help="also build a W&B Report (uploaded only when an API key is set and W&B is "
                   "online; otherwise its blocks and panels are written to wandb_report.json)")
    return p


def default_title(kind: str, name: str) -> str:
    return {"matrix": f"Ablation matrix {name}", "run": f"Run {name}"}.get(kind, f"Runs in {name}")


def _outdir(path: Path) -> Path:
    writable_dir(path, field="--out", hint="choose another with --out")
    return path


REPORT_FILES = ("report.md", "report.html")
WANDB_FILE = "wandb_report.json"


def check_destinations(outdir: Path, names: Sequence[str]) -> None:
    """Each file the report writes in `outdir` must be absent or a regular file (a symlink to
    one is replaced, not written through): a directory, FIFO or device there is one-line error
    before anything is written, never a blocked write or half a report."""
    for name in names:
        path = outdir / name
        try:
            if not os.path.lexists(path):
                continue
            st = os.stat(path)
        except OSError:  # a dangling symlink: replaced like an absent file
            continue
        if stat.S_ISREG(st.st_mode):
            continue
        raise UserError(f"{name} is {file_kind(st.st_mode)}, so the report cannot be written there",
                        file=str(path),
                        hint="remove it, or choose another output directory with --out")


def _install(staging: Path, outdir: Path, names: Sequence[str], stale: Sequence[str]) -> None:
    """Move the finished files from `staging` into `outdir` (each an atomic rename) and remove
    the plots of an earlier report that this one does not draw."""
    for name in names:
        os.replace(staging / name, outdir / name)
    for name in stale:
        (outdir / name).unlink(missing_ok=True)


STAGING_PREFIX = ".report-staging-"


def _sweep_stale_staging(outdir: Path) -> None:
    """Remove staging directories (`.report-staging-<pid>-*`) left by a report that was killed
    before it could clean up; a live writer's directory (its pid still running) is kept."""
    for p in outdir.glob(STAGING_PREFIX + "*"):
        pid = p.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if not (pid.isdigit() and p.is_dir()) or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (PermissionError, OverflowError):  # another user's live process / not a pid
            continue


def write_report(dir: str | Path, out: Optional[str | Path] = None, title: Optional[str] = None,
                 wandb: bool = False) -> dict[str, Path]:
    """Collect, plot and write; returns the paths written (report.html, report.md, plots).

    Every file is first written into a temporary directory inside the output directory and moved
    into place only when all of them were written: a failure leaves the earlier report (if any)
    as it was, and no part of a new one."""
    if wandb:  # fail before any work when the package is missing
        _wr()
    c = collect(dir)
    outdir = _outdir(Path(out).expanduser() if out else c.root)
    plot_names = [name for name, _ in PLOTS.values()]
    check_destinations(outdir, [*REPORT_FILES, *plot_names, *([WANDB_FILE] if wandb else [])])
    title = title or default_title(c.kind, c.name)
    try:  # not named ".tmp-": composer-ablate sweeps such names from a matrix directory
        _sweep_stale_staging(outdir)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=outdir))
    except OSError as e:
        raise UserError(f"cannot write the report: {e.strerror}", file=str(outdir)) from None
    try:
        plots = render_all(c, staging)
        (staging / "report.md").write_text(render_markdown(c, plots, title), encoding="utf-8")
        (staging / "report.html").write_text(render_html(c, plots, title), encoding="utf-8")
        names = [p.name for p in plots.values()] + list(REPORT_FILES)
        _install(staging, outdir, names, [n for n in plot_names if n not in names])
    except OSError as e:
        raise UserError(f"cannot write the report: {e.strerror}", file=str(outdir)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = {f"plot:{k}": outdir / v.name for k, v in plots.items()}
    written["html"], written["md"] = outdir / "report.html", outdir / "report.md"
    if wandb:
        publish(c, outdir, title)
        written["wandb"] = outdir / WANDB_FILE
    for note in c.notes:
        print(f"note: {note}", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        logging.getLogger("matplotlib").setLevel(logging.WARNING)
        written = write_report(args.dir, args.out, args.title, args.wandb)
        print(f"report: {written['html']} (also {written['md'].name} and "
              f"{len([k for k in written if k.startswith('plot:')])} PNG plots beside it)")
        return 0

    return guard(go)


def entrypoint() -> None:
    run_entrypoint(main)


if __name__ == "__main__":
    entrypoint()
