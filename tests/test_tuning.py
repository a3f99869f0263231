"""Per-arm tuning in ablation matrices (issue #17): every technique set gets the same search, the
setting is selected on validation accuracy, test accuracy is reported beside the untuned one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from effrecipes.errors import RecipeError
from effrecipes.matrix.spec import validate_spec
from effrecipes.stats import tuned


def _group(tech: str, lr: str, val: float, test: float, n: int = 2, flops: float = 1e9) -> dict[str, Any]:
    return {"techniques": tech, "optimizer.lr": lr, "n": n, "best_val_accuracy_mean": val,
            "test_accuracy_mean": test, "test_accuracy_std": 0.1, "flops_used_mean": flops}


def test_selection_uses_validation_never_test_and_reports_both_settings() -> None:
    groups = [_group("baseline", "0.05", val=80, test=79), _group("baseline", "0.5", val=85, test=84),
              # sam: the best TEST accuracy is at 0.05, but validation picks 0.5
              _group("sam", "0.05", val=81, test=90), _group("sam", "0.5", val=86, test=83)]
    rows = {r["techniques"]: r for r in tuned(groups, ["optimizer.lr"], ["optimizer.lr"], "baseline",
                                              {"optimizer.lr": "0.05"})}
    sam, base = rows["sam"], rows["baseline"]
    assert sam["selected"] == {"optimizer.lr": "0.5"} and sam["tuned_test_mean"] == 83
    assert sam["untuned_test_mean"] == 90 and base["untuned_test_mean"] == 79
    # each arm against the baseline's own selected (tuned) / default (untuned) setting
    assert sam["tuned_delta_mean"] == pytest.approx(83 - 84)
    assert sam["untuned_delta_mean"] == pytest.approx(90 - 79)
    assert sam["tuned_within_noise"] is False and base["tuned_delta_mean"] is None
    assert sam["tuning_flops"] == 2 * 2 * 1e9 and sam["flops_per_result"] == 1e9


def test_other_grid_keys_stay_table_dimensions() -> None:
    groups = [_group("baseline", lr, 80 + i, 70) | {"model.name": m}
              for m in ("a", "b") for i, lr in enumerate(("0.05", "0.5"))]
    rows = tuned(groups, ["model.name", "optimizer.lr"], ["optimizer.lr"], "baseline",
                 {"optimizer.lr": "0.05"})
    assert [(r["model.name"], r["selected"]["optimizer.lr"]) for r in rows] == [("a", "0.5"), ("b", "0.5")]


def test_tune_keys_must_be_grid_keys(tmp_path: Path) -> None:
    spec = {"name": "m", "base": "b.yaml", "grid": {"optimizer.lr": [0.05, 0.5]},
            "tune": ["optimizer.lr"]}
    assert validate_spec(spec).tune == ["optimizer.lr"]
    with pytest.raises(RecipeError, match="tune lists 'optimizer.weight_decay', which the grid does not vary"):
        validate_spec({**spec, "tune": ["optimizer.weight_decay"]})


@pytest.mark.slow
def test_a_tuned_matrix_writes_the_tuned_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from effrecipes.matrix.cli import main
    from tests.conftest import tiny_recipe, write_recipe

    write_recipe(tmp_path, tiny_recipe(tmp_path, **{"budget.flops": 5e7}), "base.yaml")
    spec = {"name": "t", "base": "base.yaml", "output": str(tmp_path / "matrices"),
            "algorithms": {"mode": "one_at_a_time", "pool": {"label_smoothing": {"smoothing": 0.1}}},
            "grid": {"optimizer.lr": [0.05, 0.2]}, "tune": ["optimizer.lr"], "seeds": [0, 1]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main([str(tmp_path / "spec.yaml"), "--workers", "1"]) == 0
    mdir = tmp_path / "matrices" / "t"
    res = json.loads((mdir / "results.json").read_text())
    rows = {r["techniques"]: r for r in res["tuned"]}
    assert set(rows) == {"baseline", "label_smoothing"} and res["tune"] == ["optimizer.lr"]
    for r in rows.values():
        groups = [g for g in res["aggregate"] if g["techniques"] == r["techniques"]]
        best = max(groups, key=lambda g: g["best_val_accuracy_mean"])
        assert r["selected"] == {"optimizer.lr": best["optimizer.lr"]}
        assert r["tuning_flops"] == pytest.approx(sum(g["flops_used_mean"] * g["n"] for g in groups))
        assert r["untuned_test_mean"] == next(g["test_accuracy_mean"] for g in groups
                                              if g["optimizer.lr"] == "0.05")
    md = (mdir / "results.md").read_text()
    assert "## Tuned per arm: optimizer.lr" in md and "FLOPs tuning" in md
    from effrecipes.report.cli import main as report_main

    assert report_main([str(mdir), "--out", str(tmp_path / "rep")]) == 0
    rep = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    sel = rows["label_smoothing"]["selected"]["optimizer.lr"]
    assert "## Tuned per arm" in rep and f"optimizer.lr={sel}" in rep and "Δ untuned" in rep
    assert "<h2>Tuned per arm</h2>" in html and "untuned test %" in html
