"""Linear quantization primitives: grids, round trips, STE, LSQ and PACT gradients."""

from __future__ import annotations

import pytest
import torch

from mobiledl.compress.quantize.config import QATConfig, QuantConfig
from mobiledl.compress.quantize.qat import LSQFakeQuantize, PACTFakeQuantize
from mobiledl.compress.quantize.quantizer import (
    FakeQuantize,
    QuantSpec,
    compute_qparams,
    dequantize_tensor,
    fake_quantize,
    quantize_tensor,
    tensor_range,
)
from mobiledl.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step(bits: int, symmetric: bool) -> None:
    x = torch.randn(1000) * 3
    spec = QuantSpec(bits, symmetric)
    scale, zero_point = compute_qparams(*tensor_range(x, spec), spec)
    q = quantize_tensor(x, scale, zero_point, spec)
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    error = (dequantize_tensor(q, scale, zero_point, spec) - x).abs().max()
    assert error <= scale.item() / 2 + 1e-6
    assert torch.equal(
        fake_quantize(x, scale, zero_point, spec), dequantize_tensor(q, scale, zero_point, spec)
    )


def test_error_shrinks_with_bits() -> None:
    x = torch.randn(4096)
    errors = []
    for bits in range(2, 9):
        spec = QuantSpec(bits, symmetric=False)
        scale, zero_point = compute_qparams(*tensor_range(x, spec), spec)
        errors.append((fake_quantize(x, scale, zero_point, spec) - x).square().mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))


def test_symmetric_and_asymmetric_zero_points() -> None:
    x = torch.tensor([-1.0, 0.0, 3.0])
    sym = QuantSpec(8, symmetric=True)
    scale, zero_point = compute_qparams(*tensor_range(x, sym), sym)
    assert zero_point.item() == 0 and scale.item() == pytest.approx(3.0 / 127)
    asym = QuantSpec(8, symmetric=False)
    scale, zero_point = compute_qparams(*tensor_range(x, asym), asym)
    assert scale.item() == pytest.approx(4.0 / 255)
    assert zero_point.item() == round(1.0 / scale.item())
    assert fake_quantize(torch.zeros(1), scale, zero_point, asym).item() == 0.0  # 0 is exact
    relu_out = torch.rand(100)
    _, zero_point = compute_qparams(*tensor_range(relu_out, asym), asym)
    assert zero_point.item() == 0


def test_per_channel_scales_follow_each_channel() -> None:
    w = torch.randn(4, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 10.0]).view(4, 1, 1, 1)
    spec = QuantSpec(8, symmetric=True, per_channel=True)
    scale, zero_point = compute_qparams(*tensor_range(w, spec), spec)
    expected = w.abs().flatten(1).amax(1) / 127
    assert torch.allclose(scale, expected)
    assert torch.all(zero_point == 0)
    relative = (fake_quantize(w, scale, zero_point, spec) - w).abs().flatten(1).amax(1) / expected
    assert torch.all(relative <= 0.5 + 1e-4)


def test_ste_passes_gradient_inside_the_range_and_zeroes_it_outside() -> None:
    spec = QuantSpec(4, symmetric=False)
    scale, zero_point = compute_qparams(torch.tensor([0.0]), torch.tensor([1.5]), spec)
    x = torch.tensor([-1.0, 0.3, 0.77, 1.2, 5.0], requires_grad=True)
    fake_quantize(x, scale, zero_point, spec).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_spec_and_config_validation_name_the_field() -> None:
    with pytest.raises(UserError, match="bits"):
        QuantSpec(9)
    with pytest.raises(UserError, match="act_bits"):
        QuantConfig(act_bits=1)
    with pytest.raises(UserError, match="observer"):
        QuantConfig(observer="median")
    with pytest.raises(UserError, match="weight_observer"):
        QuantConfig(weight_observer="kl")
    with pytest.raises(UserError, match="algorithm"):
        QATConfig(algorithm="dorefa")
    with pytest.raises(UserError, match="weight_bits"):
        QuantConfig(overrides=[{"match": "conv", "weight_bits": 12}])
    with pytest.raises(UserError, match="not a per-layer setting"):
        QuantConfig(overrides=[{"match": "conv", "act_bits": 4}])


def test_fake_quantize_module_passes_through_until_enabled() -> None:
    quantizer = FakeQuantize(QuantSpec(4, symmetric=False))
    x = torch.rand(10)
    assert torch.equal(quantizer(x), x)
    quantizer.set_qparams(torch.tensor([0.1]), torch.tensor([0]))
    quantizer.enable()
    assert torch.allclose(quantizer(x), torch.round(x / 0.1) * 0.1)


def test_lsq_step_size_gets_gradients() -> None:
    spec = QuantSpec(4, symmetric=True, per_channel=True)
    w = torch.randn(3, 8)
    quantizer = LSQFakeQuantize(spec, torch.full((3,), 0.2), torch.zeros(3, dtype=torch.int32))
    (quantizer(w) - w * 1.3).square().sum().backward()
    assert quantizer.step.grad is not None
    assert torch.all(quantizer.step.grad.abs() > 0)


def test_pact_alpha_learns_to_clip() -> None:
    torch.manual_seed(0)
    x = torch.rand(256) * 4  # target: the values clipped at 1.0
    target = x.clamp(max=1.0)
    quantizer = PACTFakeQuantize(QuantSpec(4, symmetric=False), alpha=3.0)
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.5)
    first = None
    for _ in range(40):
        loss = (quantizer(x) - target).square().mean()
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        assert quantizer.alpha.grad is not None
        optimizer.step()
    assert quantizer.alpha.item() < 1.5
    assert loss.item() < first / 10
