"""Binary and ternary weights trained with the straight-through estimator.

- **Binary** (BinaryConnect, Courbariaux et al. 2015): the forward pass uses ``sign(W)``, the
  backward pass sends the gradient to the full-precision latent ``W`` (zero where ``|W| > 1``,
  the hard-tanh STE). Following XNOR-Net (Rastegari et al. 2016) the signs are scaled by
  ``alpha = mean|W|`` per output channel, so each channel takes exactly the values ``±alpha``.
- **Ternary, TWN** (Li et al. 2016, Ternary Weight Networks): ``W_t = alpha * sign(W)`` where
  ``|W| > Delta`` and 0 elsewhere, with ``Delta = 0.7 * mean|W|`` and ``alpha`` the mean of the
  kept ``|W|``, per layer as in the paper (per channel on request).
- **Ternary, TTQ** (Zhu et al. 2017, Trained Ternary Quantization): ``W_t = +W_p`` above
  ``Delta = t * max|W|`` (``t = 0.05``), ``-W_n`` below ``-Delta``, 0 elsewhere, where the
  positive and negative scales ``W_p, W_n`` are trained; the latent weights get the gradient
  scaled by ``W_p`` / 1 / ``W_n`` in the three regions.

The quantizers are ``torch.nn.utils.parametrize`` parametrizations of the layer's ``weight``, so
a quantized layer stays an ``nn.Conv2d`` / ``nn.Linear`` (profilers and ONNX export see it) while
the optimizer updates the latent full-precision weight. As in the papers, the first and the last
weighted layer stay full precision by default.

**Storage.** A frozen model file (``save_model(..., frozen=True)``, the default of the
method commands) stores the weights at 1 or 2 bits each plus fp32 scales
(``mobiledl.models.packed``); an ONNX export stores them bit-packed too
(``mobiledl.deploy.onnx_packing``). ONNX Runtime has no 1- or 2-bit kernel, so it unpacks them
to fp32 weights (values ``±alpha`` or ``{-W_n, 0, W_p}``) at load and runs no faster.
:func:`lowbit_storage_bytes` counts what the packed weights take.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mobiledl.compress.quantize.config import BinaryConfig, TernaryConfig
from mobiledl.core.clone import clone_module
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_freeze, register_transform
from mobiledl.profile.storage import packed_storage_bytes
from mobiledl.train.trainer import TrainConfig, train

WEIGHTED_TYPES = (nn.Conv2d, nn.Linear)
TWN_THRESHOLD = 0.7
TTQ_THRESHOLD = 0.05
# Adam by default: a TTQ scale's gradient is a sum over every weight of its region, and plain
# SGD at lr 0.01 diverged to chance accuracy on LeNet-5; Adam trained binary and TWN weights
# at least as well as SGD there too (measured with `python -m benchmarks deep_compression`).
DEFAULT_TRAIN = TrainConfig(optimizer="adamw", lr=1e-3, progress=False)


class _SignSTE(torch.autograd.Function):
    """``sign`` with ``sign(0) = +1`` forward; hard-tanh straight-through gradient backward."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (weight,) = ctx.saved_tensors
        return grad * (weight.abs() <= 1).to(grad.dtype)


def _reduce_dims(weight: Tensor, per_channel: bool) -> tuple[int, ...]:
    """Dimensions a scale is shared over: all but the output channel, or all."""
    return tuple(range(1, weight.dim())) if per_channel else tuple(range(weight.dim()))


class BinaryWeight(nn.Module):
    """Parametrization ``W -> alpha * sign(W)`` with ``alpha = mean|W|`` (XNOR-Net, eq. 4).

    The gradient reaches ``W`` through the STE of BinaryConnect and through ``alpha``.
    """

    def __init__(self, per_channel: bool = True) -> None:
        super().__init__()
        self.per_channel = per_channel

    def forward(self, weight: Tensor) -> Tensor:
        alpha = weight.abs().mean(dim=_reduce_dims(weight, self.per_channel), keepdim=True)
        return alpha * _SignSTE.apply(weight)

    def packed_bytes(self, weight: Tensor) -> int:
        """1 bit per weight plus one fp32 ``alpha`` per channel (or per layer)."""
        return _packed(weight, 1, self.per_channel, scales_per_channel=1)


class _TernarySTE(torch.autograd.Function):
    """TWN ternarization forward; the gradient passes straight through to the latent weight."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, threshold: float, dims: tuple[int, ...]) -> Tensor:
        magnitude = weight.abs()
        delta = threshold * magnitude.mean(dim=dims, keepdim=True)
        kept = (magnitude > delta).to(weight.dtype)
        count = kept.sum(dim=dims, keepdim=True).clamp(min=1)
        alpha = (magnitude * kept).sum(dim=dims, keepdim=True) / count
        return alpha * torch.sign(weight) * kept

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


class TernaryWeight(nn.Module):
    """Parametrization of Ternary Weight Networks: ``W -> alpha * sign(W) * [|W| > Delta]``.

    ``Delta = threshold * mean|W|`` (0.7, Li et al. 2016, eq. 6) and ``alpha`` is the mean of
    the ``|W|`` above ``Delta`` (eq. 5). The straight-through estimator passes the gradient of
    the ternary weight unchanged to the latent weight.
    """

    def __init__(self, threshold: float = TWN_THRESHOLD, per_channel: bool = False) -> None:
        super().__init__()
        self.threshold = threshold
        self.per_channel = per_channel

    def forward(self, weight: Tensor) -> Tensor:
        dims = _reduce_dims(weight, self.per_channel)
        return _TernarySTE.apply(weight, self.threshold, dims)

    def packed_bytes(self, weight: Tensor) -> int:
        """2 bits per weight plus one fp32 ``alpha`` per layer (or per channel)."""
        return _packed(weight, 2, self.per_channel, scales_per_channel=1)


def _packed(weight: Tensor, bits: int, per_channel: bool, scales_per_channel: int) -> int:
    scales = (weight.shape[0] if per_channel else 1) * scales_per_channel
    return math.ceil((bits * weight.numel() + 32 * scales) / 8)


class _TrainedTernary(torch.autograd.Function):
    """TTQ forward and backward (Zhu et al. 2017, eqs. 6-8) for broadcastable scales."""

    @staticmethod
    def forward(
        ctx: Any,
        weight: Tensor,
        w_p: Tensor,
        w_n: Tensor,
        threshold: float,
        dims: tuple[int, ...],
    ) -> Tensor:
        delta = threshold * weight.abs().amax(dim=dims, keepdim=True)
        positive = (weight > delta).to(weight.dtype)
        negative = (weight < -delta).to(weight.dtype)
        ctx.save_for_backward(positive, negative, w_p, w_n)
        ctx.dims = dims
        return w_p * positive - w_n * negative

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        positive, negative, w_p, w_n = ctx.saved_tensors
        zero = 1.0 - positive - negative
        grad_weight = grad * (w_p * positive + w_n * negative + zero)
        grad_p = (grad * positive).sum(dim=ctx.dims, keepdim=True)
        grad_n = -(grad * negative).sum(dim=ctx.dims, keepdim=True)
        return grad_weight, grad_p, grad_n, None, None


class TrainedTernaryWeight(nn.Module):
    """Parametrization of Trained Ternary Quantization with learned scales ``w_p``, ``w_n``.

    ``Delta = threshold * max|W|`` (0.05 in the paper). The scales start at the mean magnitude
    of the weights above / below ``±Delta`` and are trained with the network; they are stored
    as vectors (one entry per layer, or per output channel) so the trainer does not decay them.
    """

    def __init__(
        self, weight: Tensor, threshold: float = TTQ_THRESHOLD, per_channel: bool = False
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.per_channel = per_channel
        dims = _reduce_dims(weight, per_channel)
        with torch.no_grad():
            delta = threshold * weight.abs().amax(dim=dims, keepdim=True)
            positive, negative = weight > delta, weight < -delta
            w_p = (weight * positive).sum(dim=dims) / positive.sum(dim=dims).clamp(min=1)
            w_n = -(weight * negative).sum(dim=dims) / negative.sum(dim=dims).clamp(min=1)
        self.w_p = nn.Parameter(w_p.reshape(-1).clone())
        self.w_n = nn.Parameter(w_n.reshape(-1).clone())

    def forward(self, weight: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (weight.dim() - 1) if self.per_channel else ()
        w_p, w_n = self.w_p.reshape(shape), self.w_n.reshape(shape)
        dims = _reduce_dims(weight, self.per_channel)
        return _TrainedTernary.apply(weight, w_p, w_n, self.threshold, dims)

    def packed_bytes(self, weight: Tensor) -> int:
        """2 bits per weight plus the fp32 scales ``w_p`` and ``w_n``."""
        return _packed(weight, 2, self.per_channel, scales_per_channel=2)


LowBitWeight = BinaryWeight | TernaryWeight | TrainedTernaryWeight


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``Conv2d`` and ``Linear`` by module name, in registration (forward) order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHTED_TYPES)}


def select_layers(model: nn.Module, layers: Sequence[str] | None, what: str) -> list[str]:
    """``layers`` checked against the model, or every weighted layer but the first and last."""
    available = list(weighted_layers(model))
    if layers is None:
        return available[1:-1]
    for name in layers:
        if name not in available:
            raise UserError(
                f"{what}: unknown layer '{name}'; weighted layers: {', '.join(available)}"
            )
    return list(layers)


def _quantizer(layer: nn.Module, config: dict[str, Any]) -> LowBitWeight:
    """The parametrization described by a transform ``config`` for ``layer``'s weight."""
    method = config["method"]
    if method == "binary":
        return BinaryWeight(config["per_channel"])
    if method == "twn":
        return TernaryWeight(config["threshold"], config["per_channel"])
    return TrainedTernaryWeight(layer.weight.detach(), config["threshold"], config["per_channel"])


def _apply(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Register the low-bit parametrization on each layer named in ``config`` (in place)."""
    for name in config["layers"]:
        layer = model.get_submodule(name)
        parametrize.register_parametrization(layer, "weight", _quantizer(layer, config))
    return model


@register_transform("lowbit")
def _rebuild(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Re-apply binarization / ternarization when ``load_model`` rebuilds a model."""
    return _apply(model, config)


@register_freeze("lowbit")
def _freeze(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Replace each latent weight by the low-bit weight it computes (for a frozen file)."""
    for name in config["layers"]:
        parametrize.remove_parametrizations(model.get_submodule(name), "weight")
    return model


def _lowbit_model(
    model: nn.Module, record: dict[str, Any], task: TensorTask | None, training: TrainConfig
) -> nn.Module:
    """Parametrize ``model``'s layers (in place), record the transform, train with the STE."""
    if training.epochs and task is None:
        raise UserError(f"{record['method']}: training for {training.epochs} epochs needs a task")
    quantized = _apply(model, record)
    if getattr(quantized, "mobiledl_arch", None):
        record_transform(quantized, "lowbit", record)
    if training.epochs:
        train(quantized, task, training)
    return quantized


def binary_model(model: nn.Module, config: BinaryConfig, task: TensorTask | None) -> nn.Module:
    """``model`` (changed in place) with binary weights ``±alpha`` (BinaryConnect + XNOR-Net
    scaling), stored at 1 bit per weight in a frozen file (see :func:`lowbit_storage_bytes`)."""
    record = {
        "method": "binary",
        "layers": select_layers(model, config.layers, "binarize"),
        "per_channel": config.per_channel,
    }
    return _lowbit_model(model, record, task, config.train)


def ternary_model(model: nn.Module, config: TernaryConfig, task: TensorTask | None) -> nn.Module:
    """``model`` (changed in place) with ternary weights, TWN or TTQ, stored at 2 bits per weight
    in a frozen file."""
    default = TWN_THRESHOLD if config.algorithm == "twn" else TTQ_THRESHOLD
    threshold = default if config.threshold is None else float(config.threshold)
    upper = 1.0 if config.algorithm == "ttq" else math.inf  # TTQ: a fraction of max|W|
    if not 0.0 <= threshold < upper:
        raise UserError(f"ternarize: threshold {threshold} is out of range for {config.algorithm}")
    record = {
        "method": config.algorithm,
        "layers": select_layers(model, config.layers, "ternarize"),
        "threshold": threshold,
        "per_channel": config.per_channel,
    }
    return _lowbit_model(model, record, task, config.train)


def binarize(
    model: nn.Module,
    task: TensorTask | None = None,
    epochs: int = 0,
    layers: Sequence[str] | None = None,
    per_channel: bool = True,
    train_config: TrainConfig | None = None,
) -> nn.Module:
    """Deprecated: use ``mobiledl.apply(model, BinaryConfig(...), task)``."""
    warnings.warn("binarize() is deprecated; use mobiledl.apply", DeprecationWarning, 2)
    training = dataclasses.replace(train_config or DEFAULT_TRAIN, epochs=_epochs(epochs))
    config = BinaryConfig(layers=_names(layers), per_channel=per_channel, train=training)
    return binary_model(clone_module(model), config, task)


def ternarize(
    model: nn.Module,
    task: TensorTask | None = None,
    epochs: int = 0,
    method: Literal["twn", "ttq"] = "twn",
    layers: Sequence[str] | None = None,
    threshold: float | None = None,
    per_channel: bool = False,
    train_config: TrainConfig | None = None,
) -> nn.Module:
    """Deprecated: use ``mobiledl.apply(model, TernaryConfig(...), task)``."""
    warnings.warn("ternarize() is deprecated; use mobiledl.apply", DeprecationWarning, 2)
    training = dataclasses.replace(train_config or DEFAULT_TRAIN, epochs=_epochs(epochs))
    config = TernaryConfig(
        algorithm=method,
        threshold=threshold,
        layers=_names(layers),
        per_channel=per_channel,
        train=training,
    )
    return ternary_model(clone_module(model), config, task)


def _epochs(epochs: int) -> int:
    if epochs < 0:
        raise UserError(f"epochs must be >= 0; got {epochs}")
    return epochs


def _names(layers: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if layers is None else tuple(layers)


def lowbit_storage_bytes(model: nn.Module) -> int:
    """Simulated storage: packed 1-bit (binary) or 2-bit (ternary) weights plus fp32 scales;
    every other parameter at 4 bytes (``mobiledl.profile.packed_storage_bytes``). Simulated:
    no engine mobiledl targets runs 1- or 2-bit kernels."""
    packed = packed_storage_bytes(model)
    return packed if packed is not None else 4 * sum(p.numel() for p in model.parameters())
