"""The one quantized layer family: PTQ and sparse update build the same classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl.compress.quantize import QuantConfig, quantize
from mobiledl.data import Task, build_task
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.models.quantized import (
    QuantConv2d,
    QuantizedLayer,
    QuantLinear,
    int8_codes,
    quant_layer,
)
from mobiledl.train import SparsePlan, apply_plan, quantize_for_sparse_update

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", image_size=12)


def layer_types(model: nn.Module) -> set[type]:
    """The family classes the weighted layers of ``model`` are instances of."""
    weighted = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert weighted and all(isinstance(m, QuantizedLayer) for m in weighted)
    return {QuantConv2d if isinstance(m, QuantConv2d) else QuantLinear for m in weighted}


def test_ptq_and_sparse_update_build_the_same_layer_family(digits: Task) -> None:
    model = create_model("lenet5", 10, 1, 12)
    ptq = quantize(model, QuantConfig(), digits)
    sparse = quantize_for_sparse_update(create_model("lenet5", 10, 1, 12))
    assert layer_types(ptq) == layer_types(sparse) == {QuantConv2d, QuantLinear}


def test_int8_codes_dequantize_within_half_a_step() -> None:
    weight = torch.randn(6, 4, 3, 3)
    codes, scale = int8_codes(weight)
    assert codes.dtype == torch.int8 and codes.abs().max() == 127
    error = (codes.float() * scale.view(-1, 1, 1, 1) - weight).abs()
    assert torch.all(error <= scale.view(-1, 1, 1, 1) / 2 + 1e-7)


def test_a_quantized_layer_is_not_quantized_twice() -> None:
    layer = quantize_for_sparse_update(nn.Sequential(nn.Linear(4, 2)))[0]
    with pytest.raises(UserError, match="quantized already"):
        quant_layer(layer, nn.Identity())


def test_sparse_updated_model_exports_to_onnx(digits: Task, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = quantize_for_sparse_update(create_model("mcunet", 10, 1, 12))
    apply_plan(model, SparsePlan(bias_depth=2)).eval()
    engine = get_engine()
    x, _ = digits.split("test")
    path = engine.export(model, x[:1], tmp_path / "sparse.onnx")
    assert engine.parity_check(model, path, x[:16]) < 1e-4
