"""Per-layer sensitivity analysis, its plot, and the sparsity allocation derived from it."""

from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl.compress.prune import (
    SensitivityResult,
    allocate_sparsity,
    plot_sensitivity,
    sensitivity_analysis,
)
from mobiledl.data import Task
from mobiledl.errors import UserError


def hand_result() -> SensitivityResult:
    return SensitivityResult(
        baseline=0.9,
        sparsities=[0.25, 0.5, 0.75],
        accuracy={"a.weight": [0.9, 0.9, 0.5], "b.weight": [0.9, 0.5, 0.5]},
        sizes={"a.weight": 100, "b.weight": 100},
        granularity="element",
        criterion="l1",
        split="val",
    )


def test_allocation_scales_each_layers_tolerated_sparsity_to_the_target() -> None:
    allocation = allocate_sparsity(hand_result(), target=0.5, tolerance=0.01)
    assert allocation["a.weight"] == pytest.approx(2 / 3, abs=1e-6)
    assert allocation["b.weight"] == pytest.approx(1 / 3, abs=1e-6)


def test_unreachable_target_is_a_user_error() -> None:
    with pytest.raises(UserError, match="out of reach"):
        allocate_sparsity(hand_result(), target=0.99)


def test_sensitivity_prunes_one_layer_at_a_time_and_plots(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    task = Task("sign", 2, x, y, x, y, x, y)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    result = sensitivity_analysis(model, task, sparsities=(0.0, 0.5, 0.9))
    assert set(result.accuracy) == {"0.weight", "2.weight"}
    assert all(accs[0] == result.baseline for accs in result.accuracy.values())
    assert result.sizes == {"0.weight": 32, "2.weight": 16}
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    for suffix in (".png", ".svg"):
        assert plot_sensitivity(result, tmp_path / f"s{suffix}").stat().st_size > 0
    with pytest.raises(UserError, match=".png or .svg"):
        plot_sensitivity(result, tmp_path / "s.jpg")
