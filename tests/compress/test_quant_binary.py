"""Binary (BinaryConnect / XNOR-Net) and ternary (TWN, TTQ) weights: values, gradients, files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from mobiledl.compress.quantize.binary import (
    BinaryWeight,
    TernaryWeight,
    TrainedTernaryWeight,
    binarize,
    lowbit_storage_bytes,
    ternarize,
)
from mobiledl.data import Task
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model

pytestmark = pytest.mark.usefixtures("single_thread")


def blob_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 1, 4, 4, generator=generator) * 2
    y = torch.arange(240) % 3
    x = centers[y] + torch.randn(240, 1, 4, 4, generator=generator)
    return Task("blobs", 3, x[:160], y[:160], x[160:200], y[160:200], x[200:], y[200:])


def small_lenet(name: str = "lenet5") -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=3, in_channels=1, image_size=4, width_mult=0.25)


def latent(layer: nn.Module) -> torch.Tensor:
    return layer.parametrizations.weight.original.detach()


def test_binary_weights_are_plus_minus_alpha_per_channel() -> None:
    model = binarize(small_lenet())
    layer = model.features[3]
    weight, original = layer.weight.detach(), latent(layer)
    for channel in range(weight.shape[0]):
        alpha = original[channel].abs().mean()
        expected = torch.where(original[channel] >= 0, alpha, -alpha)
        assert torch.equal(weight[channel], expected)
        assert len(weight[channel].unique()) <= 2


def test_first_and_last_layers_stay_float_by_default() -> None:
    model = binarize(small_lenet())
    quantized = {n for n, m in model.named_modules() if parametrize.is_parametrized(m)}
    assert quantized == {"features.3", "features.6", "classifier.0"}
    chosen = ternarize(small_lenet(), layers=["features.0", "classifier.2"])
    quantized = {n for n, m in chosen.named_modules() if parametrize.is_parametrized(m)}
    assert quantized == {"features.0", "classifier.2"}


def test_binary_gradient_reaches_latent_weights_through_the_ste() -> None:
    weight = torch.tensor([[0.5, -0.25, 2.0, -0.25]], requires_grad=True)
    out = BinaryWeight(per_channel=True)(weight)
    assert torch.equal(out.detach(), torch.tensor([[0.75, -0.75, 0.75, -0.75]]))
    out.sum().backward()
    # d/dw of alpha * sign(w) = alpha * [|w| <= 1] + sign(w) * sum(sign(w)) / n; the signs
    # here sum to zero, leaving the clipped straight-through term.
    expected = 0.75 * torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert torch.allclose(weight.grad, expected)


def test_twn_threshold_and_three_values() -> None:
    weight = torch.tensor([[1.0, -0.1, 0.8, -2.0, 0.05, 0.3]])
    delta = 0.7 * weight.abs().mean()  # 0.7 * 0.708 = 0.496
    kept = weight.abs() > delta
    alpha = weight.abs()[kept].mean()  # mean of 1.0, 0.8, 2.0
    out = TernaryWeight()(weight)
    expected = torch.where(kept, alpha * torch.sign(weight), torch.zeros_like(weight))
    assert torch.equal(out, expected)
    model = ternarize(small_lenet(), method="twn")
    values = model.features[6].weight.detach().unique()
    assert len(values) == 3 and 0.0 in values.tolist()
    assert values[0] == -values[2]


def test_ttq_scales_receive_pooled_gradients() -> None:
    weight = torch.tensor([[1.0, -0.5, 0.01, 0.6, -1.0]], requires_grad=True)
    ttq = TrainedTernaryWeight(weight.detach(), threshold=0.05)
    assert ttq.w_p.item() == pytest.approx(0.8)  # mean of 1.0 and 0.6
    assert ttq.w_n.item() == pytest.approx(0.75)  # mean of |-0.5| and |-1.0|
    out = ttq(weight)
    assert torch.allclose(out, torch.tensor([[0.8, -0.75, 0.0, 0.8, -0.75]]))
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    (out * upstream).sum().backward()
    assert ttq.w_p.grad.item() == pytest.approx(1.0 + 4.0)
    assert ttq.w_n.grad.item() == pytest.approx(-(2.0 + 5.0))
    # Latent gradient scaled by w_p, 1 and w_n in the positive, zero and negative regions.
    assert torch.allclose(weight.grad, upstream * torch.tensor([[0.8, 0.75, 1.0, 0.8, 0.75]]))


def test_training_updates_ttq_scales_and_latent_weights() -> None:
    model = small_lenet()
    trained = ternarize(model, blob_task(), epochs=1, method="ttq")
    fresh = ternarize(model, method="ttq")
    quantizer = trained.features[3].parametrizations.weight[0]
    assert not torch.equal(quantizer.w_p, fresh.features[3].parametrizations.weight[0].w_p)
    assert not torch.equal(latent(trained.features[3]), latent(fresh.features[3]))


@pytest.mark.parametrize("method", ["binary", "twn", "ttq"])
def test_save_load_round_trip(tmp_path: Path, method: str) -> None:
    model = small_lenet()
    quantized = binarize(model) if method == "binary" else ternarize(model, method=method)
    path = save_model(tmp_path / f"{method}.pt", quantized)
    loaded = load_model(path).model
    x = blob_task().x_test
    assert torch.equal(loaded(x), quantized.eval()(x))


def test_storage_is_packed_bits_plus_fp32_scales_and_rest() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    binary = binarize(model)  # only the middle layer: 16 weights, 4 channel scales
    rest = 8 * 4 + 4 + 4 + 4 * 2 + 2  # first and last layers and every bias, fp32
    assert lowbit_storage_bytes(binary) == math.ceil(16 / 8) + 4 * 4 + 4 * rest
    ttq = ternarize(model, method="ttq")  # 2 bits per weight, one w_p and one w_n
    assert lowbit_storage_bytes(ttq) == math.ceil(32 / 8) + 4 * 2 + 4 * rest


def test_bad_arguments_raise_user_errors() -> None:
    model = small_lenet()
    with pytest.raises(UserError, match="unknown layer 'features.9'"):
        binarize(model, layers=["features.9"])
    with pytest.raises(UserError, match="algorithm must be one of 'twn', 'ttq'"):
        ternarize(model, method="ternary")
    with pytest.raises(UserError, match="threshold 1.5"):
        ternarize(model, method="ttq", threshold=1.5)
    with pytest.raises(UserError, match="needs a task"):
        binarize(model, epochs=1)
