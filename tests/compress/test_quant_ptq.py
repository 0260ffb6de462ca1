"""PTQ building blocks: BN folding, cross-layer equalization, bias correction, AdaRound."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mobiledl.compress.quantize.adaround import AdaRoundConfig, round_layer
from mobiledl.compress.quantize.bias_correction import correct_bias
from mobiledl.compress.quantize.capture import capture
from mobiledl.compress.quantize.config import QuantConfig
from mobiledl.compress.quantize.equalize import equalization_pairs, equalize
from mobiledl.compress.quantize.fold import fold_batchnorm
from mobiledl.compress.quantize.observers import make_observer
from mobiledl.compress.quantize.prepare import prepare
from mobiledl.compress.quantize.ptq import calibrate, quantize
from mobiledl.compress.quantize.quantizer import FakeQuantize, QuantLinear, QuantSpec, quant_layers

pytestmark = pytest.mark.usefixtures("single_thread")


class TinyNet(nn.Module):
    """conv-BN-ReLU, depthwise conv-BN-ReLU, 1x1 conv, residual add, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        z = self.pw(torch.relu(self.bn2(self.dw(y))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y + z, 1), 1))


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 2.0)
        bn.bias.data.uniform_(-0.3, 0.3)
    with torch.no_grad():  # channels of very different ranges, as CLE expects
        model.dw.weight.mul_(torch.logspace(-2, 1, 8).view(8, 1, 1, 1))
    return model.eval()


def test_bn_folding_equals_unfolded_output() -> None:
    model = _tiny_net()
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 8, 8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded.get_submodule("conv1").bias is not None
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched


def test_cle_preserves_output_and_equalizes_ranges() -> None:
    prepared = prepare(_tiny_net(), QuantConfig(), torch.zeros(1, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = prepared(x)
    assert equalization_pairs(prepared) == [("dw", "pw")]  # conv1 also feeds the residual
    equalize(prepared)
    with torch.no_grad():
        assert torch.allclose(before, prepared(x), atol=1e-4)
    r1 = prepared.get_submodule("dw").weight.abs().flatten(1).amax(1)
    r2 = prepared.get_submodule("pw").weight.abs().transpose(0, 1).flatten(1).amax(1)
    assert torch.allclose(r1, r2, rtol=1e-4)


def _channel_mean_error(quantized: nn.Module, reference: nn.Module, data: torch.Tensor) -> float:
    quantized_out = capture(quantized, quant_layers(quantized)["pw"], data, output=True)
    reference_out = capture(reference, reference.get_submodule("pw"), data, output=True)
    return (quantized_out - reference_out).mean(dim=(0, 2, 3)).abs().mean().item()


def test_bias_correction_reduces_the_output_mean_error() -> None:
    model = _tiny_net()
    reference = fold_batchnorm(model)
    data = torch.randn(64, 3, 8, 8) + 0.5
    config = QuantConfig(weight_bits=3, per_channel=False)
    plain = quantize(model, config, data=data)
    corrected = quantize(model, config, data=data)
    assert "pw" in correct_bias(corrected, data)
    before = _channel_mean_error(plain, reference, data)
    after = _channel_mean_error(corrected, reference, data)
    assert after < 0.5 * before


def test_adaround_beats_nearest_rounding_at_4_bits() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 16)
    x = torch.randn(512, 8) @ torch.randn(8, 64) + 0.3 * torch.randn(512, 64) + 1.0
    quantizer = FakeQuantize(QuantSpec(4, per_channel=True), make_observer("minmax", 0), 16)
    quantizer.observer(linear.weight)
    quantizer.update_qparams()
    quantizer.enable()
    layer = QuantLinear.from_float(linear, quantizer)
    with torch.no_grad():
        target = layer.forward_with(x, layer.weight)
        nearest = (layer(x) - target).square().mean()
    learned = round_layer(layer, x, target, AdaRoundConfig(iters=200))
    with torch.no_grad():
        adaround = (layer.forward_with(x, learned) - target).square().mean()
        assert torch.allclose(quantizer(learned), learned, atol=1e-6)  # on the grid
    assert adaround < 0.5 * nearest


def test_quantized_model_runs_close_to_float_and_leaves_input_alone() -> None:
    model = _tiny_net()
    original = copy.deepcopy(model.state_dict())
    data = torch.randn(64, 3, 8, 8)
    quantized = quantize(model, QuantConfig(observer="mse"), data=data)
    with torch.no_grad():
        error = (quantized(data) - model(data)).abs().max()
        scale = model(data).abs().max()
    assert error < 0.05 * scale
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_calibrate_switches_quantizers_on() -> None:
    prepared = prepare(_tiny_net(), QuantConfig(weight_bits=2), torch.zeros(1, 3, 8, 8))
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        float_out = prepared(x)
        calibrate(prepared, x)
        assert not torch.allclose(float_out, prepared(x))


def _labelled_by(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def test_auto_observer_keeps_the_most_accurate_on_validation() -> None:
    from dataclasses import replace

    from mobiledl import apply, report_of
    from mobiledl.compress.quantize.config import AUTO_OBSERVERS
    from mobiledl.data.task import Task
    from mobiledl.models import create_model
    from mobiledl.train.trainer import evaluate

    torch.manual_seed(0)
    model = create_model("resnet8", 10, 1, (8, 8)).eval()
    x = torch.randn(300, 1, 8, 8)
    x[::7] *= 6.0  # a long tail of large inputs: calibrations disagree on the range
    y = _labelled_by(model, x)
    task = Task("tail", 10, x[:100], y[:100], x[100:200], y[100:200], x[200:], y[200:])
    config = QuantConfig(weight_bits=4, act_bits=4, calibration_samples=64)
    accuracies = {
        name: evaluate(apply(model, replace(config, observer=name), task), task, "val")
        for name in AUTO_OBSERVERS
    }
    chosen = apply(model, replace(config, observer="auto"), task)
    recorded = report_of(chosen).values["observer"]
    record = chosen.mobiledl_arch["transforms"][-1]["config"]
    assert record["config"]["observer"] == recorded
    assert recorded in AUTO_OBSERVERS and recorded != "auto"
    assert accuracies[recorded] == max(accuracies.values())
    assert evaluate(chosen, task, "val") == max(accuracies.values())


def test_auto_scores_observers_on_auto_samples_of_validation() -> None:
    from dataclasses import replace

    from mobiledl import apply, report_of
    from mobiledl.compress.quantize.config import AUTO_OBSERVERS
    from mobiledl.data.task import Task
    from mobiledl.models import create_model
    from mobiledl.train.trainer import evaluate

    torch.manual_seed(1)
    model = create_model("resnet8", 10, 1, (8, 8)).eval()
    x = torch.randn(400, 1, 8, 8)
    x[::7] *= 6.0
    y = _labelled_by(model, x)
    task = Task("tail", 10, x[:100], y[:100], x[100:300], y[100:300], x[300:], y[300:])
    config = QuantConfig(weight_bits=4, act_bits=4, calibration_samples=64, auto_samples=50)
    on_subset = {
        name: evaluate(apply(model, replace(config, observer=name), task), task, "val", 50)
        for name in AUTO_OBSERVERS
    }
    chosen = report_of(apply(model, replace(config, observer="auto"), task)).values["observer"]
    assert on_subset[chosen] == max(on_subset.values())


def test_auto_observer_without_validation_data_is_a_user_error() -> None:
    from mobiledl.errors import UserError

    with pytest.raises(UserError, match="validation split"):
        quantize(_tiny_net(), QuantConfig(observer="auto"), data=torch.randn(8, 3, 8, 8))


def test_unknown_observer_names_the_choices() -> None:
    from mobiledl.errors import UserError

    with pytest.raises(UserError, match="auto"):
        QuantConfig(observer="median")


def test_kl_observer_is_refused_with_the_reason() -> None:
    # entropy calibration clipped informative outliers (MobileNetV1/mnist1d: -4.4 points)
    from mobiledl.errors import UserError

    with pytest.raises(UserError, match="observer 'kl'.*not offered.*use mse"):
        QuantConfig(observer="kl")


def test_auto_equals_calibrating_the_chosen_observer_alone() -> None:
    from dataclasses import replace

    from mobiledl.compress.quantize.ptq import ptq
    from mobiledl.data.task import Task

    model = _tiny_net()
    x = torch.randn(240, 3, 8, 8)
    x[::5] *= 4.0
    y = _labelled_by(model, x)
    task = Task("tail", 4, x[:80], y[:80], x[80:160], y[80:160], x[160:], y[160:])
    config = QuantConfig(act_bits=4, calibration_samples=64, bias_correction=True)
    auto, chosen = ptq(model, replace(config, observer="auto"), task)
    alone, _ = ptq(model, chosen, task)
    assert chosen.observer != "auto"
    expected = alone.state_dict()
    assert auto.state_dict().keys() == expected.keys()
    for name, value in auto.state_dict().items():
        assert torch.equal(value, expected[name]), name
