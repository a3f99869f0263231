"""What the three CLIs (`composer-run`, `composer-ablate`, `composer-report`) share: the error
guard (a user mistake is one line on stderr and exit 2, never a traceback), the argument parser
that keeps its own errors to one line, typed flag parsers, dotted `--key=value` overrides, the
package version, the environment-variable help, and sending stray stdout to stderr for `--json`.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from importlib import metadata
from typing import Callable, Iterator, NoReturn, Optional, Sequence

from effrecipes import __version__
from effrecipes.errors import UserError, shorten

ENVIRONMENT = """\
environment:
  EFFRECIPES_THREADS  torch threads per run when --threads is not given (composer-ablate sets it
                      to cores // workers); tiny models train on 1 thread regardless
  WANDB_API_KEY       W&B key for loggers.wandb (mode auto: online with a key, offline without);
  WANDB_MODE          online | offline | disabled overrides the recipe's loggers.wandb.mode
  WANDB_SILENT        W&B's own console output; set to true by the CLIs unless already set"""

def package_version() -> str:
    """'effrecipes X (Composer Y)' from the installed package metadata (no heavy imports)."""
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    ours = version("effrecipes")
    if ours == "unknown":
        ours = __version__
    return f"effrecipes {ours} (Composer {version('mosaicml')})"


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its mistakes reported like every other one: one `error:` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {shorten(' '.join(message.split()), 300)} (see {self.prog} --help)",
              file=sys.stderr)
        raise SystemExit(2)


def int_at_least(low: int, high: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {shorten(text, 40)!r}") from None
        if v < low or (high is not None and v > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {v})")
        return v
    return parse


def finite_float(low: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number >= low (> low when not inclusive)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {shorten(text, 40)!r}") from None
        if not math.isfinite(v) or v < low or (not inclusive and v == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} "
                                             f"{low:g} (got {shorten(text, 40)})")
        return v
    return parse


def dotted_flags_to_overrides(argv: Sequence[str], parser: argparse.ArgumentParser,
                              top_keys: Sequence[str]) -> list[str]:
    """`--optimizer.lr=0.01` / `--optimizer.lr 0.01` (what W&B sweep agents pass) -> the override
    `optimizer.lr=0.01`. A flag is taken as an override when it is not one of the CLI's own options
    and its name is dotted or a top-level key (`--seed=3`). The overrides go last, after the
    positional arguments, in the order given."""
    own = set(parser._option_string_actions)
    rest: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            rest.extend(argv[i:])
            break
        name, eq, value = tok[2:].partition("=")
        if tok.startswith("--") and f"--{name}" not in own and name and (
                "." in name or name in top_keys):
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise UserError(f"--{shorten(name, 60)} needs a value: --{shorten(name, 60)}=VALUE "
                                    f"or --{shorten(name, 60)} VALUE")
                value = argv[i + 1]
                i += 1
            overrides.append(f"{name}={value}")
        else:
            rest.append(tok)
        i += 1
    return rest + overrides


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout - Python prints and anything a library or a child process
    writes to file descriptor 1 (W&B's sync hint, download progress) - to stderr, so that `--json`
    output is JSON only. stdout is restored afterwards for the JSON itself."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable fd 1: Python-level redirection only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def guard(main: Callable[[], int], file: Optional[str] = None) -> int:
    """User mistakes -> one line on stderr naming the file, exit 2; Ctrl-C -> exit 130."""
    try:
        return main()
    except UserError as e:
        if file:
            e = e.in_file(file)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `composer-run --list models | head`: the reader left, not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run_entrypoint(main: Callable[[], int]) -> NoReturn:
    """A console script: W&B quiet unless asked, exit with main()'s code."""
    os.environ.setdefault("WANDB_SILENT", "true")
    sys.exit(main())
