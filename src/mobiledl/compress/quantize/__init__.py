"""Quantization (Cai et al. 2022, Sec. 2.2): linear PTQ and QAT, k-means, binary/ternary,
mixed precision. Module in, module out, through the one entry point::

    from mobiledl import apply
    from mobiledl.compress.quantize import QATConfig, QuantConfig

    q = apply(model, QuantConfig(weight_bits=8, act_bits=8, observer="mse"), task)
    q = apply(model, QATConfig(quant=QuantConfig(weight_bits=4), algorithm="lsq"), task)
    get_engine().export(q, task.example_input(1), "model.int8.onnx")  # int8 QDQ graph
"""

import warnings
from pathlib import Path

import torch
from torch import nn

from mobiledl.compress.quantize.binary import binarize, lowbit_storage_bytes, ternarize
from mobiledl.compress.quantize.config import (
    BinaryConfig,
    KMeansConfig,
    MixedPrecisionConfig,
    QATConfig,
    QuantConfig,
    TernaryConfig,
)
from mobiledl.compress.quantize.kmeans import (
    StorageReport,
    deep_compression,
    kmeans_quantize,
    storage_report,
)
from mobiledl.compress.quantize.mixed import bit_sensitivity, mixed_precision, propose_bits
from mobiledl.compress.quantize.prepare import prepare
from mobiledl.compress.quantize.ptq import calibrate, quantize
from mobiledl.compress.quantize.qat import qat
from mobiledl.compress.quantize.quantizer import FakeQuantize, QuantSpec, fake_quantize
from mobiledl.deploy import get_engine
from mobiledl.deploy.lowering import is_quantized
from mobiledl.errors import UserError
from mobiledl.models.quantized import QuantConv2d, QuantLinear

__all__ = [
    "BinaryConfig",
    "FakeQuantize",
    "KMeansConfig",
    "MixedPrecisionConfig",
    "QATConfig",
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "StorageReport",
    "TernaryConfig",
    "binarize",
    "bit_sensitivity",
    "calibrate",
    "deep_compression",
    "export_int8_onnx",
    "fake_quantize",
    "kmeans_quantize",
    "lowbit_storage_bytes",
    "mixed_precision",
    "prepare",
    "propose_bits",
    "qat",
    "quantize",
    "storage_report",
    "ternarize",
]


def export_int8_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Deprecated: the engine lowers a quantized model itself, ``get_engine().export(...)``."""
    warnings.warn(
        "export_int8_onnx() is deprecated; use the engine's export", DeprecationWarning, 2
    )
    if not is_quantized(model):
        raise UserError("export_int8_onnx needs a quantized model")
    return get_engine().export(model, example_input[:1], path)
