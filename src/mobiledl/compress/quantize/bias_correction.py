"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", Sec. 4.2).

Weight quantization error ``eps = W_q - W`` shifts a layer's expected output by
``E[eps x]``, a bias that rounding to nearest does not cancel and that deeper layers
amplify. For each quantized layer in order, we feed calibration data through the quantized
network, measure the mean output shift per channel between the quantized and the float
weight on the same inputs, and subtract it from the layer's bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobiledl.compress.quantize.capture import capture
from mobiledl.models.quantized import QuantLayer, quant_layers


def _channel_mean(y: Tensor) -> Tensor:
    """Mean over every dimension but the channel dimension (1)."""
    return y.transpose(0, 1).flatten(1).mean(dim=1)


@torch.no_grad()
def output_shift(layer: QuantLayer, x: Tensor) -> Tensor:
    """Mean per-channel difference between the quantized and the float layer on ``x``."""
    quantized = layer.forward_with(x, layer.quantized_weight())
    reference = layer.forward_with(x, layer.weight)
    return _channel_mean(quantized - reference)


@torch.no_grad()
def correct_bias(model: nn.Module, data: Tensor) -> list[str]:
    """Correct the bias of every quantized layer that has one, in place; returns their names.

    Layers are processed in order, each seeing inputs from the already corrected network.
    """
    corrected = []
    for name, layer in quant_layers(model).items():
        if layer.bias is None:
            continue
        x = capture(model, layer, data, output=False)
        layer.bias.sub_(output_shift(layer, x))
        corrected.append(name)
    return corrected
