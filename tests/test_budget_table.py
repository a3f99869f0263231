"""`composer-run --budget-table`: paper 000's Tables I-II with our counts beside the paper's."""
import pytest

from effrecipes.budget_table import budget_table
from effrecipes.cli import main


def test_rows_and_paper_columns() -> None:
    rows = budget_table("kuzushiji49", ["squeezenet", "gap_1p5k_dw"], 1e14)
    sq, gap = rows
    assert sq.paper_gflops_per_epoch == 474 and sq.paper_params == 823044
    assert sq.paper_epochs == pytest.approx(1e14 / 474e9)
    assert gap.paper_gflops_per_epoch is None
    for r in rows:
        assert r.epochs_affordable == pytest.approx(1e14 / (r.gflops_per_epoch * 1e9))
        assert r.gflops_per_epoch == pytest.approx(r.train_flops_per_sample * round(232365 * 0.9) / 1e9)


def test_stock_stem_is_cheaper_on_small_images() -> None:
    small = budget_table("kuzushiji49", ["mobilenet_v3_small"], 1e14)[0]
    stock = budget_table("kuzushiji49", ["mobilenet_v3_small"], 1e14, stock_stem=True)[0]
    assert stock.train_flops_per_sample < small.train_flops_per_sample / 2


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--budget-table", "--models", "gap_1p5k*,squeezenet", "--dataset", "kuzushiji49",
                 "--flops", "100T"]) == 0
    out = capsys.readouterr().out
    assert "| squeezenet |" in out and "| gap_1p5k_dw |" in out and "FlopCounterMode" in out
    assert main(["--budget-table", "--models", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
