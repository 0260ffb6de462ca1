"""Masks keep pruned weights at exactly zero through training; baking makes plain weights."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from mobiledl.compress.prune import (
    Granularity,
    apply_masks,
    compute_masks,
    current_masks,
    remove_masks,
    sparsity_of,
    weight_scores,
)
from mobiledl.errors import UserError


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))


def half_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    scores = weight_scores(model, "l1")
    return compute_masks(scores, Granularity.parse("element"), 0.5, scope="layer")


def test_pruned_weights_stay_exactly_zero_after_optimizer_steps() -> None:
    model = small_model()
    apply_masks(model, half_masks(model))
    masks = current_masks(model)
    before = model[3].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(5):
        loss = model(torch.randn(8, 2, 4, 4)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, mask in masks.items():
        weight = model.get_submodule(name.removesuffix(".weight")).weight
        assert weight[mask == 0].eq(0).all()
    kept = masks["3.weight"] == 1
    assert not torch.equal(model[3].weight[kept], before[kept])


def test_remove_masks_bakes_zeros_into_plain_weights() -> None:
    model = small_model()
    keys = set(model.state_dict())
    apply_masks(model, half_masks(model))
    remove_masks(model)
    assert set(model.state_dict()) == keys
    assert not parametrize.is_parametrized(model[0])
    assert sparsity_of(model) == pytest.approx(0.5, abs=0.01)


def test_apply_masks_replaces_an_existing_mask() -> None:
    model = small_model()
    apply_masks(model, half_masks(model))
    apply_masks(model, {"3.weight": torch.ones(3, 16)})
    assert model[3].weight.ne(0).all()


def test_sparsity_counts_only_conv_and_linear_weights() -> None:
    model = small_model()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    total = model[0].weight.numel() + model[3].weight.numel()
    assert sparsity_of(model) == pytest.approx(model[0].weight.numel() / total)
    assert sparsity_of(model, exclude=("0",)) == 0.0


def test_bad_masks_are_user_errors() -> None:
    model = small_model()
    with pytest.raises(UserError, match="mask of '3.weight' has shape"):
        apply_masks(model, {"3.weight": torch.ones(2, 2)})
    with pytest.raises(UserError, match="no layer 'nope'"):
        apply_masks(model, {"nope.weight": torch.ones(2, 2)})
