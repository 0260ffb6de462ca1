"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", Sec. 4.1).

For two layers ``y = W2 f(W1 x + b1) + b2`` with a positively homogeneous ``f`` (ReLU or
the identity), ``f(x / s) = f(x) / s`` for ``s > 0``, so dividing output channel ``i`` of
layer 1 by ``s_i`` and multiplying input channel ``i`` of layer 2 by ``s_i`` leaves the
function unchanged. Choosing ``s_i = sqrt(r1_i / r2_i)`` (``r`` = a channel's largest
absolute weight) gives both channels the range ``sqrt(r1_i * r2_i)``: per-tensor weight
grids then waste far less resolution on a few wide channels (e.g. in depthwise convs).

ReLU6 is not positively homogeneous; as in the paper, pairs joined by it are skipped unless
it is replaced by ReLU first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from mobiledl.compress.quantize.graph import WEIGHTED, relu_function, sole_user, target_module
from mobiledl.compress.quantize.quantizer import FakeQuantize

HOMOGENEOUS = (nn.Identity, nn.Dropout)
MAX_ITERATIONS = 20
TOLERANCE = 1e-6


def equalization_pairs(model: fx.GraphModule) -> list[tuple[str, str]]:
    """``(first, second)`` layer names joined by ReLU or nothing, first used only there.

    Fake quantizers between them are skipped (run equalization before calibration). The
    second layer must be an ordinary (groups = 1) or depthwise convolution, or a linear.
    """
    pairs = []
    for node in model.graph.nodes:
        first = target_module(model, node)
        if not isinstance(first, WEIGHTED):
            continue
        second = _next_weighted(model, node)
        if second is not None and _pairable(first, model.get_submodule(str(second.target))):
            pairs.append((str(node.target), str(second.target)))
    return pairs


def _next_weighted(model: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The weighted layer reached from ``node`` through homogeneous single-user ops."""
    current = sole_user(node)
    while current is not None:
        module = target_module(model, current)
        if isinstance(module, WEIGHTED):
            return current
        relu = relu_function(model, current) is F.relu
        if not relu and not isinstance(module, (*HOMOGENEOUS, FakeQuantize)):
            return None
        current = sole_user(current)
    return None


def _pairable(first: nn.Module, second: nn.Module) -> bool:
    channels = first.weight.shape[0]
    if isinstance(second, nn.Linear):
        return second.in_features == channels
    depthwise = second.groups == second.in_channels == second.out_channels == channels
    return second.in_channels == channels and (second.groups == 1 or depthwise)


def _input_channel_view(layer: nn.Module) -> Tensor:
    """``layer``'s weight with its input channels on dim 0 (a view)."""
    weight = layer.weight
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:  # depthwise: channel i is filter i
        return weight
    return weight.transpose(0, 1)


def _channel_max(weight: Tensor) -> Tensor:
    return weight.detach().abs().flatten(1).amax(dim=1)


@torch.no_grad()
def equalize_pair(first: nn.Module, second: nn.Module) -> float:
    """Rescale one pair in place; returns the largest relative change of a scale factor."""
    r1 = _channel_max(first.weight)
    r2 = _channel_max(_input_channel_view(second))
    valid = (r1 > 0) & (r2 > 0)
    scale = torch.where(valid, torch.sqrt(r1 / r2.clamp_min(1e-12)), torch.ones_like(r1))
    shape = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.div_(scale.reshape(shape))
    if first.bias is not None:
        first.bias.div_(scale)
    second_view = _input_channel_view(second)
    second_view.mul_(scale.reshape((-1,) + (1,) * (second_view.dim() - 1)))
    return float((scale - 1).abs().max()) if scale.numel() else 0.0


def equalize(model: fx.GraphModule) -> list[tuple[str, str]]:
    """Equalize every pair of ``model`` in place, sweeping until the scales settle.

    Returns the equalized pairs. Chains (a layer both second and first of two pairs) need
    several sweeps; at most ``MAX_ITERATIONS`` are made.
    """
    pairs = equalization_pairs(model)
    for _ in range(MAX_ITERATIONS):
        change = 0.0
        for first, second in pairs:
            layers = model.get_submodule(first), model.get_submodule(second)
            change = max(change, equalize_pair(*layers))
        if change < TOLERANCE:
            break
    return pairs
