"""`composer-run --list` answers from the committed catalog: it must equal the live registries,
and listing must not import torch (that import alone takes seconds)."""
from __future__ import annotations

import json
import subprocess
import sys

from effrecipes import catalog


def test_catalog_equals_the_live_registries() -> None:
    on_disk = json.loads(catalog.CATALOG_FILE.read_text())
    assert on_disk == catalog.build(), (
        "effrecipes/catalog.json is stale: run `python -m effrecipes.catalog` and commit it")


def test_list_imports_neither_torch_nor_composer() -> None:
    code = ("import sys, io, contextlib\n"
            "from effrecipes.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    rc = main(['--list', 'algorithms', '--json'])\n"
            "names = [e['name'] for e in __import__('json').loads(buf.getvalue())]\n"
            "assert 'blurpool' in names and 'sam' in names, names\n"
            "heavy = sorted(m for m in ('torch', 'composer', 'torchvision') if m in sys.modules)\n"
            "print(rc, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] in ("0 []", "None []"), out.stdout + out.stderr


def test_pattern_filters() -> None:
    names = [e["name"] for e in catalog.read("models", "gap_*")]
    assert names and all(n.startswith("gap_") for n in names)
    assert catalog.read("models", "no_such_*") == []
