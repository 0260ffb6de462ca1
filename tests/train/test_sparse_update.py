"""Sparse update: int8 layers, quantization-aware scaling, the budget, model files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobiledl.data import Task, build_task
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model
from mobiledl.train import (
    Contribution,
    QuantizedConv2d,
    SparsePlan,
    SparseUpdateConfig,
    apply_plan,
    measure_training_step,
    quantize_for_sparse_update,
    select_update,
    sparse_update,
)
from mobiledl.train.ondevice.memory import trace_training

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", image_size=12)


def int8_conv(qas: bool) -> tuple[nn.Conv2d, QuantizedConv2d]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = QuantizedConv2d(conv, int8=True, qas=qas)
    layer.set_update_channels(6)
    return conv, layer


@pytest.mark.parametrize("qas", [True, False])
def test_int8_weight_gradient_is_scaled_by_s_squared_with_qas(qas: bool) -> None:
    conv, layer = int8_conv(qas)
    x = torch.randn(2, 4, 5, 5)
    out = layer(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    # the gradient w.r.t. the dequantized fp32 weight W = s * W_int8
    weight = layer.dequantized(layer.update.detach()).requires_grad_()
    F.conv2d(x, weight, layer.bias.detach(), padding=1).backward(grad)
    scale = layer.scale.view(-1, 1, 1, 1)
    # autograd alone gives s * dL/dW for W_int8; QAS multiplies by s^-2 (Lin et al. 2022)
    expected = weight.grad / scale if qas else weight.grad * scale
    torch.testing.assert_close(layer.update.grad, expected)


def test_sgd_step_with_qas_matches_fp32_sgd() -> None:
    _, layer = int8_conv(qas=True)
    x = torch.randn(2, 4, 5, 5)
    weight = layer.dequantized(layer.update.detach()).requires_grad_()
    F.conv2d(x, weight, layer.bias.detach(), padding=1).square().sum().backward()
    layer(x).square().sum().backward()
    with torch.no_grad():
        layer.update -= 0.01 * layer.update.grad
    stepped = layer.dequantized(layer.update.detach())
    torch.testing.assert_close(stepped, weight.detach() - 0.01 * weight.grad)


def test_int8_model_stays_close_to_the_fp32_model() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 10, 3, 16, 0.5).eval()
    x = torch.randn(4, 3, 16, 16)
    reference = model(x)
    quantize_for_sparse_update(model).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    error = (model(x) - reference).norm() / reference.norm()  # int8 weights, fp32 activations
    assert error < 0.05


def test_plan_sets_exactly_the_chosen_updates() -> None:
    model = quantize_for_sparse_update(create_model("mcunet", 10, 1, 12))
    layers = [name for name, m in model.named_modules() if isinstance(m, QuantizedConv2d)]
    target = layers[-1]
    plan = SparsePlan(bias_depth=2, layers={target: 20})
    apply_plan(model, plan)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    update = model.get_submodule(target).update
    assert update.shape[0] == plan.layers[target] == 20
    assert f"{target}.update" in trainable and f"{target}.bias" in trainable
    assert f"{layers[-2]}.bias" in trainable and f"{layers[-3]}.bias" not in trainable
    assert {"classifier.update", "classifier.bias"} <= trainable


@pytest.mark.usefixtures("avx2_memory_kernels")
def test_selection_stays_within_the_budget_measured(digits: Task) -> None:
    torch.manual_seed(0)
    model = quantize_for_sparse_update(create_model("mcunet", 10, 1, 12))
    x, y = digits.x_train[:16], digits.y_train[:16]
    trace = trace_training(model, x, y)
    floor = measure_training_step(apply_plan(model, SparsePlan()), x, y).peak_bytes
    layers = [name for name, m in model.named_modules() if isinstance(m, QuantizedConv2d)]
    contributions = [
        Contribution("bias", "bias", depth=4, gain=0.02),
        Contribution("bias", "bias", depth=20, gain=0.03),
        *(Contribution("weight", n, channels=c, gain=g) for n in layers[-3:] for c, g in CHOICES),
    ]
    chosen = []
    for factor in (1.1, 1.5):
        budget = int(floor * factor)
        config = SparseUpdateConfig(memory_budget=budget, batch_size=16)
        plan = select_update(model, trace, contributions, config)
        assert plan.predicted_peak_bytes <= budget
        assert measure_training_step(model, x, y).peak_bytes <= budget
        chosen.append(plan.expected_gain)
    assert 0 < chosen[0] < chosen[1]  # a larger budget buys more of the analysed gain


CHOICES = ((8, 0.01), (32, 0.02), (1000, 0.04))


def test_sparse_update_end_to_end_respects_the_budget(digits: Task) -> None:
    torch.manual_seed(0)
    x, y = digits.x_train[:16], digits.y_train[:16]
    floor = measure_training_step(
        apply_plan(quantize_for_sparse_update(create_model("lenet5", 10, 1, 12)), SparsePlan()),
        x,
        y,
    ).peak_bytes
    config = SparseUpdateConfig(
        memory_budget=int(floor * 1.3), batch_size=16, probe_steps=3, candidate_layers=2
    )
    model, plan = sparse_update(create_model("lenet5", 10, 1, 12), digits, config)
    # lenet5 has 4 layers before its classifier: bias depths 2 and 4 (all), 2 layers x 3 ratios
    assert len(plan.contributions) == 2 + 2 * len(config.ratios)
    assert measure_training_step(model, x, y).peak_bytes <= config.memory_budget


def test_budget_below_the_minimum_is_a_user_error(digits: Task) -> None:
    config = SparseUpdateConfig(memory_budget=1024, batch_size=16, probe_steps=1)
    with pytest.raises(UserError, match=r"below the minimum of \d+ KB"):
        sparse_update(create_model("mcunet", 10, 1, 12), digits, config)


def test_sparse_model_reloads_through_load_model(tmp_path: Path, digits: Task) -> None:
    torch.manual_seed(0)
    config = SparseUpdateConfig(
        memory_budget=8 * 2**20, batch_size=16, probe_steps=1, candidate_layers=1, ratios=(1.0,)
    )
    model, plan = sparse_update(create_model("lenet5", 10, 1, 12), digits, config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01)
    model.eval()
    loaded = load_model(save_model(tmp_path / "sparse.pt", model)).model
    x = digits.x_test[:4]
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.get_submodule("classifier.2").weight_q.dtype == torch.int8
