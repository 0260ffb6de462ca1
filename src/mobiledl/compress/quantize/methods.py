"""The quantization methods behind ``apply``: ``ptq``, ``qat``, ``kmeans``, ``binary``,
``ternary`` and ``mixed_precision``."""

from __future__ import annotations

from typing import Any

from torch import nn

from mobiledl.compress.quantize.binary import binary_model, lowbit_storage_bytes, ternary_model
from mobiledl.compress.quantize.config import (
    BinaryConfig,
    KMeansConfig,
    MixedPrecisionConfig,
    QATConfig,
    QuantConfig,
    TernaryConfig,
)
from mobiledl.compress.quantize.kmeans import config_bits, kmeans_model
from mobiledl.compress.quantize.mixed import config_precisions, mixed_model
from mobiledl.compress.quantize.ptq import ptq, quantization_summary
from mobiledl.compress.quantize.qat import qat_model
from mobiledl.core.inputs import CLIP, IMAGE
from mobiledl.core.methods import register_method
from mobiledl.core.task import TensorTask

Result = tuple[nn.Module, dict[str, Any]]


@register_method(QuantConfig, inputs=(IMAGE, CLIP))
def ptq_method(model: nn.Module, config: QuantConfig, task: TensorTask) -> Result:
    """Post-training quantization (Krishnamoorthi 2018; Nagel et al. 2021)."""
    quantized, used = ptq(model, config, task)
    report = {"observer": used.observer, "reduce_range": used.reduce_range}
    return quantized, {**report, **quantization_summary(quantized)}


@register_method(QATConfig, inputs=(IMAGE,))
def qat_method(model: nn.Module, config: QATConfig, task: TensorTask) -> Result:
    """Quantization-aware training (Jacob et al. 2018; Esser et al. 2020; Choi et al. 2018)."""
    quantized = qat_model(model, config, task)
    return quantized, {"algorithm": config.algorithm, **quantization_summary(quantized)}


@register_method(KMeansConfig, needs_task=False, inputs=(IMAGE,))
def kmeans_method(model: nn.Module, config: KMeansConfig, task: TensorTask | None) -> Result:
    """K-means weight sharing (Han et al. 2016)."""
    bits = config_bits(model, config)
    return kmeans_model(model, config, task), {"layer_bits": bits}


@register_method(BinaryConfig, needs_task=False, inputs=(IMAGE,))
def binary_method(model: nn.Module, config: BinaryConfig, task: TensorTask | None) -> Result:
    """Binary weights (Courbariaux et al. 2015; Rastegari et al. 2016)."""
    binary = binary_model(model, config, task)
    return binary, {"simulated_storage_bytes": lowbit_storage_bytes(binary)}


@register_method(TernaryConfig, needs_task=False, inputs=(IMAGE,))
def ternary_method(model: nn.Module, config: TernaryConfig, task: TensorTask | None) -> Result:
    """Ternary weights (Li et al. 2016; Zhu et al. 2017)."""
    ternary = ternary_model(model, config, task)
    return ternary, {"simulated_storage_bytes": lowbit_storage_bytes(ternary)}


@register_method(MixedPrecisionConfig, needs_task=False, inputs=(IMAGE,))
def mixed_method(model: nn.Module, config: MixedPrecisionConfig, task: TensorTask | None) -> Result:
    """Per-layer bit widths (Wang et al. 2019; Dong et al. 2019)."""
    precisions = config_precisions(model, config)
    layers = {name: [p.weight, p.act] for name, p in precisions.items()}
    return mixed_model(model, config, task), {"layers": layers}
