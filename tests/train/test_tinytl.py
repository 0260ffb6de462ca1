"""TinyTL: what trains, lite residual modules, the lean engine's gradients, model files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model
from mobiledl.train import (
    LeanAutograd,
    LiteResidual,
    TinyTLConfig,
    fused_layers,
    make_optimizer,
    tinytl,
    training_step,
)
from mobiledl.train.ondevice.memory import training_layout, training_modes

pytestmark = pytest.mark.usefixtures("single_thread")


def test_tinytl_freezes_weights_and_trains_biases_lite_modules_and_classifier() -> None:
    model = tinytl(create_model("mobilenet_v2", 10, 3, 16, 0.5))
    lite = {
        f"{name}.lite.{p}"
        for name, m in model.named_modules()
        if isinstance(m, LiteResidual)
        for p, _ in m.lite.named_parameters()
    }
    assert lite, "no lite residual module was added"
    for name, param in model.named_parameters():
        expected = name.endswith("bias") or name in lite or name.startswith("classifier.1.")
        assert param.requires_grad == expected, name
    bn_scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn_scales and not any(w.requires_grad for w in bn_scales)


def test_last_blocks_adapts_only_the_tail_and_needs_less_training_memory() -> None:
    from mobiledl.train.ondevice.memory import training_memory

    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    whole = tinytl(create_model("mobilenet_v2", 10, 3, 16, 0.5))
    tail = tinytl(create_model("mobilenet_v2", 10, 3, 16, 0.5), TinyTLConfig(last_blocks=3))
    wrapped = [name for name, m in tail.named_modules() if isinstance(m, LiteResidual)]
    assert len(wrapped) == 3
    first = min(int(name.split(".")[1]) for name in wrapped)
    for name, param in tail.named_parameters():
        index = int(name.split(".")[1]) if name.startswith("features.") else len(tail.features)
        assert not (param.requires_grad and index < first), name
        if name.endswith("bias") and index >= first:
            assert param.requires_grad, name
    assert training_memory(tail, x, y).peak_bytes < training_memory(whole, x, y).peak_bytes
    with pytest.raises(UserError, match="last_blocks"):
        TinyTLConfig(last_blocks=0)


def test_lite_residual_modules_start_at_the_pretrained_function() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 3, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    tinytl(model).eval()
    assert sum(isinstance(m, LiteResidual) for m in model.modules()) == 4  # stem + 3 blocks
    torch.testing.assert_close(model(x), before)


def test_lite_residual_modules_train() -> None:
    torch.manual_seed(0)
    model = tinytl(create_model("mcunet", 4, 1, 12)).to(memory_format=torch.channels_last)
    lite = [p for m in model.modules() if isinstance(m, LiteResidual) for p in m.lite.parameters()]
    start = [p.detach().clone() for p in lite]
    optimizer = make_optimizer(model, "momentum", lr=0.1)
    x, y = training_layout(torch.randn(8, 1, 12, 12)), torch.randint(0, 4, (8,))
    with training_modes(model):
        for _ in range(3):
            training_step(model, x, y, optimizer)
    moved = [not torch.equal(a, b) for a, b in zip(start, lite, strict=True)]
    assert all(moved), "every lite residual parameter should change"


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet8", "mcunet"])
def test_lean_engine_gradients_equal_pytorch_autograd(name: str) -> None:
    torch.manual_seed(0)
    model = tinytl(create_model(name, 5, 3, 13)).double().to(memory_format=torch.channels_last)
    with torch.no_grad():  # non-trivial statistics, shifts and lite weights
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.bias.uniform_(-1, 1)
            elif isinstance(module, nn.Conv2d) and module.weight.requires_grad:
                module.weight.normal_(0, 0.1)
            elif isinstance(module, nn.Dropout):
                module.p = 0.0
    x = training_layout(torch.randn(6, 3, 13, 13, dtype=torch.float64))
    with training_modes(model):
        reference = model(x)
        reference.square().sum().backward()
        expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        with fused_layers(model):
            with LeanAutograd():
                out = model(x)
            out.square().sum().backward()
    torch.testing.assert_close(out, reference)
    for param_name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(param_name).grad, grad)


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_tinytl_model_reloads_through_load_model(tmp_path: Path, norm: str) -> None:
    torch.manual_seed(0)
    model = tinytl(create_model("mcunet", 10, 1, 12), TinyTLConfig(norm=norm))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.eval()
    path = save_model(tmp_path / "tinytl.pt", model)
    loaded = load_model(path).model
    x = torch.randn(3, 1, 12, 12)
    torch.testing.assert_close(loaded(x), model(x))
    assert sum(isinstance(m, LiteResidual) for m in loaded.modules()) == sum(
        isinstance(m, LiteResidual) for m in model.modules()
    )


def test_model_without_conv_blocks_trains_biases_and_classifier() -> None:
    model = tinytl(create_model("lenet300", 10, 1, 8))
    assert not any(isinstance(m, LiteResidual) for m in model.modules())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "features.0.bias",
        "features.2.bias",
        "classifier.weight",
        "classifier.bias",
    }
