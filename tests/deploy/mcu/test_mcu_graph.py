"""Reading our int8 QDQ ONNX export into the MCU integer IR."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from mobiledl.deploy import get_engine
from mobiledl.deploy.mcu.graph import read_graph
from mobiledl.deploy.mcu.reference import execute
from mobiledl.deploy.onnx_packing import METADATA_KEY
from mobiledl.errors import UserError
from mobiledl.models.registry import create_model
from tests.deploy.mcu.conftest import ort_values, random_images


def test_mobilenet_v2_ops_shapes_and_constants(int8_onnx) -> None:
    graph = read_graph(int8_onnx("mobilenet_v2"))
    kinds = [op.kind for op in graph.ops]
    assert kinds[0] == "conv" and kinds[-2:] == ["global_avgpool", "fc"]
    assert {"depthwise", "pointwise", "add"} <= set(kinds)
    stem = graph.ops[0]
    assert stem.layer == "features.0.conv" and stem.weight.dtype == np.int8
    assert stem.bias.dtype == np.int32 and stem.requant.m0.shape == (stem.weight.shape[0],)
    assert graph.tensors[graph.input].shape == (1, 1, 32, 32)
    output = graph.tensors[graph.output]
    assert output.dtype == np.int32 and output.shape == (1, 10)  # float logits: int32 acc
    strided = [op for op in graph.ops if op.kind == "depthwise" and op.stride == (2, 2)]
    assert strided and all(op.pads == (1, 1, 1, 1) for op in strided)
    for op in graph.ops:
        assert all(name in graph.tensors for name in (*op.inputs, op.output))
    assert graph.flash_bytes == sum(op.constant_bytes for op in graph.ops) > 0


def test_relu6_is_a_clamp_on_the_int8_grid(int8_onnx) -> None:
    graph = read_graph(int8_onnx("mcunet"))
    op = graph.ops[0]  # ConvBNAct with ReLU6
    out = graph.tensors[op.output]
    low, high = op.clamp
    assert low == max(-128, out.zero_point)
    assert high == min(127, out.zero_point + round(6.0 / float(out.scale)))


def test_packed_weights_are_unpacked(int8_onnx) -> None:
    """4-bit weights are stored bit-packed (onnx_packing); the reader folds the unpacking."""
    path = int8_onnx("resnet8", weight_bits=4)
    model = onnx.load(str(path))
    assert any(prop.key == METADATA_KEY for prop in model.metadata_props)
    graph = read_graph(path)
    assert all(len(np.unique(op.weight)) <= 16 for op in graph.ops if op.weight is not None)
    _, ort = ort_values(path, graph, random_images(graph, 8))
    for op in graph.ops[:-1]:
        ours = execute(op, graph, [ort[name] for name in op.inputs]).astype(np.int32)
        assert np.abs(ours - ort[op.output]).max() <= 1


def test_unsupported_op_names_the_op_and_layer(int8_onnx, tmp_path) -> None:
    model = onnx.load(str(int8_onnx("mcunet")))
    add = next(node for node in model.graph.node if node.op_type == "Add")
    add.op_type = "Mul"
    path = tmp_path / "mul.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError, match=r"ONNX op Mul .*features\.1\.body\.project\.conv"):
        read_graph(path)


def test_float_model_is_refused(tmp_path) -> None:
    model = create_model("lenet5", image_size=8, width_mult=0.25)
    path = get_engine().export(model, torch.zeros(1, 1, 8, 8), tmp_path / "float.onnx")
    with pytest.raises(UserError, match="not a dequantized int8 activation"):
        read_graph(path)


def test_missing_file() -> None:
    with pytest.raises(UserError, match="no such ONNX file"):
        read_graph("/nonexistent/model.onnx")
