"""The integer graph of a model file: an int8 ``.onnx`` export, or a quantized mobiledl ``.pt``
(exported to int8 QDQ ONNX on the way, as ``mobiledl quantize --onnx`` would).

A float model is refused with one line saying how to quantize it: the MCU runtime runs int8
only, and choosing calibration data is the quantizer's job (``mobiledl quantize``), not the
planner's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from mobiledl.core.inputs import example_from_specs
from mobiledl.deploy.lowering import is_quantized
from mobiledl.deploy.mcu.graph import Graph, graph_from_model, read_graph
from mobiledl.deploy.onnxruntime import OnnxRuntimeEngine
from mobiledl.errors import UserError
from mobiledl.models import input_specs, load_model

QUANTIZE_HINT = "mobiledl quantize MODEL --task TASK --method ptq --bits 8 --out q.pt --onnx q.onnx"


def load_int8_graph(path: str | Path) -> Graph:
    """The ``Graph`` of the int8 model at ``path`` (``.onnx`` or ``.pt``)."""
    source = Path(path)
    if source.suffix == ".onnx":
        return read_graph(source)
    if source.suffix != ".pt":
        raise UserError(f"{source}: give an int8 .onnx export or a quantized mobiledl .pt")
    loaded = load_model(source)
    if not is_quantized(loaded.model):
        raise UserError(
            f"{source}: a float model; the MCU runtime takes an int8 model ({QUANTIZE_HINT})"
        )
    specs = input_specs(loaded.arch)
    with tempfile.TemporaryDirectory(prefix="mobiledl-mcu-") as tmp:
        onnx_path = Path(tmp) / f"{source.stem}.int8.onnx"
        OnnxRuntimeEngine().export(loaded.model, example_from_specs(specs, 1), onnx_path, specs)
        return graph_from_model(onnx.load(str(onnx_path)), str(source))
