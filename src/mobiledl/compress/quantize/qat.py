"""Quantization-aware training: fine-tune through the fake quantizers.

``apply(model, QATConfig(quant=QuantConfig(...)), task)`` starts from the PTQ model of the
same ``QuantConfig`` (as torchao's QAT reuses the PTQ config), trains it with the quantizers
in the forward pass, and returns a model with fixed grids, saved and exported exactly like a
PTQ model.
Batch norm is folded before training (its statistics stay frozen). ``config.algorithm``:

- ``ste`` (Jacob et al. 2018; Bengio et al. 2013): rounding passes gradients straight
  through (zero where clipped); weight grids follow the current weight range, activation
  grids an exponential moving average of the observed ranges.
- ``lsq`` (Esser et al. 2020, "Learned Step Size Quantization"): every step size (weights
  per channel, activations per tensor) is a parameter trained with the loss, its gradient
  scaled by ``1 / sqrt(N * Q_p)``.
- ``pact`` (Choi et al. 2018, "PACT: Parameterized Clipping Activation"): each
  non-negative activation is clipped at a learned ``alpha`` before quantization with step
  ``alpha / (2^b - 1)``; ``dy/dalpha = 1`` where ``x >= alpha``. Weights as in ``ste``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from mobiledl.compress.quantize.config import QATConfig, QuantConfig
from mobiledl.compress.quantize.observers import MovingAverageObserver
from mobiledl.compress.quantize.prepare import activation_quantizers, link_layer_inputs
from mobiledl.compress.quantize.ptq import calibrate_weights, ptq
from mobiledl.compress.quantize.quantizer import (
    EPS,
    FakeQuantize,
    QuantSpec,
    grad_scale,
    round_ste,
)
from mobiledl.core.task import TensorTask
from mobiledl.models.quantized import quant_layers, set_submodule
from mobiledl.train.trainer import TrainConfig, train

DEFAULT_LR = 0.005
ACT_AVERAGING = 0.01


def _shape_for(x: Tensor, spec: QuantSpec, values: Tensor) -> Tensor:
    if spec.per_channel and values.numel() > 1:
        shape = [1] * x.dim()
        shape[spec.ch_axis % x.dim()] = -1
        return values.reshape(shape)
    return values.reshape(())


class LSQFakeQuantize(FakeQuantize):
    """Fake quantizer with a learned step size (Esser et al. 2020), fixed zero point."""

    def __init__(self, spec: QuantSpec, scale: Tensor, zero_point: Tensor) -> None:
        super().__init__(spec, None, channels=scale.numel())
        self.set_qparams(scale, zero_point)
        self.step = nn.Parameter(scale.detach().clone().float())
        self.quantizing = True

    def qparams(self) -> tuple[Tensor, Tensor]:
        return self.step.abs().clamp_min(EPS), self.zero_point

    def _fake_quantize(self, x: Tensor) -> Tensor:
        per_scale = x.numel() / self.step.numel()
        if not self.spec.per_channel:
            per_scale = x[0].numel() if x.dim() > 1 else x.numel()
        factor = 1.0 / math.sqrt(per_scale * max(self.spec.qmax, 1))
        step = _shape_for(x, self.spec, grad_scale(self.qparams()[0], factor))
        zero_point = _shape_for(x, self.spec, self.zero_point.float())
        codes = torch.clamp(round_ste(x / step) + zero_point, self.spec.qmin, self.spec.qmax)
        return (codes - zero_point) * step


class PACTFakeQuantize(FakeQuantize):
    """Learned clipping of a non-negative activation at ``alpha`` (Choi et al. 2018)."""

    def __init__(self, spec: QuantSpec, alpha: float) -> None:
        super().__init__(spec, None)
        self.alpha = nn.Parameter(torch.tensor([max(alpha, EPS)]))
        self.quantizing = True

    def qparams(self) -> tuple[Tensor, Tensor]:
        scale = self.alpha.abs().clamp_min(EPS) / (self.spec.qmax - self.spec.qmin)
        return scale, torch.full_like(self.zero_point, self.spec.qmin)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        alpha = self.alpha.abs().reshape(())
        clipped = F.relu(x) - F.relu(x - alpha)  # clamp(x, 0, alpha), d/dalpha = [x > alpha]
        step = (alpha / (self.spec.qmax - self.spec.qmin)).detach()
        return clipped + (torch.round(clipped / step) * step - clipped).detach()


def _tracking(quantizer: FakeQuantize, averaging: float, per_channel: bool) -> FakeQuantize:
    """``quantizer`` made dynamic, its moving-average observer seeded with its range."""
    observer = MovingAverageObserver(0 if per_channel else None, averaging)
    lo, hi = quantizer.real_range()
    observer.min_val, observer.max_val = lo.detach().clone(), hi.detach().clone()
    quantizer.observer = observer
    quantizer.dynamic = True
    return quantizer


def _to_trainable(model: fx.GraphModule, method: str) -> None:
    """Swap the calibrated quantizers for the trainable kind ``method`` calls for."""
    for name, layer in quant_layers(model).items():
        quantizer = layer.weight_quantizer
        if method == "lsq":
            set_submodule(model, f"{name}.weight_quantizer", _lsq(quantizer))
        else:
            _tracking(quantizer, 1.0, quantizer.spec.per_channel)
    for key, quantizer in activation_quantizers(model).items():
        if method == "lsq":
            replacement = _lsq(quantizer)
        elif method == "pact" and _non_negative(quantizer):
            replacement = PACTFakeQuantize(quantizer.spec, float(quantizer.real_range()[1]))
        else:
            replacement = _tracking(quantizer, ACT_AVERAGING, False)
        model.get_submodule("activation_quantizers")[key] = replacement
    link_layer_inputs(model)


def _lsq(quantizer: FakeQuantize) -> LSQFakeQuantize:
    return LSQFakeQuantize(quantizer.spec, *quantizer.qparams())


def _non_negative(quantizer: FakeQuantize) -> bool:
    """A grid starting at 0 (the output of a ReLU-like op, asymmetric unsigned)."""
    return not quantizer.spec.signed and bool((quantizer.zero_point == quantizer.spec.qmin).all())


@torch.no_grad()
def freeze(model: fx.GraphModule) -> None:
    """Replace trained quantizers by fixed ones holding their final grids, in place.

    Weight grids that tracked the weight range are recomputed from the final weights.
    """
    for name, layer in quant_layers(model).items():
        set_submodule(model, f"{name}.weight_quantizer", _fixed(layer.weight_quantizer))
    quantizers = model.get_submodule("activation_quantizers")
    for key, quantizer in activation_quantizers(model).items():
        quantizers[key] = _fixed(quantizer)
    link_layer_inputs(model)
    calibrate_weights(model)


def _fixed(quantizer: FakeQuantize) -> FakeQuantize:
    """A plain, switched-on ``FakeQuantize`` with ``quantizer``'s current grid and observer."""
    scale, zero_point = (p.detach().clone() for p in quantizer.qparams())
    fixed = FakeQuantize(quantizer.spec, quantizer.observer, channels=scale.numel())
    fixed.set_qparams(scale, zero_point)
    fixed.enable()
    return fixed


def qat_model(model: nn.Module, config: QATConfig, task: TensorTask) -> fx.GraphModule:
    """A quantized copy of ``model`` trained with ``config.algorithm`` for ``config.train``;
    the best epoch on validation is kept and the grids are then fixed."""
    quantized, _ = ptq(model, dataclasses.replace(config.quant, bias_correction=False), task)
    _to_trainable(quantized, config.algorithm)
    if config.train.epochs:
        train(quantized, task, config.train)
    freeze(quantized)
    quantized.eval()
    return quantized


def qat(
    model: nn.Module,
    task: TensorTask,
    config: QuantConfig | None = None,
    epochs: int = 3,
    train_config: TrainConfig | None = None,
    algorithm: str = "ste",
) -> fx.GraphModule:
    """Deprecated: use ``mobiledl.apply(model, QATConfig(...), task)``."""
    warnings.warn("qat() is deprecated; use mobiledl.apply", DeprecationWarning, stacklevel=2)
    base = train_config or TrainConfig(lr=DEFAULT_LR, warmup_epochs=0.0, progress=False)
    training = dataclasses.replace(base, epochs=epochs)
    qat_config = QATConfig(quant=config or QuantConfig(), algorithm=algorithm, train=training)
    return qat_model(model, qat_config, task)
