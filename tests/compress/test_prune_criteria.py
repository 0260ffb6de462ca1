"""Each criterion ranks a hand-made case right; the network-slimming L1 hook."""

import pytest
import torch
from torch import nn

from mobiledl.compress.prune import (
    bn_l1_regularization,
    hessian_diagonal,
    weight_scores,
)
from mobiledl.data import Task
from mobiledl.errors import UserError


def dead_input_task() -> Task:
    """Two features; the first is always zero, so its weights get no gradient or curvature."""
    generator = torch.Generator().manual_seed(0)
    x = torch.stack([torch.zeros(64), torch.randn(64, generator=generator)], dim=1)
    y = (x[:, 1] > 0).long()
    return Task("dead-input", 2, x, y, x, y, x, y)


def dead_input_model() -> nn.Module:
    """Large weights on the dead input, small weights on the live one."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0, 0.1], [-5.0, -0.1]]))
    return model


def test_magnitude_criteria() -> None:
    model = dead_input_model()
    l1 = weight_scores(model, "l1")["0.weight"]
    l2 = weight_scores(model, "l2")["0.weight"]
    assert torch.equal(l1, model[0].weight.abs().detach())
    assert torch.allclose(l2, model[0].weight.detach() ** 2)
    assert l1[0, 0] > l1[0, 1]


@pytest.mark.parametrize("criterion", ["taylor", "hessian"])
def test_data_criteria_prefer_the_live_weight_over_the_large_dead_one(criterion: str) -> None:
    scores = weight_scores(dead_input_model(), criterion, dead_input_task(), num_batches=2)
    score = scores["0.weight"]
    assert score[:, 0].eq(0).all()
    assert (score[:, 1] > 0).all()


def test_taylor_is_the_squared_gradient_times_weight() -> None:
    model, task = dead_input_model(), dead_input_task()
    scores = weight_scores(model, "taylor", task, num_batches=1, batch_size=64)
    grad = torch.autograd.grad(task.loss(model(task.x_train), task.y_train), model[0].weight)[0]
    expected = (grad * model[0].weight.detach()) ** 2
    assert torch.allclose(scores["0.weight"], expected, atol=1e-7)


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    curvature = torch.tensor([1.0, 4.0, 0.5])
    weight = torch.tensor([2.0, -1.0, 3.0], requires_grad=True)
    loss = 0.5 * (curvature * weight**2).sum()
    (estimate,) = hessian_diagonal(loss, [weight])
    assert torch.allclose(estimate, curvature)


def test_bn_criterion_scores_channels_by_the_following_gamma() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, -0.01, 2.0, 0.5]))
    scores = weight_scores(model, "bn")
    assert set(scores) == {"0.weight"}
    per_channel = scores["0.weight"].reshape(4, -1)
    assert torch.allclose(per_channel.mean(dim=1), torch.tensor([1.0, 0.01, 2.0, 0.5]))
    assert per_channel.mean(dim=1).argmin() == 1


def test_bn_criterion_needs_a_batchnorm() -> None:
    with pytest.raises(UserError, match="followed by BatchNorm"):
        weight_scores(dead_input_model(), "bn")


def test_bn_l1_regularization_adds_the_sign_of_gamma_while_active() -> None:
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 0.0]))
    x = torch.randn(4, 3)
    with bn_l1_regularization(bn, 0.1):
        bn(x).sum().backward()
    plain = torch.autograd.grad(bn(x).sum(), bn.weight)[0]
    assert torch.allclose(bn.weight.grad - plain, torch.tensor([0.1, -0.1, 0.0]), atol=1e-6)


def test_data_criteria_need_a_task_and_names_are_checked() -> None:
    with pytest.raises(UserError, match="'taylor' needs a task"):
        weight_scores(dead_input_model(), "taylor")
    with pytest.raises(UserError, match="unknown criterion 'l3'"):
        weight_scores(dead_input_model(), "l3")
