"""User-facing errors.

Every mistake a user can make (bad recipe, missing data, unwritable output) is raised as a
`UserError`; the CLIs print its one-line message and exit with code 2, never a traceback.
"""
from __future__ import annotations

import difflib
import os
from typing import Iterable


class UserError(Exception):
    """A mistake in the user's input: shown as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 hint: str | None = None) -> None:
        self.message = message
        self.file, self.field, self.hint = file, field, hint
        parts = []
        if file:
            parts.append(shorten(str(file), MAX_PATH_SHOWN))
        if field:
            parts.append(shorten(str(field), MAX_PATH_SHOWN))
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        if hint:
            text = f"{text} ({hint})"
        # always one line, and never a user's megabyte of text echoed back
        super().__init__(shorten(" ".join(text.split()), MAX_LINE))


    def in_file(self, file: str) -> "UserError":
        """The same error, naming `file` when it named none (e.g. a data error found mid-build)."""
        if self.file:
            return self
        return type(self)(self.message, file=file, field=self.field, hint=self.hint)


MAX_PATH_SHOWN = 200   # a file name or field path longer than this is cut in messages
MAX_LINE = 2000        # a whole error line is cut beyond this (choice lists fit comfortably)


def shorten(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with an ellipsis (for echoing user values in errors)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit - 14]}...({len(text):,} chars)"


class RecipeError(UserError):
    """The recipe (file, override or spec) is invalid."""


class DataError(UserError):
    """A dataset cannot be found, read or downloaded."""


class DataMissing(DataError):
    """The dataset's files are not on disk and could not be downloaded: the only data error a
    `--dry-run` may plan around (from the registered shape); every other one is reported."""


def closest_first(value: str, choices: Iterable[str], limit: int | None = None) -> list[str]:
    """Valid choices ordered by similarity to `value` (closest match first)."""
    choices = sorted(set(choices))
    value = str(value)[:100]  # similarity of a megabyte-long typo is not worth computing
    def score(c: str) -> tuple[bool, float, str]:
        prefix = c.startswith(value) or value.startswith(c)  # 'gap_1p5k' -> 'gap_1p5k_dw' first
        return (not prefix, -difflib.SequenceMatcher(None, value, c).ratio(), c)

    scored = sorted(choices, key=score)
    return scored[:limit] if limit else scored


def unknown_name_message(kind: str, value: str, choices: Iterable[str]) -> str:
    """'unknown model 'x'; valid: closest, next, ...' with the closest match first."""
    ordered = closest_first(value, choices)
    return f"unknown {kind} {shorten(value)!r}; valid choices (closest first): {', '.join(ordered)}"


def writable_dir(path: "os.PathLike[str] | str", *, field: str, hint: str,
                 create: bool = True) -> None:
    """Create `path` if needed and check it is writable, as one-line UserErrors naming `field`.
    `create=False` only checks that it could be created (nothing is written: a mistake found
    later must leave no empty directory behind)."""
    if not create:
        probe = os.path.abspath(path)
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise UserError("cannot create output directory: a file is in the way", file=str(probe),
                            field=field, hint=hint)
        if not os.access(probe, os.W_OK):
            raise UserError("output directory is not writable", file=str(probe), field=field,
                            hint=hint)
        return
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory: {e.strerror}", file=str(path),
                        field=field) from None
    if not os.access(path, os.W_OK):
        raise UserError("output directory is not writable", file=str(path), field=field, hint=hint)
