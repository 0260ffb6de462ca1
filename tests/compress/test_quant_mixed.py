"""Mixed precision: per-layer bits applied, sensitivity measured, budget respected, files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl.compress.quantize.mixed import (
    BitSensitivity,
    InputQuantized,
    bit_sensitivity,
    mixed_precision,
    model_size_bytes,
    propose_bits,
)
from mobiledl.compress.quantize.quantizer import QuantConv2d, QuantLinear
from mobiledl.data import Task
from mobiledl.errors import UserError
from mobiledl.models import load_model, save_model
from tests.blobs import blobs_task, trained_lenet5

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def task() -> Task:
    return blobs_task()


@pytest.fixture(scope="module")
def trained(task: Task) -> nn.Module:
    return trained_lenet5(task)


def test_config_applies_the_right_bits_per_layer(trained: nn.Module, task: Task) -> None:
    config = {"features.0": {"weight": 3, "act": 6}, "features.3": 5, "classifier.2": 2}
    model = mixed_precision(trained, config, task, default_act_bits=8)
    first, middle, last = model.features[0], model.features[3], model.classifier[2]
    assert isinstance(first, InputQuantized) and isinstance(first.layer, QuantConv2d)
    assert first.layer.weight_quantizer.spec.bits == 3
    assert first.input_quantizer.spec.bits == 6
    assert middle.input_quantizer.spec.bits == 8 and middle.layer.weight_quantizer.spec.bits == 5
    assert isinstance(last.layer, QuantLinear) and last.layer.weight_quantizer.spec.bits == 2
    assert type(model.features[6]) is nn.Conv2d  # unlisted: float
    for layer, bits in ((first.layer, 3), (middle.layer, 5), (last.layer, 2)):
        weight = layer.quantized_weight().detach()
        for channel in weight:
            assert len(channel.unique()) <= 2**bits - 1  # symmetric narrow grid
    for quantizer in (first.input_quantizer, middle.input_quantizer):
        assert quantizer.scale.item() != 1.0  # calibrated on data
    assert torch.isfinite(model(task.x_test)).all()


def test_weight_only_config_needs_no_task(trained: nn.Module) -> None:
    model = mixed_precision(trained, {"classifier.0": 4})
    assert isinstance(model.classifier[0], QuantLinear)


def test_bad_config_names_the_problem(trained: nn.Module, task: Task) -> None:
    with pytest.raises(UserError, match="unknown layer 'features.7'"):
        mixed_precision(trained, {"features.7": 4})
    with pytest.raises(UserError, match="weight bits of layer 'features.3' .* got 9"):
        mixed_precision(trained, {"features.3": 9})
    with pytest.raises(UserError, match="act bits of layer 'features.0' .* got 1"):
        mixed_precision(trained, {"features.0": {"weight": 4, "act": 1}}, task)
    with pytest.raises(UserError, match="layer 'features.0' needs"):
        mixed_precision(trained, {"features.0": {"bits": 4}})
    with pytest.raises(UserError, match="need a task"):
        mixed_precision(trained, {"features.0": {"weight": 4, "act": 8}})


def test_sensitivity_is_measured_per_layer_and_width(trained: nn.Module, task: Task) -> None:
    sensitivity = bit_sensitivity(trained, task, bits=(2, 4, 8))
    names = ["features.0", "features.3", "features.6", "classifier.0", "classifier.2"]
    assert list(sensitivity.loss) == names
    assert sensitivity.bits == [2, 4, 8]
    for name in names:
        assert len(sensitivity.loss[name]) == len(sensitivity.accuracy[name]) == 3
        assert abs(sensitivity.loss[name][2] - sensitivity.baseline_loss) < 0.05
    full = {name: 8 for name in names}
    assert sensitivity.size_bytes(full) == model_size_bytes(trained, full)


def test_proposal_respects_the_size_budget(trained: nn.Module, task: Task) -> None:
    sensitivity = bit_sensitivity(trained, task, bits=(2, 3, 4, 8))
    names = list(sensitivity.loss)
    uniform4 = model_size_bytes(trained, dict.fromkeys(names, 4))
    proposal = propose_bits(sensitivity, uniform4)
    assert model_size_bytes(trained, proposal) <= uniform4
    assert set(proposal.values()) <= {2, 3, 4, 8}
    smallest = model_size_bytes(trained, dict.fromkeys(names, 2))
    with pytest.raises(UserError, match="below the smallest size"):
        propose_bits(sensitivity, smallest - 1)


def test_greedy_narrows_the_least_sensitive_layer_first() -> None:
    sensitivity = BitSensitivity(
        baseline_loss=0.1,
        baseline_accuracy=1.0,
        bits=[2, 4, 8],
        loss={"robust": [0.11, 0.1, 0.1], "fragile": [3.0, 0.5, 0.1]},
        accuracy={"robust": [1.0] * 3, "fragile": [0.3, 0.9, 1.0]},
        weights={"robust": 1000, "fragile": 1000},
        channels={"robust": 0, "fragile": 0},
        other_values=0,
        split="val",
    )
    assert propose_bits(sensitivity, 1000) == {"robust": 4, "fragile": 4}
    assert propose_bits(sensitivity, 1250) == {"robust": 2, "fragile": 8}


def test_save_load_round_trip(trained: nn.Module, task: Task, tmp_path: Path) -> None:
    config = {"features.3": {"weight": 4, "act": 6}, "classifier.0": 3}
    model = mixed_precision(trained, config, task)
    path = save_model(tmp_path / "mixed.pt", model)
    loaded = load_model(path).model
    assert torch.equal(loaded(task.x_test), model.eval()(task.x_test))
