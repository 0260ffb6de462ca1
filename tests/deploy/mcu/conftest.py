"""Tiny int8 QDQ ONNX exports of zoo models for the MCU runtime's tests (built once per
session: PTQ with 64 calibration samples of the digits task at 32x32)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mobiledl import apply
from mobiledl.compress.quantize import QuantConfig
from mobiledl.data.builtin import digits
from mobiledl.data.prepare import make_task
from mobiledl.deploy import get_engine
from mobiledl.deploy.mcu.graph import Graph
from mobiledl.models.registry import create_model, create_model_for_task

IMAGE_SIZE = 32
Exporter = Callable[..., Path]


@pytest.fixture(scope="session")
def int8_onnx(tmp_path_factory: pytest.TempPathFactory) -> Exporter:
    """``int8_onnx(name, width_mult, **quant_fields)``: the path of that model's int8 export."""
    cache: dict[tuple, Path] = {}
    task = digits(image_size=IMAGE_SIZE)

    def export(name: str, width_mult: float = 0.35, **quant: object) -> Path:
        key = (name, width_mult, tuple(sorted(quant.items())))
        if key not in cache:
            torch.manual_seed(0)
            model = create_model_for_task(name, task, width_mult=width_mult)
            config = QuantConfig(calibration_samples=64, **quant)
            quantized = apply(model, config, task)
            path = tmp_path_factory.mktemp("mcu") / f"{name}.int8.onnx"
            cache[key] = get_engine().export(quantized, task.example_input(1), path)
        return cache[key]

    return export


@pytest.fixture(scope="session")
def mobilenet_v2_144(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's reference model: int8 MobileNetV2-0.35 at 3x144x144 (PTQ on 30 synthetic
    images; the plans depend on shapes only)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (30, 3, 144, 144)).astype(np.float32)
    task = make_task("synthetic", x, np.arange(30) % 10, 0)
    model = create_model("mobilenet_v2", 10, in_channels=3, image_size=144, width_mult=0.35)
    quantized = apply(model, QuantConfig(calibration_samples=8), task)
    path = tmp_path_factory.mktemp("mcu") / "mobilenet_v2_035_144.int8.onnx"
    return get_engine().export(quantized, torch.zeros(1, 3, 144, 144), path)


def random_images(graph: Graph, count: int, seed: int = 0) -> np.ndarray:
    """``count`` float images in the digits task's value range (0..16)."""
    shape = graph.tensors[graph.input].shape[1:]
    return np.random.default_rng(seed).uniform(0.0, 16.0, (count, *shape)).astype(np.float32)


def ort_values(path: Path, graph: Graph, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ONNX Runtime's float output and its value of every int8 tensor of ``graph`` (on the
    int8 grid), from the integer-kernel session (every graph optimization on)."""
    model = onnx.load(str(path))
    names = [name for name, tensor in graph.tensors.items() if tensor.dtype == np.int8]
    present = {output.name for output in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    output = model.graph.output[0].name
    outputs = session.run([output, *names], {session.get_inputs()[0].name: x})
    values = {}
    for name, value in zip(names, outputs[1:], strict=True):
        offset = 128 if value.dtype == np.uint8 else 0
        values[name] = (value.astype(np.int32) - offset).astype(np.int8)
    return outputs[0], values
