"""Decoded-tensor cache: decode a dataset's files once, reload the uint8 tensors afterwards.

The cache lives next to the data (`<root>/.effrecipes_cache_<name>.pt`) or, when that directory
is read-only or package-managed (anything under /usr, e.g. /usr/share/datasets/...), under
`$EFFRECIPES_CACHE_DIR` (default `~/.cache/effrecipes/cache/`). It is keyed by a fingerprint of
the source files (names, sizes, mtimes), so replacing the files invalidates it. Writes are atomic
(tmp file + os.replace) and a cache that cannot be read or written is silently skipped: it is an
optimisation, never an error. Loading uses `torch.load(weights_only=True)`, which cannot run code.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def fallback_dir() -> Path:
    """Where caches go when the data directory is not writable."""
    env = os.environ.get("EFFRECIPES_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "effrecipes" / "cache"


def fingerprint(files: Iterable[Path]) -> list[list[Any]]:
    """[name, size, mtime_ns] per source file: cheap, and changes when a file is replaced."""
    out = []
    for f in sorted(Path(p) for p in files):
        st = f.stat()
        out.append([str(f.resolve()), int(st.st_size), int(st.st_mtime_ns)])
    return out


def _system_dir(path: Path) -> bool:
    """Package-managed trees (/usr/...) are never written to, even when running as root."""
    parts = path.resolve().parts
    return len(parts) > 1 and parts[1] == "usr"


def candidates(root: Path, name: str, *, writing: bool = False) -> list[Path]:
    """Cache files to try, in order: next to the data, then the per-user fallback."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:16]
    beside = [] if writing and _system_dir(Path(root)) else [Path(root) / f".effrecipes_cache_{name}.pt"]
    return beside + [fallback_dir() / f"{name}_{key}.pt"]


def load(root: Path, name: str, fp: list[list[Any]]) -> Optional[dict[str, Any]]:
    """The cached tensors for these source files, or None."""
    for path in candidates(root, name):
        if not path.is_file():
            continue
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt/partial/foreign file: ignore it, we can decode again
            log.warning("ignoring unreadable dataset cache %s: %s", path, e)
            continue
        if (isinstance(obj, dict) and obj.get("version") == CACHE_VERSION
                and obj.get("fingerprint") == fp):
            return obj
    return None


def save(root: Path, name: str, fp: list[list[Any]], tensors: dict[str, Any]) -> Optional[Path]:
    """Write the cache atomically to the first writable candidate; None when none is writable."""
    obj = {"version": CACHE_VERSION, "fingerprint": fp, **tensors}
    for path in candidates(root, name, writing=True):
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data dir's cache should be readable
            os.replace(tmp, path)
            return path
        except OSError as e:
            log.debug("cannot write dataset cache %s: %s", path, e)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    return None
