"""User-facing errors.

Every mistake a user can make (bad recipe, missing data, unwritable output) is raised as a
`UserError`; the CLIs print its one-line message and exit with code 2, never a traceback.
"""
from __future__ import annotations

import difflib
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
            parts.append(str(file))
        if field:
            parts.append(field)
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        if hint:
            text = f"{text} ({hint})"
        super().__init__(" ".join(text.split()))  # always one line


    def in_file(self, file: str) -> "UserError":
        """The same error, naming `file` when it named none (e.g. a data error found mid-build)."""
        if self.file:
            return self
        return type(self)(self.message, file=file, field=self.field, hint=self.hint)


class RecipeError(UserError):
    """The recipe (file, override or spec) is invalid."""


class DataError(UserError):
    """A dataset cannot be found, read or downloaded."""


def closest_first(value: str, choices: Iterable[str], limit: int | None = None) -> list[str]:
    """Valid choices ordered by similarity to `value` (closest match first)."""
    choices = sorted(set(choices))
    def score(c: str) -> tuple[bool, float, str]:
        prefix = c.startswith(value) or value.startswith(c)  # 'gap_1p5k' -> 'gap_1p5k_dw' first
        return (not prefix, -difflib.SequenceMatcher(None, value, c).ratio(), c)

    scored = sorted(choices, key=score)
    return scored[:limit] if limit else scored


def unknown_name_message(kind: str, value: str, choices: Iterable[str]) -> str:
    """'unknown model 'x'; valid: closest, next, ...' with the closest match first."""
    ordered = closest_first(value, choices)
    return f"unknown {kind} {value!r}; valid choices (closest first): {', '.join(ordered)}"


def writable_dir(path: "os.PathLike[str] | str", *, field: str, hint: str) -> None:
    """Create `path` if needed and check it is writable, as one-line UserErrors naming `field`."""
    import os

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory: {e.strerror}", file=str(path),
                        field=field) from None
    if not os.access(path, os.W_OK):
        raise UserError("output directory is not writable", file=str(path), field=field, hint=hint)
