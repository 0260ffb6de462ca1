"""Packed low-bit weights in ONNX files (mobiledl.deploy.onnx_packing)."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from mobiledl.compress.quantize.binary import binary_model
from mobiledl.compress.quantize.config import BinaryConfig, KMeansConfig, QuantConfig
from mobiledl.compress.quantize.kmeans import kmeans_model
from mobiledl.compress.quantize.ptq import quantize
from mobiledl.core.clone import clone_module
from mobiledl.deploy.onnx_packing import MIN_ELEMENTS, pack_weights
from mobiledl.deploy.onnxruntime import OnnxRuntimeEngine
from mobiledl.models import create_model

RNG = np.random.default_rng(0)


def _weights_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A graph with no inputs whose outputs are the given initializers."""
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in weights]
    outputs = [
        helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, list(array.shape))
        for name, array in weights.items()
    ]
    graph = helper.make_graph(
        nodes,
        "weights",
        [],
        outputs,
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {})


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> collections.Counter:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(
        n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
    )


def test_palette_weights_round_trip_exactly_and_shrink() -> None:
    weights = {
        "kmeans16": RNG.choice(RNG.standard_normal(16), (32, 8, 3, 3)).astype(np.float32),
        "binary_rows": (np.sign(RNG.standard_normal((24, 37))) * RNG.random((24, 1)) + 0.0).astype(
            np.float32
        ),
        "ternary_padded": RNG.choice(np.float32([-0.3, 0.0, 0.3]), (7, 7, 7)).astype(np.float32),
        "palette200": RNG.choice(RNG.standard_normal(200), (40, 30)).astype(np.float32),
        "dense": RNG.standard_normal((16, 32)).astype(np.float32),
    }
    model = _weights_model(weights)
    before = len(model.SerializeToString())
    assert pack_weights(model) == 4  # every weight but the dense one
    assert len(model.SerializeToString()) < before / 2
    for output, array in zip(_run(model), weights.values(), strict=True):
        assert output.dtype == np.float32
        np.testing.assert_array_equal(output, array)
    assert [t.name for t in model.graph.initializer if t.name == "dense"] == ["dense"]
    assert pack_weights(model) == 0  # a packed graph is left alone


def test_codes_take_their_bit_width() -> None:
    binary = np.where(RNG.random((64, 64)) < 0.5, -1.0, 1.0).astype(np.float32)
    model = _weights_model({"w": binary})
    pack_weights(model)
    codes = [t for t in model.graph.initializer if t.name.startswith("packed/codes")]
    assert sum(len(t.raw_data) for t in codes) == binary.size // 8


def test_small_and_quantized_weights_are_left_alone() -> None:
    small = RNG.choice(np.float32([-1, 1]), (MIN_ELEMENTS - 1,))
    model = _weights_model({"small": small})
    assert pack_weights(model) == 0
    wide = RNG.choice(np.float32([-1, 1]), (16, 32))
    scale = numpy_helper.from_array(np.float32(0.1), "scale")
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["w", "scale"], ["q"])],
        "qdq",
        [],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [16, 32])],
        [numpy_helper.from_array(wide, "w"), scale],
    )
    assert pack_weights(helper.make_model(graph)) == 0


def test_onnx_runtime_folds_the_unpacking_away(tmp_path) -> None:
    weight = RNG.choice(RNG.standard_normal(4), (16, 8, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])],
        [numpy_helper.from_array(weight, "w")],
    )
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    packed = onnx.ModelProto()
    packed.CopyFrom(plain)
    assert pack_weights(packed) == 1
    assert _optimized_ops(packed, tmp_path) == _optimized_ops(plain, tmp_path)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 12),
    columns=st.integers(20, 60),
    distinct=st.integers(1, 256),
    per_row=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_palette_round_trips(
    rows: int, columns: int, distinct: int, per_row: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    palette = rng.standard_normal(distinct).astype(np.float32)
    weight = rng.choice(palette, (rows, columns))
    if per_row:
        weight = weight * rng.random((rows, 1)).astype(np.float32)
    model = _weights_model({"w": weight.astype(np.float32)})
    pack_weights(model)
    np.testing.assert_array_equal(_run(model)[0], weight)


@pytest.mark.parametrize("method", ["binary", "kmeans"])
def test_low_bit_export_is_small_and_exact(method: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=16).eval()
    if method == "binary":
        low = binary_model(
            clone_module(model),
            BinaryConfig(train=dataclasses.replace(BinaryConfig().train, epochs=0)),
            None,
        )
    else:
        low = kmeans_model(clone_module(model), KMeansConfig(bits=4), None)
    x = torch.randn(2, 1, 16, 16)
    engine = OnnxRuntimeEngine()
    fp32 = engine.export(model, x, tmp_path / "fp32.onnx")
    packed = engine.export(low.eval(), x, tmp_path / "low.onnx")
    ratio = fp32.stat().st_size / packed.stat().st_size
    assert ratio > (8 if method == "binary" else 3.5)
    assert engine.parity_check(low, packed, x) < 1e-4
    assert engine.artifact_params(packed) == engine.artifact_params(fp32)


def test_low_bit_int8_graph_packs_its_codes_and_keeps_integer_kernels(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1, image_size=16).eval()
    data = torch.randn(64, 1, 16, 16)
    engine = OnnxRuntimeEngine()
    files = {}
    for bits in (8, 4):
        quantized = quantize(model, QuantConfig(weight_bits=bits), data=data)
        files[bits] = engine.export(quantized, data[:2], tmp_path / f"int{bits}.onnx")
        runner = engine.load(files[bits])
        reference = quantized(data[:8]).detach().numpy()
        assert (
            np.abs(runner.run(data[:8].numpy()) - reference).max() < 0.05 * np.abs(reference).max()
        )
    assert files[4].stat().st_size < 0.75 * files[8].stat().st_size
    ops = {bits: _optimized_ops(onnx.load(path), tmp_path) for bits, path in files.items()}
    assert ops[4] == ops[8]
    assert ops[4]["QLinearConv"] == 9
