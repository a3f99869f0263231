"""Checkpoints are read with torch's safe unpickler before anything else reads them.

Composer loads checkpoints with `torch.load(weights_only=False)`, which runs whatever code a
pickle names: a crafted `resume.pt` (in a run directory, or a matrix cell that `composer-ablate`
resumes) would run code on `--resume`. `verify_checkpoint` first loads the file with
`weights_only=True` and an allow-list of the plain types a Composer checkpoint holds (tensors,
numbers, strings, numpy arrays of the RNG states, `datetime.timedelta` of the timestamp, torch's
version string); anything else, or a corrupt file, is a one-line error and the file is never
unpickled with code execution allowed.
"""
from __future__ import annotations

import datetime
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.torch_version import TorchVersion

from effrecipes.errors import UserError

SAFE_GLOBALS: list = [datetime.timedelta, TorchVersion, np.ndarray, np.dtype,
                      np._core.multiarray._reconstruct, np._core.multiarray.scalar,
                      *(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType"))]


def verify_checkpoint(path: Path) -> None:
    """Raise a one-line UserError unless `path` loads with the safe unpickler."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        what = str(e).split("WeightsUnpickler error: ")[-1].split(".")[0][:160]
        raise UserError(f"refusing to load: it holds objects outside the safe list ({what}); a run "
                        "directory's checkpoint never does, so it was altered",
                        file=str(path), hint="train the run again without --resume") from None
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"the checkpoint is unreadable or corrupt ({type(e).__name__})",
                        file=str(path), hint="train the run again without --resume") from None
