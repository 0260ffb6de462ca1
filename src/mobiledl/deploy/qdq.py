"""The int8 QDQ ONNX graph ONNX Runtime runs with integer kernels, from a lowered model.

A lowered quantized model (``mobiledl.deploy.lowering``) exports with every quantizer as a
QuantizeLinear / DequantizeLinear pair holding *our* scale and zero point (opset 17; weights
per output channel along axis 0), so the graph's float semantics are exactly the simulation's.
``tidy_qdq_graph`` then shapes it for ONNX Runtime:

- the quantized weights are stored as int8 initializers (``DequantizeLinear`` of a
  constant), not as float weights followed by ``QuantizeLinear``: the file shrinks ~4x;
- per-tensor scales and zero points become scalars, which ONNX Runtime's QDQ fusions
  (QLinearAdd, QLinearConcat, ...) require;
- biases of convolutions and linear layers become int32 with scale ``s_input * s_weight``
  (the grid the simulation rounds them to), so a final linear layer with float output
  still fuses into an integer ``QGemm``;
- intermediate tensors get short names and nodes none (the exporter's scoped names take
  tens of kilobytes, a few percent of a small int8 model).

ONNX Runtime then fuses ``DQ -> Conv -> Q`` into ``QLinearConv`` (u8 activations, s8
weights), ``DQ -> Add -> Q`` into ``QLinearAdd`` and so on; ``integer_ops`` reads the
optimized graph ORT saves to check that it did. Inputs and outputs stay float.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "DynamicQuantizeMatMul",
    }
)


def tidy_qdq_graph(graph: onnx.GraphProto) -> None:
    """Shape an exported QDQ graph for ONNX Runtime's integer kernels (module docstring)."""
    _bypass_identities(graph)
    _store_integer_weights(graph)
    _scalar_per_tensor_params(graph)
    _integer_biases(graph)
    _drop_unused_initializers(graph)
    _compact_names(graph)


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def _rename_inputs(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new


def _bypass_identities(graph: onnx.GraphProto) -> None:
    """Remove ``Identity`` nodes that alias initializers (the exporter's de-duplication)."""
    inits = _initializers(graph)
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in inits:
            _rename_inputs(graph, node.output[0], node.input[0])
            graph.node.remove(node)


def _axis(node: onnx.NodeProto) -> int:
    for attribute in node.attribute:
        if attribute.name == "axis":
            return attribute.i
    return 1


def _store_integer_weights(graph: onnx.GraphProto) -> None:
    """Replace ``QuantizeLinear(constant)`` by the constant's integer codes."""
    inits = _initializers(graph)
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        values = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        zero_point = numpy_helper.to_array(inits[node.input[2]])
        codes = _quantize(values, scale, zero_point, _axis(node))
        name = f"{node.input[0]}_quantized"
        graph.initializer.append(numpy_helper.from_array(codes, name))
        _rename_inputs(graph, node.output[0], name)
        graph.node.remove(node)


def _quantize(
    values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int
) -> np.ndarray:
    """ONNX QuantizeLinear in numpy: round half to even, add the zero point, saturate."""
    if scale.size > 1:
        shape = [1] * values.ndim
        shape[axis % values.ndim] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    codes = np.rint(values / scale) + zero_point.astype(np.float32)
    return np.clip(codes, info.min, info.max).astype(zero_point.dtype)


def _scalar_per_tensor_params(graph: onnx.GraphProto) -> None:
    """Give per-tensor Q/DQ nodes scalar scales and zero points (shape [] not [1])."""
    inits = _initializers(graph)
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for slot in (1, 2):
            if slot >= len(node.input) or node.input[slot] not in inits:
                continue
            array = numpy_helper.to_array(inits[node.input[slot]])
            if array.ndim == 0 or array.size != 1:
                continue
            name = f"{node.input[slot]}_scalar"
            if name not in inits:
                inits[name] = numpy_helper.from_array(array.reshape(()), name)
                graph.initializer.append(inits[name])
            node.input[slot] = name


def _integer_biases(graph: onnx.GraphProto) -> None:
    """Store the float bias of each Conv / Gemm between DequantizeLinear inputs as int32."""
    inits = _initializers(graph)
    producers = {output: node for node in graph.node for output in node.output}
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        sources = [producers.get(name) for name in node.input[:2]]
        if node.input[2] not in inits or not all(_is_constant_dq(n, inits) for n in sources):
            continue
        x_scale, w_scale = (numpy_helper.to_array(inits[n.input[1]]) for n in sources)
        scale = (x_scale.astype(np.float32) * w_scale.astype(np.float32)).astype(np.float32)
        bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        codes = np.rint(bias / scale).astype(np.int32)
        name = f"{node.output[0]}_bias_int32"
        scale = np.broadcast_to(scale, codes.shape).copy()
        graph.initializer.extend(
            [numpy_helper.from_array(codes, name), numpy_helper.from_array(scale, f"{name}_scale")]
        )
        dequantize = onnx.helper.make_node(
            "DequantizeLinear", [name, f"{name}_scale"], [f"{name}_dequantized"], axis=0
        )
        graph.node.insert(list(graph.node).index(node), dequantize)
        node.input[2] = dequantize.output[0]


def _is_constant_dq(node: onnx.NodeProto | None, inits: dict[str, onnx.TensorProto]) -> bool:
    """A DequantizeLinear whose scale is a constant (weights also have constant codes)."""
    return (
        node is not None
        and node.op_type == "DequantizeLinear"
        and len(node.input) > 1
        and node.input[1] in inits
    )


def _compact_names(graph: onnx.GraphProto) -> None:
    """Name every intermediate tensor ``t<i>`` and drop node names (graph I/O keep theirs)."""
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    keep |= {init.name for init in graph.initializer}
    renamed: dict[str, str] = {}
    for node in graph.node:
        node.name = ""
        for index, name in enumerate(node.output):
            if name and name not in keep:
                renamed[name] = node.output[index] = f"t{len(renamed)}"
    for node in graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = renamed.get(name, name)
    del graph.value_info[:]


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {output.name for output in graph.output}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)


# ---------------------------------------------------------------- checks


def optimized_op_counts(path: str | Path) -> Counter[str]:
    """Operator counts of the graph ONNX Runtime actually runs (its saved optimized model)."""
    with tempfile.TemporaryDirectory(prefix="mobiledl-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    return Counter(node.op_type for node in graph.node)


def integer_ops(path: str | Path) -> Counter[str]:
    """The integer operators (QLinearConv, QGemm, ...) in ONNX Runtime's optimized graph."""
    counts = optimized_op_counts(path)
    return Counter({op: n for op, n in counts.items() if op in INTEGER_OPS})
