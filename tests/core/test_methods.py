"""The one entry point: every registered method's default config applies to ``resnet8`` and
``mobilenet_v2``; the result exports through the engine interface and runs in ONNX Runtime
like the PyTorch model, and the input model is left exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mobiledl import apply, list_methods, report_of
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.methods import SubnetConfig
from mobiledl.automl.nas.space import tiny_space
from mobiledl.core.inputs import IMAGE
from mobiledl.data import build_task
from mobiledl.deploy import get_engine
from mobiledl.deploy.lowering import is_quantized
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model

pytestmark = pytest.mark.usefixtures("single_thread")
SUPERNET_ONLY = {"nas_subnet"}


@pytest.fixture(scope="module")
def task():
    task = build_task("digits", image_size=16, seed=0)
    task.x_train, task.y_train = task.x_train[:96], task.y_train[:96]
    task.x_val, task.y_val = task.x_val[:48], task.y_val[:48]
    task.x_test, task.y_test = task.x_test[:48], task.y_test[:48]
    return task


def _state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "modules": [(n, type(m)) for n, m in model.named_modules()],
        "arch": copy.deepcopy(getattr(model, "mobiledl_arch", None)),
        "training": model.training,
    }


def _same(before: dict, model: nn.Module) -> bool:
    after = _state(model)
    tensors = before["tensors"].keys() == after["tensors"].keys() and all(
        torch.equal(before["tensors"][k], after["tensors"][k]) for k in before["tensors"]
    )
    rest = ("modules", "arch", "training")
    return tensors and all(before[k] == after[k] for k in rest)


def _check_engine_parity(model: nn.Module, task, tmp_path, name: str) -> None:
    engine = get_engine()
    x = task.example_input(8)
    artifact = engine.export(model, x[:1], tmp_path / f"{name}{engine.suffix}")
    diff = engine.parity_check(model, artifact, x)
    with torch.no_grad():
        scale = float(model.eval()(x).abs().max())
    if is_quantized(model):
        # The engine's integer kernels round (and requantize between layers) where the
        # simulation holds floats: logits agree to a few quantization steps, classes agree.
        tolerance = 0.1 * scale + 1e-3
        agreement = engine.top1_agreement(model, artifact, task.example_input(32))
        assert agreement >= 0.9, f"{name}: engine agrees on top-1 for {agreement:.0%}"
    else:
        tolerance = 1e-4 * max(scale, 1.0)
    assert diff <= tolerance, f"{name}: |PyTorch - engine| = {diff:.2e} > {tolerance:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet8", "mobilenet_v2"])
def test_every_method_default_config_through_apply_and_the_engine(arch, task, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model(arch, task.num_classes, task.in_channels, task.image_size)
    before = _state(model)
    methods = [
        m
        for m in list_methods()
        if m.name not in SUPERNET_ONLY and (m.inputs is None or IMAGE in m.inputs)
    ]
    assert len(methods) >= 12
    for method in methods:
        result = apply(model, method.config_type(), task)
        assert _same(before, model), f"{method.name} changed its input model"
        assert result is not model
        report = report_of(result)
        assert report is not None and report.method == method.name
        assert result.mobiledl_arch["history"][-1]["method"] == method.name
        _check_engine_parity(result, task, tmp_path, f"{arch}-{method.name}")
        save_model(tmp_path / f"{method.name}.pt", result)
        reloaded = load_model(tmp_path / f"{method.name}.pt").model
        x = task.example_input(4)
        with torch.no_grad():
            assert torch.allclose(reloaded(x), result.eval()(x), atol=1e-5), method.name


def test_subnet_extraction_through_apply(task, tmp_path) -> None:
    torch.manual_seed(0)
    supernet = OFASupernet(tiny_space(((8, 8),)), 10, 1, (8, 8))
    small = build_task("digits", seed=0)
    before = _state(supernet)
    subnet = apply(supernet, SubnetConfig(calibration_samples=64), small)
    assert _same(before, supernet)
    assert report_of(subnet).values["arch"]["depths"] == list(supernet.space.largest().depths)
    _check_engine_parity(subnet, small, tmp_path, "subnet")


def test_method_errors_are_user_errors(task) -> None:
    model = create_model("resnet8", 10, 1, 16)
    from mobiledl.compress.quantize import QuantConfig

    with pytest.raises(UserError, match="needs a task"):
        apply(model, QuantConfig())
    with pytest.raises(UserError, match="needs an nn.Module"):
        apply("resnet8", QuantConfig(), task)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="needs a method config"):
        apply(model, object(), task)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="once-for-all supernet"):
        apply(model, SubnetConfig(), task)
