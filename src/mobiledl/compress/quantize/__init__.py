"""Quantization (Cai et al. 2022, Sec. 2.2): linear PTQ and QAT, k-means, binary/ternary.

Linear quantization, module in and module out::

    from mobiledl.compress.quantize import QuantConfig, quantize, qat, export_int8_onnx

    q = quantize(model, QuantConfig(weight_bits=8, act_bits=8, observer="mse"), task=task)
    q = qat(model, task, QuantConfig(weight_bits=4, qat_method="lsq"), epochs=5)
    export_int8_onnx(q, task.example_input(1), "model.int8.onnx")
"""

from mobiledl.compress.quantize.binary import binarize, lowbit_storage_bytes, ternarize
from mobiledl.compress.quantize.config import QuantConfig
from mobiledl.compress.quantize.kmeans import (
    StorageReport,
    deep_compression,
    kmeans_quantize,
    storage_report,
)
from mobiledl.compress.quantize.mixed import bit_sensitivity, mixed_precision, propose_bits
from mobiledl.compress.quantize.onnx_export import export_int8_onnx, integer_ops, top1_agreement
from mobiledl.compress.quantize.prepare import prepare
from mobiledl.compress.quantize.ptq import calibrate, quantize
from mobiledl.compress.quantize.qat import qat
from mobiledl.compress.quantize.quantizer import (
    FakeQuantize,
    QuantConv2d,
    QuantLinear,
    QuantSpec,
    fake_quantize,
)

__all__ = [
    "FakeQuantize",
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "StorageReport",
    "binarize",
    "bit_sensitivity",
    "calibrate",
    "deep_compression",
    "export_int8_onnx",
    "fake_quantize",
    "integer_ops",
    "kmeans_quantize",
    "lowbit_storage_bytes",
    "mixed_precision",
    "prepare",
    "propose_bits",
    "qat",
    "quantize",
    "storage_report",
    "ternarize",
    "top1_agreement",
]
