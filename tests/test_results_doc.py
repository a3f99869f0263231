"""docs/results.md's tables are exactly what benchmarks/fashion_mnist_study.py writes from the
committed matrices' results.json: no number in the document was typed by hand."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_results_tables_regenerate_from_committed_results(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("study", REPO / "benchmarks" / "fashion_mnist_study.py")
    assert spec and spec.loader
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    doc = tmp_path / "results.md"
    shutil.copy(REPO / "docs" / "results.md", doc)
    assert study.main(["--doc", str(doc), "--results", str(REPO / "results" / "matrices")]) == 0
    assert doc.read_text() == (REPO / "docs" / "results.md").read_text()
    text = doc.read_text()
    for key in study.SECTIONS:  # every section is present and filled
        body = text.split(f"<!-- BEGIN {key} -->")[1].split(f"<!-- END {key} -->")[0]
        assert body.count("\n|") >= 2 and "not run yet" not in body, key
