"""The one bounded reader of the files effrecipes reads back from disk.

`composer-ablate` (the matrix state: cell records, failure records, run directories, metrics) and
`composer-report` (results.json, matrix.json, spec.yaml, metrics.json's neighbours recipe.yaml
and history.csv) read files that any tool, crash or person may have left in any state. Every such
read goes through `read_text` here: regular files only (a symlink is followed, but its target must
be a regular file: a FIFO never blocks, /dev/zero is never read), at most `limit` bytes (checked
while reading), UTF-8; and every parse (`read_json`, `read_yaml`, `read_csv`) turns any failure of
the parser (too deeply nested, a bad explicit YAML tag, ...) into `Unreadable`. The bytes are read
by `effrecipes.recipe.read_file_bytes`, the reader recipes use.

The `*_or_none` helpers are for files that are allowed to be missing or broken: the caller falls
back to what else it has (and may note why with `problem`).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from effrecipes.errors import UserError
from effrecipes.recipe import MAX_RECIPE_BYTES, load_yaml_text, read_file_bytes

MAX_JSON_BYTES = 64 << 20    # results.json of the largest matrix is a few MB
MAX_CSV_BYTES = 64 << 20     # history.csv: one short row per evaluation
MAX_YAML_BYTES = MAX_RECIPE_BYTES  # recipe.yaml / spec.yaml: what a recipe may be

# Everything a parser raises on hostile input: nesting (RecursionError), bad explicit YAML tags
# (`!!float abc`: ValueError, `!!timestamp abc`: AttributeError/TypeError, `!!bool maybe`:
# KeyError), bad text (UnicodeError), and the parsers' own errors.
PARSE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError,
                OverflowError, MemoryError, UnicodeError, yaml.YAMLError, csv.Error)


class Unreadable(Exception):
    """A file that is missing or cannot be read or parsed: `reason` says why, in a few words."""

    def __init__(self, path: Path | str, reason: str, *, missing: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.missing = Path(path), reason, missing


def read_text(path: Path | str, limit: int) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; Unreadable otherwise."""
    p = str(path)
    try:
        exists = os.path.lexists(p)
    except (ValueError, TypeError):  # a NUL byte in the path
        raise Unreadable(p, "invalid file name") from None
    if not exists:
        raise Unreadable(p, "missing", missing=True)
    try:
        raw = read_file_bytes(p, limit)
    except UserError as e:  # its reason without the advice meant for recipes
        raise Unreadable(p, e.message.split(";")[0]) from None
    except (OSError, ValueError) as e:
        raise Unreadable(p, f"cannot read ({type(e).__name__})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(p, f"not UTF-8 text (byte {e.start})") from None


def _parse(path: Path | str, text: str, parse: Callable[[str], Any], what: str) -> Any:
    try:
        return parse(text)
    except PARSE_ERRORS as e:
        kind = "nested too deeply" if isinstance(e, RecursionError) else f"invalid {what}"
        raise Unreadable(path, kind) from None


def read_json(path: Path | str, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file's value (NaN and Infinity allowed, as Python writes them); Unreadable otherwise."""
    return _parse(path, read_text(path, limit), json.loads, "JSON")


def read_yaml(path: Path | str, loader: Callable[[str], Any] = load_yaml_text,
              limit: int = MAX_YAML_BYTES) -> Any:
    """A YAML file's value, parsed by `loader` (default: the recipe loader, which reads a spec or
    a recipe as `composer-run` and `composer-ablate` do; `yaml.safe_load` for files written by
    `yaml.safe_dump`); Unreadable otherwise."""
    return _parse(path, read_text(path, limit), loader, "YAML")


def read_csv(path: Path | str, limit: int = MAX_CSV_BYTES) -> list[dict[str, str]]:
    """A CSV file with a header row, as one dict per row; Unreadable otherwise."""
    text = read_text(path, limit)
    if "\0" in text:
        raise Unreadable(path, "invalid CSV (NUL bytes)")
    return _parse(path, text, lambda t: list(csv.DictReader(io.StringIO(t, newline=""))), "CSV")


def read_dict(path: Path | str, read: Callable[[Path | str], Any] = read_json
              ) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(the mapping a JSON or YAML file holds, None) or (None, why not): the reason is None when
    the file is missing, else a few words for a report's note."""
    try:
        data = read(path)
    except Unreadable as e:
        return None, None if e.missing else e.reason
    return (data, None) if isinstance(data, dict) else (None, "not a mapping")


def json_dict_or_none(path: Path | str) -> Optional[dict[str, Any]]:
    """A JSON file holding an object, or None (missing, unreadable, not an object)."""
    return read_dict(path, read_json)[0]


def yaml_dict_or_none(path: Path | str, loader: Callable[[str], Any] = load_yaml_text
                      ) -> Optional[dict[str, Any]]:
    """A YAML file holding a mapping, or None (missing, unreadable, not a mapping)."""
    return read_dict(path, lambda p: read_yaml(p, loader))[0]
