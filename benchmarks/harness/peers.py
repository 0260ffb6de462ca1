"""Peer toolkits the benchmarks compare against, run quietly: ONNX Runtime's own static
quantizer (``quant_pre_process`` + ``quantize_static``) and OpenVINO's, NNCF's post-training
``nncf.quantize``."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep third-party warnings, log records and progress prints out of the output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def ort_quantize_static(
    float_path: Path,
    data: torch.Tensor,
    out: Path,
    batch_size: int,
    weight_bits: int = 8,
    reduce_range: bool = False,
) -> Path:
    """ONNX Runtime's pre-processing + static QDQ quantization of an fp32 ONNX file:
    per-channel weights (int8, or int4 for ``weight_bits=4``), u8 activations calibrated
    min-max on ``data`` in batches of ``batch_size``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {"input": data[i : i + batch_size].numpy()} for i in range(0, len(data), batch_size)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = out.with_name(f"{out.stem}_preprocessed.onnx")
    with quiet():
        quant_pre_process(str(float_path), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8 if weight_bits == 8 else QuantType.QInt4,
            reduce_range=reduce_range,
        )
    return out


def nncf_quantize(float_xml: Path, data: torch.Tensor, out: Path, batch_size: int) -> Path:
    """NNCF's post-training quantization of an fp32 OpenVINO IR (its default "performance"
    preset: symmetric int8 weights and activations, the CPU plugin's int8 path), calibrated
    on ``data`` in batches of ``batch_size``; written as IR to ``out``."""
    import nncf
    import openvino as ov

    batches = [data[i : i + batch_size].numpy() for i in range(0, len(data), batch_size)]
    with quiet():
        model = ov.Core().read_model(str(float_xml))
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(data))
        ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out
