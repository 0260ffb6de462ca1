"""``clone_module``: lowering or re-parametrizing a copy never breaks the original."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from mobiledl.core.clone import clone_module
from mobiledl.deploy.lowering import lower_model


class _Double(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def _parametrized() -> nn.Sequential:
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    parametrize.register_parametrization(model[0], "weight", _Double())
    return model


def test_removing_a_parametrization_of_the_clone_leaves_the_original_working() -> None:
    model, x = _parametrized(), torch.randn(1, 1, 5, 5)
    expected = model(x)
    clone = clone_module(model)
    parametrize.remove_parametrizations(clone[0], "weight", leave_parametrized=True)
    assert type(clone[0]) is nn.Conv2d
    assert torch.equal(model(x), expected) and torch.equal(clone(x), expected)


def test_lowering_twice_leaves_the_model_parametrized() -> None:
    model, x = _parametrized(), torch.randn(1, 1, 5, 5)
    expected = model(x)
    for _ in range(2):
        assert torch.equal(lower_model(model).model(x), expected)
    assert parametrize.is_parametrized(model[0]) and torch.equal(model(x), expected)
