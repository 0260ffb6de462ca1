"""Each granularity zeroes exactly its pattern; scopes, per-layer targets and growing masks."""

import pytest
import torch

from mobiledl.compress.prune import Granularity, compute_masks
from mobiledl.errors import UserError


def conv_scores(seed: int = 0) -> torch.Tensor:
    return torch.rand(8, 8, 3, 3, generator=torch.Generator().manual_seed(seed))


def masks_for(granularity: str, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    return compute_masks({"a.weight": scores}, Granularity.parse(granularity), sparsity)["a.weight"]


def test_element_prunes_the_lowest_scores() -> None:
    scores = torch.arange(20.0).reshape(4, 5)
    mask = masks_for("element", scores, 0.25)
    assert mask.flatten()[:5].eq(0).all() and mask.flatten()[5:].eq(1).all()


@pytest.mark.parametrize(
    ("granularity", "group_shape"),
    [("vector", (-1, 3)), ("kernel", (-1, 9)), ("filter", (8, -1))],
)
def test_structured_granularities_zero_whole_groups(granularity: str, group_shape: tuple) -> None:
    mask = masks_for(granularity, conv_scores(), 0.5)
    groups = mask.reshape(group_shape).sum(dim=1)
    size = mask.reshape(group_shape).shape[1]
    assert ((groups == 0) | (groups == size)).all()
    assert (groups == 0).float().mean().item() == 0.5


def test_kernel_granularity_removes_the_weakest_kernels() -> None:
    scores = torch.ones(2, 2, 3, 3)
    scores[1, 0] = 0.1
    mask = masks_for("kernel", scores, 0.25)
    assert mask[1, 0].eq(0).all() and mask.sum() == 27


def test_2_4_keeps_exactly_the_two_largest_of_every_four_inputs() -> None:
    scores = conv_scores()
    mask = masks_for("2:4", scores, 0.5)
    groups = mask.permute(0, 2, 3, 1).reshape(-1, 4)
    assert (groups.sum(dim=1) == 2).all()
    score_groups = scores.permute(0, 2, 3, 1).reshape(-1, 4)
    kept = torch.zeros_like(score_groups).scatter(1, score_groups.topk(2, dim=1).indices, 1.0)
    assert torch.equal(groups, kept)


def test_n_m_on_a_linear_layer_and_partial_pattern() -> None:
    scores = torch.rand(6, 8, generator=torch.Generator().manual_seed(1))
    assert (masks_for("1:4", scores, 0.75).reshape(-1, 4).sum(dim=1) == 1).all()
    half = masks_for("1:4", scores, 0.375).reshape(-1, 4).sum(dim=1)
    assert (half >= 1).all() and half.sum() == 48 - 18


def test_n_m_skips_layers_whose_input_is_not_a_multiple_of_m() -> None:
    scores = {"a.weight": torch.rand(4, 3), "b.weight": torch.rand(4, 8)}
    masks = compute_masks(scores, Granularity.parse("2:4"), 0.5)
    assert set(masks) == {"b.weight"}


def test_n_m_rejects_more_sparsity_than_its_pattern() -> None:
    with pytest.raises(UserError, match="2:4 allows at most 0.5"):
        masks_for("2:4", conv_scores(), 0.6)


def test_global_scope_ranks_layers_together_and_layer_scope_does_not() -> None:
    scores = {"a.weight": torch.full((10,), 0.1), "b.weight": torch.full((10,), 5.0)}
    element = Granularity.parse("element")
    global_masks = compute_masks(scores, element, 0.5, scope="global")
    assert global_masks["a.weight"].sum() == 0 and global_masks["b.weight"].sum() == 10
    layer_masks = compute_masks(scores, element, 0.5, scope="layer")
    assert layer_masks["a.weight"].sum() == 5 and layer_masks["b.weight"].sum() == 5


def test_per_layer_targets_leave_unlisted_layers_alone() -> None:
    scores = {"a.weight": torch.rand(10), "b.weight": torch.rand(10)}
    masks = compute_masks(scores, Granularity.parse("element"), {"a.weight": 0.3})
    assert set(masks) == {"a.weight"} and masks["a.weight"].sum() == 7
    with pytest.raises(UserError, match="'c.weight'"):
        compute_masks(scores, Granularity.parse("element"), {"c.weight": 0.3})


def test_masks_only_grow() -> None:
    scores = torch.arange(10.0)
    current = torch.ones(10)
    current[9] = 0
    mask = compute_masks(
        {"a.weight": scores}, Granularity.parse("element"), 0.2, "layer", {"a.weight": current}
    )
    assert mask["a.weight"][9] == 0 and mask["a.weight"][0] == 0 and mask["a.weight"].sum() == 8


@pytest.mark.parametrize("text", ["bad", "3:2", "0:4", "2:"])
def test_bad_granularity_names_itself(text: str) -> None:
    with pytest.raises(UserError, match=f"unknown granularity '{text}'"):
        Granularity.parse(text)


def test_channel_is_not_a_mask_granularity() -> None:
    with pytest.raises(UserError, match="filter"):
        masks_for("channel", conv_scores(), 0.5)
