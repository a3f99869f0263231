"""The GAP CNNs of paper 004 have exactly the paper's parameter counts (Tables 1-3)."""
import pytest
import torch

from effrecipes.models import build_model, list_models
from effrecipes.models.gap_cnn import PAPER_PARAMS


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_param_count_matches_paper(name: str) -> None:
    channels, size = (3, 32) if name.startswith("gap_143k") else (1, 28)
    model = build_model(name, channels, 10, size)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[name]
    out = model(torch.zeros(2, channels, size, size))
    assert out.shape == (2, 10)


def test_registered_and_listed() -> None:
    assert set(PAPER_PARAMS) <= set(list_models("gap_*"))
    assert list_models("gap_143k*") == ["gap_143k", "gap_143k_dw"]


def test_any_input_size_and_classes() -> None:
    model = build_model("gap_1p5k_dw", 3, 7, 8)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 7)
