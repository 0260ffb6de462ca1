"""AdaRound: learned rounding of weights (Nagel et al. 2020, "Up or Down? Adaptive Rounding
for Post-Training Quantization").

Rounding each weight to the nearest grid point is not what minimizes a layer's output
error. AdaRound chooses, per weight, between rounding down and up by optimizing a continuous
relaxation ``W~ = s * (floor(W / s) + h(V))`` with the rectified sigmoid
``h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (eq. 23) to minimize

    || f(W x) - f(W~ x~) ||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)        (eq. 25)

where ``x~`` is the layer's input in the quantized network, ``f`` a following ReLU, and the
regularizer (with ``beta`` annealed from 20 to 2) pushes ``h(V)`` to 0 or 1. Layers are
optimized one after another; the chosen rounding is written into the weight, which then
lies exactly on its grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from mobiledl.compress.quantize.capture import capture
from mobiledl.compress.quantize.graph import relu_function, sole_user
from mobiledl.compress.quantize.progress import progress
from mobiledl.compress.quantize.quantizer import FakeQuantize
from mobiledl.models.quantized import QuantLayer, quant_layers

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundConfig:
    """Optimization settings (the paper's defaults, fewer iterations)."""

    iters: int = 500
    batch_size: int = 32
    lr: float = 1e-2
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    seed: int = 0


def rectified_sigmoid(v: Tensor) -> Tensor:
    """``h(V)`` of eq. 23: a sigmoid stretched to (gamma, zeta) and clipped to [0, 1]."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _init_v(rest: Tensor) -> Tensor:
    """``V`` with ``h(V) = rest`` (the fractional part), so training starts at ``W``."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


class _SoftWeight:
    """``W~(V)`` of one layer's weight under its quantizer's fixed grid."""

    def __init__(self, quantizer: FakeQuantize, weight: Tensor) -> None:
        scale, zero_point = quantizer.qparams()
        shape = (-1,) + (1,) * (weight.dim() - 1) if scale.numel() > 1 else ()
        self.scale = scale.detach().reshape(shape)
        self.zero_point = zero_point.detach().float().reshape(shape)
        self.qmin, self.qmax = quantizer.spec.qmin, quantizer.spec.qmax
        scaled = weight.detach() / self.scale
        self.floor = torch.floor(scaled)
        self.v = nn.Parameter(_init_v(scaled - self.floor))

    def __call__(self, rounding: Tensor) -> Tensor:
        codes = torch.clamp(self.floor + rounding + self.zero_point, self.qmin, self.qmax)
        return (codes - self.zero_point) * self.scale

    def soft(self) -> Tensor:
        return self(rectified_sigmoid(self.v))

    def hard(self) -> Tensor:
        return self((rectified_sigmoid(self.v) >= 0.5).float())


def _beta(step: int, config: AdaRoundConfig) -> float | None:
    """Annealed exponent of the regularizer; ``None`` during warm-up (no regularizer)."""
    start = int(config.warmup * config.iters)
    if step < start:
        return None
    progress = (step - start) / max(1, config.iters - start)
    return config.beta_end + (config.beta_start - config.beta_end) * (1 - progress)


def round_layer(
    layer: QuantLayer,
    x: Tensor,
    target: Tensor,
    config: AdaRoundConfig,
    activation: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Learn the rounding of ``layer``'s weight from inputs ``x`` to float outputs ``target``.

    Returns the rounded weight (on the grid); the layer is not modified.
    """
    weight = _SoftWeight(layer.weight_quantizer, layer.weight)
    optimizer = torch.optim.Adam([weight.v], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    act = activation or (lambda t: t)
    goal = act(target)
    for step in range(config.iters):
        index = torch.randint(len(x), (min(config.batch_size, len(x)),), generator=generator)
        out = act(layer.forward_with(x[index], weight.soft()))
        loss = (out - goal[index]).square().flatten(1).sum(dim=1).mean()
        beta = _beta(step, config)
        if beta is not None:
            h = rectified_sigmoid(weight.v)
            loss = loss + config.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return weight.hard()


def _activation_after(model: nn.Module, name: str) -> Callable[[Tensor], Tensor] | None:
    """ReLU / ReLU6 applied right after layer ``name`` in the graph, if any."""
    if not isinstance(model, fx.GraphModule):
        return None
    for node in model.graph.nodes:
        if node.op == "call_module" and node.target == name:
            user = sole_user(node)
            return relu_function(model, user) if user is not None else None
    return None


def adaround(model: nn.Module, data: Tensor, config: AdaRoundConfig | None = None) -> list[str]:
    """Learn the rounding of every quantized layer's weight, in order, in place.

    Weight and activation quantizers must be calibrated. Returns the rounded layer names.
    """
    config = config or AdaRoundConfig()
    rounded = []
    for name, layer in progress(quant_layers(model).items(), "AdaRound"):
        if not isinstance(layer.weight_quantizer, FakeQuantize):
            continue
        x = capture(model, layer, data, output=False)
        target = capture(model, layer, data, output=True, quantized=False)
        new_weight = round_layer(layer, x, target, config, _activation_after(model, name))
        with torch.no_grad():
            layer.weight.copy_(new_weight)
        rounded.append(name)
    return rounded
