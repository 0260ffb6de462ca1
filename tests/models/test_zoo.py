"""Every zoo model builds, trains, traces with torch.fx and exports to ONNX Runtime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mobiledl.errors import UserError
from mobiledl.models import create_model, list_models, model_info
from mobiledl.models import registry as registry_module

EXPECTED_MODELS = {
    "lenet300",
    "lenet5",
    "resnet8",
    "resnet20",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v2",
    "squeezenet",
    "mcunet",
}
MODEL_NAMES = sorted(EXPECTED_MODELS)
# digits (8x8), mnist1d (1x40 "image"), CIFAR-like 3x32x32.
TRAIN_SHAPES = [(1, 8, 8), (1, 1, 40), (3, 32, 32)]
NUM_CLASSES = 10


pytestmark = pytest.mark.usefixtures("single_thread")


def build(name: str, shape: tuple[int, int, int], width_mult: float = 1.0) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES, shape[0], shape[1:], width_mult)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, var_floor: float = 1e-2) -> None:
    """Set BN running statistics from one batch, so an untrained eval-mode net is not degenerate.

    With the default statistics (mean 0, variance 1) the signal of a freshly initialised net can
    vanish on tiny inputs (a 3x3 depthwise conv on a 1x1 map sees only its centre tap), and the
    ONNX comparison would compare constants. The variance floor keeps near-constant channels
    from amplifying rounding errors by up to 1/sqrt(eps).
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.clamp_(min=var_floor)
    model.eval()


def test_expected_models_are_registered() -> None:
    names = {info.name for info in list_models()}
    assert names >= EXPECTED_MODELS


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registry_entry_is_documented(name: str) -> None:
    info = model_info(name)
    assert info.description and info.paper
    assert info.min_image_size == (1, 1)
    assert set(info.to_dict()) == {"name", "description", "paper", "inputs", "min_image_size"}
    assert info.inputs == "image"


@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_and_train_step(name: str, shape: tuple[int, int, int]) -> None:
    model = build(name, shape)
    assert model.mobiledl_arch["name"] == name
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(4, *shape)
    target = torch.randint(0, NUM_CLASSES, (4,))
    model.train()
    logits = model(x)
    assert logits.shape == (4, NUM_CLASSES)
    loss = nn.functional.cross_entropy(logits, target)
    optimizer.zero_grad()
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient in {param_name}"
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fx_symbolic_trace(name: str, shape: tuple[int, int, int]) -> None:
    model = build(name, shape).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_export_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    shape = (1, 8, 8)
    model = build(name, shape)
    calibrate_batchnorm(model, torch.randn(64, *shape))
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.randn(2, *shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            input_names=["input"],
            output_names=["output"],
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(3, *shape)  # another batch size than at export: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x).numpy()
    (actual,) = session.run(["output"], {"input": x.numpy()})
    assert actual.shape == (3, NUM_CLASSES)
    assert expected.std(axis=0).mean() > 1e-3, "outputs do not depend on the input"
    # 1e-4 on logits of order 1; random nets with larger logits get the same relative margin.
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 224, 224)], ids=["28x28", "224x224"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_other_sizes(name: str, shape: tuple[int, int, int]) -> None:
    model = build(name, shape).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("width_mult", [0.5, 1.0])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_width_mult_channels_are_multiples_of_8(name: str, width_mult: float) -> None:
    in_channels = 3
    model = build(name, (in_channels, 8, 8), width_mult)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels % 8 == 0, f"{name}.{module_name}: {module.out_channels}"
            if module.in_channels != in_channels:
                assert module.in_channels % 8 == 0, f"{name}.{module_name}: {module.in_channels}"
        elif isinstance(module, nn.Linear) and module.out_features != NUM_CLASSES:
            assert module.out_features % 8 == 0, f"{name}.{module_name}: {module.out_features}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_half_width_has_fewer_params(name: str) -> None:
    shape = (3, 32, 32)
    assert count_params(build(name, shape, 0.5)) < count_params(build(name, shape, 1.0))


def test_unknown_model_raises_user_error_naming_it() -> None:
    with pytest.raises(UserError, match="no_such_net"):
        create_model("no_such_net")


def test_image_below_min_size_raises_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="resnet8"):
        create_model("resnet8", image_size=(0, 8))
    info = model_info("resnet8")
    big = registry_module.ModelInfo("big_input_net", "test", "none", (16, 16), info.builder)
    monkeypatch.setitem(registry_module._REGISTRY, "big_input_net", big)
    with pytest.raises(UserError, match="16x16"):
        create_model("big_input_net", image_size=8)
    assert create_model("big_input_net", image_size=16) is not None


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2", "shufflenet_v2", "squeezenet"])
def test_large_images_get_downsampling_stem(name: str) -> None:
    def first_conv_stride(model: nn.Module) -> int:
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        return conv.stride[0]

    assert first_conv_stride(build(name, (3, 32, 32))) == 1
    assert first_conv_stride(build(name, (3, 224, 224))) == 2
