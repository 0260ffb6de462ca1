"""Our integer IR as a .tflite model in TensorFlow Lite Micro: the same outputs bit for bit
(with gemmlowp's double rounding, TFLM's own) and TFLM's arena read from its allocator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mobiledl.deploy.mcu import dequantize, plan_memory, quantize_input, read_graph, run
from mobiledl.deploy.mcu.fixedpoint import DOUBLE
from mobiledl.errors import UserError
from tests.deploy.mcu.conftest import random_images

pytest.importorskip("tflite_micro", reason="TFLM anchor needs: pip install 'mobiledl[mcu]'")

from mobiledl.deploy.mcu.tflite import (  # noqa: E402
    tflite_multipliers,
    tflm_arena,
    tflm_run,
    to_tflite,
    with_int8_output,
)


def _int8_graph(path, high: float = 16.0):
    graph = dataclasses.replace(read_graph(path), rounding=DOUBLE)
    codes = quantize_input(graph, random_images(graph, 6) * (high / 16.0))
    logits = dequantize(graph.tensors[graph.output], run(graph, codes).reshape(len(codes), -1))
    return with_int8_output(graph, float(np.abs(logits).max() / 100)), codes


@pytest.mark.parametrize("name", ["mcunet", "lenet5", "resnet8"])
def test_tflm_gives_the_reference_outputs_bit_for_bit(int8_onnx, name) -> None:
    graph, codes = _int8_graph(int8_onnx(name))
    model = to_tflite(graph)
    image = graph.tensors[graph.input].shape
    arena = tflm_arena(model, (1, *image[2:], image[1]))
    assert arena.total == arena.head + arena.tail and arena.head > 0
    outputs = tflm_run(model, codes, arena.total)
    expected = run(tflite_multipliers(graph), codes).reshape(len(codes), -1)
    np.testing.assert_array_equal(outputs, expected)


def test_tflm_equals_the_reference_on_its_own_multipliers_at_144(mobilenet_v2_144) -> None:
    """At 144x144 (inputs in the calibration range 0..1) some accumulators sit next to a
    rounding boundary, where our own Q31 multipliers put an output a code away from TFLM's;
    with the multipliers TFLM derives from the file's float32 scales none are."""
    graph, codes = _int8_graph(mobilenet_v2_144, high=1.0)
    outputs = tflm_run(to_tflite(graph), codes, 4 << 20)
    expected = run(tflite_multipliers(graph), codes).reshape(len(codes), -1)
    np.testing.assert_array_equal(outputs, expected)


def test_tflm_plans_at_least_the_activation_lower_bound(int8_onnx) -> None:
    graph, _ = _int8_graph(int8_onnx("mobilenet_v2"))
    image = graph.tensors[graph.input].shape
    arena = tflm_arena(to_tflite(graph), (1, *image[2:], image[1]))
    assert arena.head >= plan_memory(graph, in_place_depthwise=False).lower_bound_bytes


def test_a_float_output_must_be_requantized_first(int8_onnx) -> None:
    with pytest.raises(UserError, match="with_int8_output"):
        to_tflite(read_graph(int8_onnx("lenet5")))
