"""Mixed precision: a bit width per layer for weights and input activations.

Layers differ in how much precision they need (HAQ, Wang et al. 2019; HAWQ, Dong et al.
2019), so a model-size budget is spent better unevenly than uniformly. This module

- applies a per-layer configuration ``{layer: weight bits}`` or
  ``{layer: {"weight": w, "act": a}}`` with the linear fake-quant primitives of
  :mod:`mobiledl.compress.quantize.quantizer` (symmetric per-channel weight grids, asymmetric
  per-tensor activation grids calibrated with a min/max observer); ``act`` quantizes the
  layer's *input*;
- measures per-layer sensitivity **by direct measurement, not a Hessian proxy**: each layer
  alone has its weights quantized at each candidate width while the rest stays float, and
  the increase of the validation loss (cross-entropy; the accuracy drop is recorded beside
  it) is that layer's sensitivity at that width;
- proposes a weight bit allocation under a model-size budget greedily: start every layer
  at the widest candidate and repeatedly narrow the layer whose next step costs the least
  loss increase per byte saved, until the model fits (a standard heuristic for this
  multiple-choice knapsack; it assumes per-layer sensitivities add up).

Sizes count weights at their bit widths, one fp32 scale per output channel and every other
parameter at fp32. Widths other than 8 bits are simulated: ONNX Runtime has 8-bit kernels
only, so a 3-bit layer exports as 8-bit codes on a 3-bit grid.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mobiledl.compress.quantize.config import MixedPrecisionConfig
from mobiledl.compress.quantize.observers import MovingAverageObserver, make_observer
from mobiledl.compress.quantize.quantizer import (
    MAX_BITS,
    MIN_BITS,
    FakeQuantize,
    QuantSpec,
    compute_qparams,
    fake_quantize,
    tensor_range,
)
from mobiledl.core.clone import clone_module
from mobiledl.core.config import LayerRule
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_transform
from mobiledl.models.quantized import quant_layer, set_submodule
from mobiledl.train.trainer import TrainConfig, predict, train

WEIGHTED_TYPES = (nn.Conv2d, nn.Linear)
DEFAULT_CANDIDATES = (2, 3, 4, 5, 6, 8)
CALIBRATION_SAMPLES = 512
FINETUNE_LR = 0.01


@dataclass(frozen=True)
class LayerPrecision:
    """Bits of one layer's weights and of its input activation (``None``: float)."""

    weight: int | None
    act: int | None = None


def weight_spec(bits: int) -> QuantSpec:
    """Symmetric per-output-channel weight grid."""
    return QuantSpec(bits, symmetric=True, per_channel=True, ch_axis=0)


def act_spec(bits: int) -> QuantSpec:
    """Asymmetric per-tensor activation grid (0.0 stays exact)."""
    return QuantSpec(bits, symmetric=False)


def quantize_weight(weight: Tensor, bits: int) -> Tensor:
    """``weight`` fake-quantized on its per-channel min/max grid of ``bits`` bits."""
    spec = weight_spec(bits)
    scale, zero_point = compute_qparams(*tensor_range(weight, spec), spec)
    return fake_quantize(weight, scale, zero_point, spec)


class InputQuantized(nn.Module):
    """Fake-quantize the input activation, then run the (weight-quantized) layer."""

    def __init__(self, layer: nn.Module, input_quantizer: FakeQuantize) -> None:
        super().__init__()
        self.input_quantizer = input_quantizer
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(self.input_quantizer(x))


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Float ``Conv2d`` / ``Linear`` layers by module name, in registration order."""
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) in WEIGHTED_TYPES and isinstance(module.weight, nn.Parameter)
    }


def _check_bits(layer: str, field: str, bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(
            f"mixed precision: {field} bits of layer '{layer}' must be an integer in "
            f"{MIN_BITS}..{MAX_BITS}; got {bits!r}"
        )
    return bits


def _precision(layer: str, value: Any, default_act_bits: int | None) -> LayerPrecision:
    """One config entry (an int or ``{"weight": w, "act": a}``) as a ``LayerPrecision``."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"weight", "act"}
        if unknown or "weight" not in value:
            raise UserError(
                f"mixed precision: layer '{layer}' needs {{'weight': bits, 'act': bits}}; "
                f"got keys {sorted(value)}"
            )
        act = value.get("act", default_act_bits)
        weight = _check_bits(layer, "weight", value["weight"])
        return LayerPrecision(weight, None if act is None else _check_bits(layer, "act", act))
    act = None if default_act_bits is None else _check_bits(layer, "act", default_act_bits)
    return LayerPrecision(_check_bits(layer, "weight", value), act)


def select_layers(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Module]:
    """The named float layers of ``model`` (all if ``names`` is None); unknown names raise."""
    layers = weighted_layers(model)
    if names is None:
        return layers
    for name in names:
        if name not in layers:
            raise UserError(
                f"mixed precision: unknown layer '{name}'; quantizable layers: {', '.join(layers)}"
            )
    return {name: layers[name] for name in names}


def parse_config(
    model: nn.Module, config: Mapping[str, Any], default_act_bits: int | None = None
) -> dict[str, LayerPrecision]:
    """Validate ``{layer: bits | {"weight": w, "act": a}}`` against ``model``'s layers."""
    select_layers(model, list(config))
    return {name: _precision(name, value, default_act_bits) for name, value in config.items()}


def _wrap(model: nn.Module, precisions: Mapping[str, LayerPrecision]) -> nn.Module:
    """Replace each named layer by its fake-quantized version (in place).

    Weight grids are set from the weights and enabled; input quantizers stay off until
    calibrated.
    """
    for name, precision in precisions.items():
        quantized = model.get_submodule(name)
        if precision.weight is not None:
            quantized = quant_layer(quantized, _weight_quantizer(quantized, precision.weight))
        if precision.act is not None:
            act_quantizer = FakeQuantize(act_spec(precision.act), make_observer("minmax"))
            quantized = InputQuantized(quantized, act_quantizer)
        set_submodule(model, name, quantized)
    return model


def _weight_quantizer(layer: nn.Module, bits: int) -> FakeQuantize:
    """A per-channel weight quantizer set from ``layer``'s weight; training re-reads its range."""
    observer = MovingAverageObserver(ch_axis=0, averaging_constant=1.0)
    quantizer = FakeQuantize(weight_spec(bits), observer, layer.weight.shape[0])
    quantizer.dynamic = True
    with torch.no_grad():
        quantizer.observer(layer.weight)
        quantizer.update_qparams()
    quantizer.enable()
    return quantizer


@torch.no_grad()
def _calibrate(model: nn.Module, task: TensorTask, samples: int) -> None:
    """Set every input quantizer's range from ``samples`` training inputs."""
    quantizers = [m.input_quantizer for m in model.modules() if isinstance(m, InputQuantized)]
    if not quantizers:
        return
    for quantizer in quantizers:
        quantizer.observing = True
    predict(model, task.x_train[:samples])
    for quantizer in quantizers:
        quantizer.update_qparams()
        quantizer.enable()


@register_transform("mixed_precision")
def _rebuild(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Re-wrap the layers when ``load_model`` rebuilds a mixed-precision model."""
    precisions = {name: LayerPrecision(*bits) for name, bits in config["layers"].items()}
    model = _wrap(model, precisions)
    for module in model.modules():
        if isinstance(module, InputQuantized):
            module.input_quantizer.enable()  # its scale and zero point come from the file
    return model


def config_precisions(model: nn.Module, config: MixedPrecisionConfig) -> dict[str, LayerPrecision]:
    """The precision of every float Conv2d/Linear under ``config`` (layers left with neither
    weight nor input bits are not listed: they stay float)."""
    precisions = {}
    for name, module in weighted_layers(model).items():
        layer = config.for_layer(name, module)
        if layer is not None and (layer.weight_bits is not None or layer.act_bits is not None):
            precisions[name] = LayerPrecision(layer.weight_bits, layer.act_bits)
    return precisions


def mixed_model(
    model: nn.Module, config: MixedPrecisionConfig, task: TensorTask | None
) -> nn.Module:
    """``model`` (changed in place) with per-layer weight and input-activation bit widths.

    Activation ranges are calibrated on ``config.calibration_samples`` training inputs of
    ``task``; fine-tuning epochs then train with the straight-through estimator.
    """
    precisions = config_precisions(model, config)
    needs_data = config.finetune.epochs > 0 or any(p.act is not None for p in precisions.values())
    if needs_data and task is None:
        raise UserError("mixed precision: activation calibration and fine-tuning need a task")
    quantized = _wrap(model, precisions)
    if getattr(quantized, "mobiledl_arch", None):
        layers = {name: [p.weight, p.act] for name, p in precisions.items()}
        record_transform(quantized, "mixed_precision", {"layers": layers})
    if task is not None:
        _calibrate(quantized, task, config.calibration_samples)
    if config.finetune.epochs > 0:
        train(quantized, task, config.finetune)
    return quantized


def mixed_precision(
    model: nn.Module,
    config: Mapping[str, Any],
    task: TensorTask | None = None,
    default_act_bits: int | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
    finetune_epochs: int = 0,
    train_config: TrainConfig | None = None,
) -> nn.Module:
    """Deprecated: use ``mobiledl.apply(model, MixedPrecisionConfig(overrides=...), task)``.

    ``config`` maps module names to weight bits or to ``{"weight": w, "act": a}``; unlisted
    layers stay float.
    """
    warnings.warn("mixed_precision() is deprecated; use mobiledl.apply", DeprecationWarning, 2)
    precisions = parse_config(model, config, default_act_bits)
    rules = tuple(
        LayerRule((name,), {"weight_bits": p.weight, "act_bits": p.act})
        for name, p in precisions.items()
    )
    base = train_config or TrainConfig(lr=FINETUNE_LR, progress=False)
    method_config = MixedPrecisionConfig(
        weight_bits=None,
        act_bits=None,
        calibration_samples=calibration_samples,
        finetune=dataclasses.replace(base, epochs=finetune_epochs),
        overrides=rules,
    )
    return mixed_model(clone_module(model), method_config, task)


# ---------------------------------------------------------------- sizes


def _other_values(model: nn.Module, layers: Mapping[str, nn.Module]) -> int:
    """Parameters outside the weights of ``layers`` (biases, norms, other layers)."""
    weights = {id(layer.weight) for layer in layers.values()}
    return sum(p.numel() for p in model.parameters() if id(p) not in weights)


def layer_bytes(weights: int, channels: int, bits: int | None) -> int:
    """Bytes of one weight tensor: packed ``bits``-bit codes plus fp32 per-channel scales."""
    if bits is None:
        return 4 * weights
    return math.ceil(weights * bits / 8) + 4 * channels


def model_size_bytes(model: nn.Module, weight_bits: Mapping[str, int]) -> int:
    """Size of a float ``model`` with the named layers' weights at ``weight_bits``."""
    layers = weighted_layers(model)
    unknown = set(weight_bits) - set(layers)
    if unknown:
        raise UserError(f"mixed precision: unknown layer(s) {', '.join(sorted(unknown))}")
    total = 4 * _other_values(model, layers)
    for name, layer in layers.items():
        total += layer_bytes(layer.weight.numel(), layer.weight.shape[0], weight_bits.get(name))
    return total


# ---------------------------------------------------------------- sensitivity and allocation


@dataclass
class BitSensitivity:
    """Validation loss and accuracy with one layer's weights quantized, per layer and width.

    ``loss[name][i]`` belongs to ``bits[i]``; ``weights`` / ``channels`` size each layer and
    ``other_values`` counts the parameters that stay fp32.
    """

    baseline_loss: float
    baseline_accuracy: float
    bits: list[int]
    loss: dict[str, list[float]]
    accuracy: dict[str, list[float]]
    weights: dict[str, int]
    channels: dict[str, int]
    other_values: int
    split: str

    def size_bytes(self, allocation: Mapping[str, int]) -> int:
        """Model size with each analysed layer at ``allocation[name]`` bits."""
        layers = sum(
            layer_bytes(self.weights[name], self.channels[name], bits)
            for name, bits in allocation.items()
        )
        return layers + 4 * self.other_values

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _score(model: nn.Module, x: Tensor, y: Tensor, task: TensorTask) -> tuple[float, float]:
    logits = predict(model, x)
    return float(task.loss(logits, y)), task.metric(logits, y)


@torch.no_grad()
def bit_sensitivity(
    model: nn.Module,
    task: TensorTask,
    bits: Sequence[int] = DEFAULT_CANDIDATES,
    layers: Sequence[str] | None = None,
    split: str = "val",
) -> BitSensitivity:
    """Quantize one layer at a time to each width in ``bits`` and measure loss and accuracy.

    ``layers`` defaults to every float ``Conv2d`` / ``Linear``; the others stay float.
    """
    candidates = sorted({_check_bits("(all)", "candidate", b) for b in bits})
    chosen = select_layers(model, layers)
    work = clone_module(model).eval()
    x, y = task.split(split)
    base_loss, base_acc = _score(work, x, y, task)
    loss: dict[str, list[float]] = {}
    accuracy: dict[str, list[float]] = {}
    for name in chosen:
        weight = work.get_submodule(name).weight
        original = weight.detach().clone()
        loss[name], accuracy[name] = [], []
        for width in candidates:
            weight.copy_(quantize_weight(original, width))
            layer_loss, layer_acc = _score(work, x, y, task)
            loss[name].append(layer_loss)
            accuracy[name].append(layer_acc)
        weight.copy_(original)
    return BitSensitivity(
        baseline_loss=base_loss,
        baseline_accuracy=base_acc,
        bits=candidates,
        loss=loss,
        accuracy=accuracy,
        weights={name: layer.weight.numel() for name, layer in chosen.items()},
        channels={name: layer.weight.shape[0] for name, layer in chosen.items()},
        other_values=_other_values(model, chosen),
        split=split,
    )


def propose_bits(sensitivity: BitSensitivity, budget_bytes: int) -> dict[str, int]:
    """Weight bits per layer so the model fits ``budget_bytes``, spending bits where needed.

    Greedy on sensitivity per byte: from the widest candidate everywhere, narrow one layer
    at a time, always the step with the smallest loss increase per byte saved, until the
    model fits; then widen back, best loss decrease per byte first, while it still fits
    (the last narrowing step may have freed more bytes than needed).
    """
    widths = sensitivity.bits
    level = dict.fromkeys(sensitivity.loss, len(widths) - 1)

    def allocation() -> dict[str, int]:
        return {name: widths[i] for name, i in level.items()}

    def step(name: str, to: int) -> tuple[float, int]:
        """(loss change, bytes change) of moving ``name`` to level ``to``."""
        weights, channels = sensitivity.weights[name], sensitivity.channels[name]
        loss = sensitivity.loss[name][to] - sensitivity.loss[name][level[name]]
        size = layer_bytes(weights, channels, widths[to])
        return loss, size - layer_bytes(weights, channels, widths[level[name]])

    def narrowing_cost(name: str) -> float:
        loss, size = step(name, level[name] - 1)
        return loss / max(-size, 1)

    while sensitivity.size_bytes(allocation()) > budget_bytes:
        movable = [name for name, i in level.items() if i > 0]
        if not movable:
            raise UserError(
                f"mixed precision: budget {budget_bytes:,} bytes is below the smallest size "
                f"{sensitivity.size_bytes(allocation()):,} bytes (every layer at {widths[0]} bits)"
            )
        level[min(movable, key=narrowing_cost)] -= 1
    while True:
        room = budget_bytes - sensitivity.size_bytes(allocation())
        gains = {
            name: step(name, i + 1)
            for name, i in level.items()
            if i + 1 < len(widths) and step(name, i + 1)[1] <= room
        }
        gains = {name: (loss, size) for name, (loss, size) in gains.items() if loss < 0}
        if not gains:
            return allocation()
        best = min(gains, key=lambda name: gains[name][0] / max(gains[name][1], 1))
        level[best] += 1
