"""OpenVINO, an optional engine (``pip install 'mobiledl[openvino]'``): export to IR, run on CPU.

Lowering starts from the same checked ONNX graph ONNX Runtime gets
(``mobiledl.deploy.onnxruntime.onnx_graph``): a float model, or for a quantized model the int8
QDQ graph carrying mobiledl's own calibrated scales and zero points. OpenVINO's ONNX frontend
reads each QuantizeLinear/DequantizeLinear pair as a FakeQuantize and its CPU plugin runs the
layers between them as int8 kernels, so the engine's int8 is ours, not re-calibrated by NNCF.
The artifact is OpenVINO's IR: ``model.xml`` (the graph) with ``model.bin`` (the weights)
beside it, weights kept in fp32 (no fp16 compression) so float parity holds.

Loading compiles for the CPU with f32 inference precision (the plugin's default may be bf16 or
another hint on some CPUs; comparisons with fp32 engines need f32), a latency hint, one stream
and ``threads`` inference threads. With one thread the plugin computes on the calling thread,
so the thread-CPU-time clock measures it.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from torch import nn

from mobiledl.core.inputs import InputSpec
from mobiledl.deploy.diagnosis import first_line
from mobiledl.deploy.engine import (
    Batch,
    Engine,
    PathLike,
    Runner,
    ordered_inputs,
    shape_error,
    to_numpy,
)
from mobiledl.deploy.onnxruntime import onnx_graph
from mobiledl.errors import UserError
from mobiledl.fileio import check_output_file, current_umask
from mobiledl.validate import MAX_THREADS, check_int

#: OpenVINO element types -> torch dtypes of the inputs mobiledl models take.
_DTYPES = {
    ov.Type.f32: torch.float32,
    ov.Type.f16: torch.float16,
    ov.Type.i64: torch.int64,
    ov.Type.i32: torch.int32,
    ov.Type.i8: torch.int8,
    ov.Type.u8: torch.uint8,
    ov.Type.boolean: torch.bool,
}
#: Constant element types that are weights (integer shape and axis constants are not).
_WEIGHT_TYPES = {ov.Type.f32, ov.Type.f16, ov.Type.i8, ov.Type.u8, ov.Type.u4, ov.Type.i4}


@cache
def _core() -> ov.Core:
    """One OpenVINO runtime core per process (creating one loads the plugins)."""
    return ov.Core()


def compile_config(threads: int | None) -> dict[str, object]:
    """The CPU plugin properties every compiled model of this engine uses."""
    config: dict[str, object] = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


def weights_path(xml: PathLike) -> Path:
    """The ``.bin`` file that holds the weights of an IR ``.xml``."""
    return Path(xml).with_suffix(".bin")


class OpenVinoRunner(Runner):
    """One compiled OpenVINO model and its infer request, called with numpy."""

    def __init__(self, path: Path, compiled: ov.CompiledModel, threads: int | None) -> None:
        self.path = path
        self.threads = threads
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_specs = tuple(_spec(port) for port in compiled.inputs)
        self._numpy_dtypes = [
            torch.empty(0, dtype=spec.dtype).numpy().dtype for spec in self.input_specs
        ]

    def run(self, x: Batch) -> np.ndarray:
        """Run one batch; return (a copy of) the first output."""
        feed = self._feed(x)
        try:
            result = self.request.infer(feed)
        except RuntimeError as error:
            raise shape_error(self.path, list(feed.values()), self.input_specs, error) from None
        return np.array(result[self.compiled.outputs[0]])

    def _feed(self, x: Batch) -> dict[int, np.ndarray]:
        """Input index -> contiguous array of the input's dtype."""
        arrays = ordered_inputs(x, self.input_specs, self.path)
        return {
            index: np.ascontiguousarray(to_numpy(array), dtype=dtype)
            for index, (array, dtype) in enumerate(zip(arrays, self._numpy_dtypes, strict=True))
        }


class OpenVinoEngine(Engine):
    """Export through ONNX to OpenVINO IR (``.xml`` + ``.bin``) and run it on the CPU plugin."""

    name = "openvino"
    file_suffix = ".xml"

    def export(
        self,
        model: nn.Module,
        example_input: Batch,
        path: PathLike,
        input_specs: Sequence[InputSpec] | None = None,
    ) -> Path:
        """Lower ``model`` to ONNX (int8 QDQ if quantized), convert it to IR and write
        ``path`` and its ``.bin``; both appear only if conversion works (the weights file is
        renamed into place first, the graph last)."""
        target = check_output_file(path)
        if target.suffix != self.file_suffix:
            raise UserError(f"{target}: an OpenVINO IR file must end in {self.file_suffix}")
        graph = onnx_graph(model, example_input, input_specs, pack=False)
        try:
            converted = ov.convert_model(io.BytesIO(graph.SerializeToString()))
        except Exception as error:  # the frontend raises several failure types
            raise UserError(f"OpenVINO cannot convert the model: {first_line(error)}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.stem}.", dir=target.parent) as tmp:
            staged = Path(tmp) / target.name
            ov.save_model(converted, str(staged), compress_to_fp16=False)
            mode = 0o666 & ~current_umask()
            for source, final in ((weights_path(staged), weights_path(target)), (staged, target)):
                os.chmod(source, mode)
                os.replace(source, final)
        return target

    def load(self, path: PathLike, threads: int | None = None) -> OpenVinoRunner:
        """Compile an IR file for the CPU (``threads`` inference threads, ``None``: all)."""
        source = Path(path)
        if not source.is_file():
            raise UserError(f"{source}: no such OpenVINO IR file")
        if not weights_path(source).is_file():
            raise UserError(f"{source}: its weights file {weights_path(source).name} is missing")
        if threads is not None:
            check_int(threads, "threads", 1, MAX_THREADS)
        try:
            compiled = _core().compile_model(str(source), "CPU", compile_config(threads))
        except RuntimeError as error:
            raise UserError(f"{source}: not a valid OpenVINO IR ({first_line(error)})") from None
        return OpenVinoRunner(source, compiled, threads)

    def artifact_bytes(self, path: PathLike) -> int:
        """Bytes of the graph and its weights file."""
        return Path(path).stat().st_size + weights_path(path).stat().st_size

    def artifact_params(self, path: PathLike) -> int | None:
        """Elements of the weight constants of rank >= 1 (integer shape constants and scalar
        quantization ranges are not counted)."""
        graph = _core().read_model(str(path))
        return sum(
            math.prod(op.get_output_shape(0))
            for op in graph.get_ordered_ops()
            if op.get_type_name() == "Constant"
            and op.get_output_element_type(0) in _WEIGHT_TYPES
            and len(op.get_output_shape(0)) >= 1
            and math.prod(op.get_output_shape(0)) > 1
        )


def _spec(port: ov.ConstOutput) -> InputSpec:
    """An ``InputSpec`` of a compiled model's input (dynamic dimensions -> ``None``)."""
    shape = tuple(dim.get_length() if dim.is_static else None for dim in port.get_partial_shape())
    dtype = _DTYPES.get(port.get_element_type(), torch.float32)
    return InputSpec(port.get_any_name(), shape, dtype)
