"""What the registries hold, as a committed file: `composer-run --list` answers from it in a
fraction of a second, without importing torch and Composer (seconds) to fill the live registries.

`catalog.json` is generated from the live registries (`python -m effrecipes.catalog`), and
`tests/test_catalog.py` fails when it differs from them, so it cannot go stale unnoticed.
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

CATALOG_FILE = Path(__file__).with_name("catalog.json")
KINDS = ("algorithms", "models", "datasets", "optimizers", "schedulers")


def build() -> dict[str, list[dict[str, str]]]:
    """Names and descriptions of every kind, read from the live registries (imports them all)."""
    from effrecipes import registry  # lazy: filling the registries imports torch and Composer

    return {kind: [{"name": e.name, "description": e.description} for e in registry.ALL[kind].entries()]
            for kind in KINDS}


def read(kind: str, pattern: str = "*") -> list[dict[str, str]]:
    """The catalog's entries of one kind whose names match a glob pattern."""
    entries = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))[kind]
    return [e for e in entries if fnmatch.fnmatch(e["name"], pattern)]


def write() -> Path:
    CATALOG_FILE.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    return CATALOG_FILE


if __name__ == "__main__":
    print(f"wrote {write()}")
