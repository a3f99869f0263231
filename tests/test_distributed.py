"""One run over two data-parallel ranks through Composer's launcher (`composer -n 2`, CPU, gloo):
each rank trains on its own share of the data and the budget charges the global batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_recipe, write_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_charge_the_global_batch(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, **{"budget.flops": 1e8})
    path = write_recipe(tmp_path, recipe)
    launcher = Path(sys.executable).with_name("composer")
    env = {**os.environ, "EFFRECIPES_THREADS": "1"}
    proc = subprocess.run([str(launcher), "-n", "2", "--master_addr", "127.0.0.1", "--master_port",
                           str(_free_port()), "-m", "effrecipes.cli", str(path), "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    per_sample = m["measured_flops_per_sample"]["1x12x12"]
    batch = recipe["data"]["batch_size"]
    assert m["samples"] == m["batches"] * batch * 2  # both ranks' samples
    assert m["flops_used"] == pytest.approx(m["samples"] * per_sample)
    assert m["flops_used"] <= 1e8 and 1e8 - m["flops_used"] < 2 * batch * per_sample
    # only rank 0 wrote a run directory
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]


def test_loader_shards_are_disjoint() -> None:
    import torch

    from effrecipes.data.loader import BatchLoader

    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    labels = torch.arange(40)
    seen = []
    for rank in (0, 1):
        loader = BatchLoader(images, labels, 4, mean=(0.0,), std=(1.0,), shuffle=True, drop_last=True,
                             seed=3, rank=rank, world_size=2)
        assert len(loader) == 5
        seen.append(torch.cat([y for _, y in loader]))
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert len(seen[0]) + len(seen[1]) == 40
