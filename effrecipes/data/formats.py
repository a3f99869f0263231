"""Readers and writers for the datasets' real on-disk formats.

Readers follow the published formats (not torchvision's classes) so that synthetic files written
by the writers here, files fetched by hand, and Debian's packaged copies all load the same way,
without md5 checks. Writers exist so tests and users can produce valid files.

- IDX (MNIST, Fashion-MNIST, KMNIST): big-endian header `0x00 0x00 <type> <ndim>`, `ndim`
  big-endian uint32 sizes, then the data, optionally gzip-compressed.
- CIFAR-10/100 "python version": pickled dicts (Python 2 `cPickle`, protocol 2). Loading uses a
  restricted unpickler that only accepts the plain types and numpy arrays these files contain,
  so a hostile file cannot run code.
- Kuzushiji-49: `np.savez_compressed` files with the array under `arr_0` (no pickles allowed).
"""
from __future__ import annotations

import gzip
import zlib
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from effrecipes.errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

# --------------------------------------------------------------------------- IDX

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[str, int] = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_maybe_gzip(path: Path) -> bytes:
    """File bytes, gunzipped when the file starts with the gzip magic (whatever its suffix)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a corrupt compressed stream
        raise DataError(f"cannot read {path}: {e}", field="data.root",
                        hint="the file is corrupt; delete it and download it again") from None


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian numpy array of its declared shape."""
    p = Path(path)
    raw = _read_maybe_gzip(p)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{p} is not an IDX file (bad magic number)", field="data.root",
                        hint="re-download the dataset")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise DataError(f"{p}: unknown IDX data type 0x{type_code:02x}", field="data.root")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{p}: truncated IDX header", field="data.root")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{p}: IDX header says {dims} ({expected} data bytes) but the file holds "
                        f"{len(raw) - header}", field="data.root", hint="the file is truncated or "
                        "corrupt; re-download it")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return np.array(arr.reshape(dims), dtype=dtype.newbyteorder("="))  # writable, native order


def write_idx(path: PathLike, array: np.ndarray) -> Path:
    """Write `array` as an IDX file; gzip-compressed when `path` ends in `.gz`."""
    a = np.asarray(array)
    key = f"{a.dtype.kind}{a.dtype.itemsize}"
    if key not in _IDX_CODES:
        raise ValueError(f"IDX cannot store dtype {a.dtype}")
    payload = struct.pack(">BBBB", 0, 0, _IDX_CODES[key], a.ndim)
    payload += struct.pack(f">{a.ndim}I", *a.shape)
    payload += a.astype(a.dtype.newbyteorder(">"), copy=False).tobytes()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".gz":
        with gzip.open(p, "wb", compresslevel=1) as g:
            g.write(payload)
    else:
        p.write_bytes(payload)
    return p


# --------------------------------------------------------------------------- CIFAR pickles

class _SafeUnpickler(pickle.Unpickler):
    """Only the globals a CIFAR pickle needs: numpy array reconstruction and bytes decoding."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = module.replace("numpy.core", "numpy._core", 1)  # numpy 2 without the warning
        return super().find_class(module, name)


def _plain(obj: Any) -> Any:
    """Python 2 pickles give bytes keys/strings; make them str."""
    if isinstance(obj, bytes):
        return obj.decode("latin1")
    if isinstance(obj, dict):
        return {_plain(k): (v if isinstance(v, np.ndarray) else _plain(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def read_cifar_pickle(path: PathLike) -> dict[str, Any]:
    """Load one CIFAR pickle (batch or meta) safely, with str keys and str names."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror}", field="data.root") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{p} is not a CIFAR pickle ({e})", field="data.root",
                        hint="re-download the dataset") from None
    if not isinstance(obj, dict):
        raise DataError(f"{p} is not a CIFAR pickle (expected a dict)", field="data.root")
    return _plain(obj)


def cifar_images(batch: dict[str, Any], path: PathLike) -> np.ndarray:
    """`data` rows (N x 3072, channel-major R,G,B planes) -> uint8 N x 3 x 32 x 32."""
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected N x 3072", field="data.root")
    return np.ascontiguousarray(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))


def read_cifar_batch(path: PathLike, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (uint8 N x 3 x 32 x 32 images, int64 N labels)."""
    batch = read_cifar_pickle(path)
    if label_key not in batch:
        raise DataError(f"{path}: no {label_key!r} entry (keys: {', '.join(sorted(batch))})",
                        field="data.root")
    x = cifar_images(batch, path)
    y = np.asarray(batch[label_key], dtype=np.int64)
    if len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels", field="data.root")
    return x, y


def _dump(path: Path, obj: dict[bytes, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint8)
    if x.ndim != 4 or x.shape[1:] != (3, 32, 32):
        raise ValueError(f"CIFAR images must be N x 3 x 32 x 32 uint8, got {x.shape}")
    return x.reshape(len(x), -1)


def write_cifar10(root: PathLike, train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray,
                  test_y: Sequence[int], label_names: Sequence[str]) -> Path:
    """Write `<root>/cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) like the
    original: bytes keys, labels as a list, `data` as N x 3072 uint8, training set in 5 batches."""
    d = Path(root) / "cifar-10-batches-py"
    rows, labels = _cifar_rows(train_x), [int(v) for v in train_y]
    for i, part in enumerate(np.array_split(np.arange(len(rows)), 5), start=1):
        _dump(d / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(), b"labels": [labels[j] for j in part],
            b"data": rows[part], b"filenames": [f"img_{j}.png".encode() for j in part]})
    _dump(d / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in test_y],
        b"data": _cifar_rows(test_x), b"filenames": [f"t_{j}.png".encode() for j in range(len(test_y))]})
    _dump(d / "batches.meta", {b"num_cases_per_batch": 10000, b"num_vis": 3072,
                               b"label_names": [n.encode() for n in label_names]})
    return d


def write_cifar100(root: PathLike, train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray,
                   test_y: Sequence[int], fine_label_names: Sequence[str]) -> Path:
    """Write `<root>/cifar-100-python/` (train, test, meta) with fine labels (coarse = fine // 5)."""
    d = Path(root) / "cifar-100-python"
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        fine = [int(v) for v in y]
        _dump(d / split, {b"filenames": [f"{split}_{j}.png".encode() for j in range(len(fine))],
                          b"batch_label": f"{split}ing batch 1 of 1".encode(),
                          b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine],
                          b"data": _cifar_rows(x)})
    _dump(d / "meta", {b"fine_label_names": [n.encode() for n in fine_label_names],
                       b"coarse_label_names": [f"coarse_{i}".encode()
                                               for i in range((len(fine_label_names) + 4) // 5)]})
    return d


# --------------------------------------------------------------------------- Kuzushiji-49 npz

def read_npz_array(path: PathLike, key: str = "arr_0") -> np.ndarray:
    """The array stored under `key` in an .npz file (object arrays/pickles refused)."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            if key not in z.files:
                raise DataError(f"{p}: no array {key!r} (has {', '.join(z.files)})", field="data.root")
            return z[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {p} as .npz ({e})", field="data.root",
                        hint="re-download the dataset") from None


def write_k49(root: PathLike, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
              test_y: np.ndarray) -> Path:
    """Write the four Kuzushiji-49 files (`k49-{train,test}-{imgs,labels}.npz`, key `arr_0`)."""
    d = Path(root)
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in (("k49-train-imgs", train_x), ("k49-train-labels", train_y),
                      ("k49-test-imgs", test_x), ("k49-test-labels", test_y)):
        buf = io.BytesIO()
        np.savez_compressed(buf, np.asarray(arr))  # positional -> key arr_0, like the originals
        (d / f"{name}.npz").write_bytes(buf.getvalue())
    return d
