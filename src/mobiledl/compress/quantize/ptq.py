"""Post-training quantization: module in, quantized module out.

``apply(model, QuantConfig(...), task)`` runs the standard PTQ pipeline (Krishnamoorthi
2018; Nagel et al. 2021, "A White Paper on Neural Network Quantization", Sec. 4):

1. fold BatchNorm and insert fake quantizers (``prepare``);
2. optionally equalize weight ranges across layers (CLE, Nagel et al. 2019);
3. choose weight grids from the weights, activation grids by running calibration data
   through the float model with an observer (min-max, moving average, percentile, MSE),
   or pick the observer whose quantized model is most accurate on the task's
   validation split (``observer="auto"``: the best calibration differs between models, e.g.
   percentile clipping for long-tailed activations, Wu et al. 2020, Sec. 4.1; one
   calibration pass serves every candidate);
4. optionally learn the weight rounding (AdaRound, Nagel et al. 2020) and correct the
   output bias that weight quantization leaves (Nagel et al. 2019).

The result runs in plain PyTorch (simulated quantization), saves and reloads with
``save_model`` / ``load_model``, and exports to an int8 ONNX graph (``export_int8_onnx``).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import torch
from torch import Tensor, fx, nn

from mobiledl.compress.quantize.adaround import AdaRoundConfig, adaround
from mobiledl.compress.quantize.bias_correction import correct_bias
from mobiledl.compress.quantize.capture import batches
from mobiledl.compress.quantize.config import AUTO, AUTO_OBSERVERS, QuantConfig
from mobiledl.compress.quantize.equalize import equalize
from mobiledl.compress.quantize.observers import CalibrationObserver, Observer
from mobiledl.compress.quantize.prepare import activation_quantizers, prepare, rerecord_transform
from mobiledl.compress.quantize.progress import progress
from mobiledl.compress.quantize.quantizer import (
    FakeQuantize,
    fake_quant_disabled,
    fake_quantizers,
)
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.quantized import quant_layers
from mobiledl.train.trainer import evaluate

logger = logging.getLogger(__name__)


def calibration_data(task: TensorTask, samples: int, seed: int = 0) -> Tensor:
    """``samples`` training inputs of ``task`` drawn without replacement (seeded)."""
    x = task.x_train
    if len(x) == 0:
        raise UserError(f"task '{task.name}' has no training data to calibrate on")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)[: min(samples, len(x))]
    return x[order]


@torch.no_grad()
def calibrate_weights(model: nn.Module) -> None:
    """Set every weight quantizer's grid from its layer's current weight."""
    for layer in quant_layers(model).values():
        quantizer = layer.weight_quantizer
        if isinstance(quantizer, FakeQuantize) and quantizer.observer is not None:
            quantizer.observer.reset()
            quantizer.observer(layer.weight)
            quantizer.update_qparams()


@torch.no_grad()
def calibrate_activations(model: nn.Module, data: Tensor) -> None:
    """Observe ``data`` flowing through the float model; set each activation grid."""
    quantizers = activation_quantizers(model)
    for quantizer in quantizers.values():
        quantizer.observer.reset()
        quantizer.observing = True
    was_training = model.training
    model.eval()
    try:
        with fake_quant_disabled(model):
            for batch in batches(data):
                model(batch)
    finally:
        model.train(was_training)
        for quantizer in quantizers.values():
            quantizer.observing = False
    for quantizer in quantizers.values():
        quantizer.update_qparams()


def calibrate(model: nn.Module, data: Tensor) -> None:
    """Calibrate weight and activation grids, then switch every quantizer on."""
    calibrate_weights(model)
    calibrate_activations(model, data)
    for quantizer in fake_quantizers(model).values():
        quantizer.enable()


def ptq(
    model: nn.Module,
    config: QuantConfig,
    task: TensorTask | None = None,
    data: Tensor | None = None,
) -> tuple[fx.GraphModule, QuantConfig]:
    """A quantized copy of ``model`` and the config it was quantized with (``observer='auto'``
    resolved to the chosen observer, ``reduce_range=None`` to the CPU's choice).

    Calibration uses ``data`` (a batch of inputs) or ``config.calibration_samples`` training
    inputs of ``task``.
    """
    config = config.resolved_for_cpu()
    if data is None:
        if task is None:
            raise UserError("post-training quantization needs a task or calibration data")
        data = calibration_data(task, config.calibration_samples)
    if config.observer == AUTO:
        return _best_observer(model, config, task, data)
    quantized = prepare(model, config, data[:1])
    if config.equalize:
        equalize(quantized)
    calibrate(quantized, data)
    return _refine(quantized, config, data), config


def quantize(
    model: nn.Module,
    config: QuantConfig | None = None,
    task: TensorTask | None = None,
    data: Tensor | None = None,
) -> fx.GraphModule:
    """Deprecated: use ``mobiledl.apply(model, QuantConfig(...), task)``."""
    warnings.warn("quantize() is deprecated; use mobiledl.apply", DeprecationWarning, stacklevel=2)
    return ptq(model, config or QuantConfig(), task, data)[0]


def _best_observer(
    model: nn.Module, config: QuantConfig, task: TensorTask | None, data: Tensor
) -> tuple[fx.GraphModule, QuantConfig]:
    """Quantize with the one of ``AUTO_OBSERVERS`` whose model is most accurate on validation
    (on ``config.auto_samples`` of its samples).

    One calibration pass collects each activation's min/max and histogram; every observer's
    range is computed from those (the same range it would choose calibrating alone), scored,
    and the best kept. AdaRound and bias correction then refine the chosen one only.
    """
    if task is None or len(task.split("val")[0]) == 0:
        raise UserError("observer 'auto' needs a task with a validation split to choose on")
    quantized = prepare(model, dataclasses.replace(config, observer=AUTO_OBSERVERS[0]), data[:1])
    if config.equalize:
        equalize(quantized)
    quantizers = activation_quantizers(quantized)
    stats = {key: CalibrationObserver() for key in quantizers}
    for key, quantizer in quantizers.items():
        quantizer.observer = stats[key]
    calibrate(quantized, data)
    best, best_accuracy = AUTO_OBSERVERS[0], -1.0
    grids: dict[str, Grids] = {}
    scored: dict[tuple[float, ...], float] = {}
    for name in progress(AUTO_OBSERVERS, "observer auto"):
        grids[name] = _grids(quantizers, stats, name)
        values = _use(quantizers, grids[name])
        if values not in scored:  # observers choosing the same ranges score the same
            scored[values] = evaluate(quantized, task, "val", config.auto_samples)
        logger.info("observer %s: validation accuracy %.4f", name, scored[values])
        if scored[values] > best_accuracy:
            best, best_accuracy = name, scored[values]
    _use(quantizers, grids[best])
    chosen = dataclasses.replace(config, observer=best)
    rerecord_transform(quantized, chosen)
    return _refine(quantized, chosen, data), chosen


Grids = dict[str, tuple[Observer, Tensor, Tensor]]


def _grids(
    quantizers: dict[str, FakeQuantize], stats: dict[str, CalibrationObserver], name: str
) -> Grids:
    """Per activation quantizer: the ``name`` observer of its statistics and its grid."""
    grids = {}
    for key, quantizer in quantizers.items():
        observer = stats[key].observer(name)
        grids[key] = (observer, *observer.qparams(quantizer.spec))
    return grids


def _use(quantizers: dict[str, FakeQuantize], grids: Grids) -> tuple[float, ...]:
    """Set every activation quantizer's observer and grid; returns the scales and zero points."""
    values: list[float] = []
    for key, (observer, scale, zero_point) in grids.items():
        quantizers[key].observer = observer
        quantizers[key].set_qparams(scale, zero_point)
        values += [*scale.tolist(), *zero_point.tolist()]
    return tuple(values)


def _refine(quantized: fx.GraphModule, config: QuantConfig, data: Tensor) -> fx.GraphModule:
    """AdaRound and bias correction of a calibrated model, as ``config`` asks."""
    if config.adaround:
        adaround(quantized, data, AdaRoundConfig(iters=config.adaround_iters))
    if config.bias_correction:
        correct_bias(quantized, data)
    quantized.eval()
    return quantized


def quantization_summary(model: nn.Module) -> dict[str, object]:
    """How many layers and activations are quantized, and at which weight bit widths."""
    bits: dict[int, int] = {}
    for layer in quant_layers(model).values():
        quantizer = layer.weight_quantizer
        if isinstance(quantizer, FakeQuantize):
            bits[quantizer.spec.bits] = bits.get(quantizer.spec.bits, 0) + 1
    return {
        "quantized_layers": len(quant_layers(model)),
        "activation_quantizers": len(activation_quantizers(model)),
        "weight_bits": {str(k): v for k, v in sorted(bits.items())},
    }
