"""Our int8 QDQ ONNX export read into a small integer IR for microcontrollers.

The export (``mobiledl.deploy.qdq``) stores each quantized layer as
``DequantizeLinear(int8 activation) -> Conv/Gemm(DequantizeLinear(int8 weight), int32 bias)
-> [Relu | Clip] -> QuantizeLinear``. ``read_graph`` turns it into what an integer-only
runtime executes (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", Sec. 2): a list of ``Op`` in execution order
over int8 ``Tensor``s (shape, scale, zero point), with int8 per-output-channel weights, int32
biases and the fixed-point multipliers of ``mobiledl.deploy.mcu.fixedpoint``. ReLU and ReLU6
become clamps of the int8 output range (``Q(clip(x, a, b)) = clip(Q(x), Q(a), Q(b))``, as Q
is monotonic). Activations are NCHW with batch 1 (one image per inference, as on an MCU);
uint8 activations are stored as int8 with the zero point moved by -128, the same real values.

A float-output final layer (the export leaves the logits unquantized) keeps its int32
accumulator as the graph output, with the per-channel scale ``s_in * s_w``. Weights that the
export bit-packed (``mobiledl.deploy.onnx_packing``) are unpacked by evaluating their constant
subgraph with ``onnx.reference``. An op outside the supported set raises ``UserError`` naming
the ONNX op and the layer (the PyTorch module name, from the nearest weight's name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from mobiledl.deploy.mcu.fixedpoint import EVEN, quantize_multipliers
from mobiledl.errors import UserError

INT8_MIN, INT8_MAX = -128, 127
#: ONNX ops the reader maps to integer kernels (besides the Q/DQ pairs around them).
SUPPORTED_OPS = (
    "Conv",
    "Gemm",
    "Add",
    "Relu",
    "Clip",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "Flatten",
)
_QDQ = ("QuantizeLinear", "DequantizeLinear")
#: Relative mismatch tolerated between a bias's scale and ``s_in * s_w`` (float32 products).
_BIAS_SCALE_RTOL = 1e-5


@dataclass
class Tensor:
    """An integer tensor: int8 activations (per-tensor ``scale``, ``zero_point``), or the
    int32 accumulator of a float-output final layer (per-channel ``scale``, zero point 0)."""

    name: str
    shape: tuple[int, ...]
    scale: np.ndarray
    zero_point: int
    dtype: type = np.int8

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def first_scale(self) -> float:
        """The per-tensor scale (of a per-channel one, the first channel's)."""
        return float(np.asarray(self.scale).reshape(-1)[0])


@dataclass
class Requant:
    """Per-output-channel fixed-point multipliers ``M0`` (Q31) and shifts."""

    m0: np.ndarray
    shift: np.ndarray

    @classmethod
    def of(cls, reals: np.ndarray) -> Requant:
        m0, shift = quantize_multipliers(reals)
        return cls(m0, shift)

    @property
    def nbytes(self) -> int:
        return self.m0.nbytes + self.shift.nbytes


@dataclass
class Op:
    """One integer kernel. ``kind``: conv, depthwise, pointwise, fc, add, avgpool, maxpool,
    global_avgpool. ``pads`` are (top, left, bottom, right); ``clamp`` the int8 output range
    (the fused ReLU/ReLU6, or the full range); ``requant`` maps the int32 accumulator to the
    output grid (None for a float-output final layer); an add has one ``input_requant`` per
    input (TFLite's scheme: both inputs rescaled to a common grid with 20 bits of headroom)."""

    kind: str
    layer: str
    inputs: tuple[str, ...]
    output: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    requant: Requant | None = None
    input_requant: tuple[Requant, ...] = ()
    clamp: tuple[int, int] = (INT8_MIN, INT8_MAX)
    count_include_pad: bool = True

    @property
    def constant_bytes(self) -> int:
        """Flash this op's constants take: weights, biases and multiplier tables."""
        arrays = [a for a in (self.weight, self.bias) if a is not None]
        tables = [r for r in (self.requant, *self.input_requant) if r is not None]
        return sum(a.nbytes for a in arrays) + sum(r.nbytes for r in tables)

    def macs(self, tensors: dict[str, Tensor]) -> int:
        """Multiply-accumulates of one inference (elements read for pooling and add)."""
        out = tensors[self.output]
        if self.weight is not None:
            return out.size * math.prod(self.weight.shape[1:])
        return sum(tensors[name].size for name in self.inputs)


@dataclass
class Graph:
    """An integer model: ``ops`` in execution order over ``tensors``; ``rounding``: how its
    kernels round requantization (``mobiledl.deploy.mcu.fixedpoint``, a runtime choice)."""

    tensors: dict[str, Tensor]
    ops: list[Op]
    input: str
    output: str
    source: str = ""
    rounding: str = EVEN

    def consumers(self, name: str) -> list[int]:
        return [i for i, op in enumerate(self.ops) if name in op.inputs]

    @property
    def flash_bytes(self) -> int:
        return sum(op.constant_bytes for op in self.ops)


def read_graph(path: str | Path) -> Graph:
    """The integer IR of the int8 QDQ ONNX file at ``path`` (module docstring)."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: no such ONNX file")
    try:
        model = onnx.load(str(source))
    except Exception as error:  # protobuf raises several types for a bad file
        raise UserError(f"{source}: not an ONNX model ({error})") from None
    return graph_from_model(model, str(source))


def graph_from_model(model: onnx.ModelProto, source: str = "") -> Graph:
    """The integer IR of an in-memory int8 QDQ ONNX model."""
    reader = _Reader(model.graph, source)
    for node in model.graph.node:
        reader.visit(node)
    return reader.finish()


@dataclass
class _Constant:
    """A dequantized constant: integer ``codes``, ``scale``, ``zero_point`` (per ``axis``)."""

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray


@dataclass
class _Pending:
    """A float op output awaiting its QuantizeLinear (and maybe a ReLU/Clip first)."""

    op: Op
    node: onnx.NodeProto
    shape: tuple[int, ...]
    scales: tuple[np.ndarray, ...]
    low: float = -math.inf
    high: float = math.inf


class _Reader:
    """Walks the QDQ graph in node order, building ``Op``s and ``Tensor``s."""

    def __init__(self, graph: onnx.GraphProto, source: str) -> None:
        self.graph = graph
        self.source = source
        self.values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.constants: dict[str, _Constant] = {}
        self.activations: dict[str, Tensor] = {}  # DequantizeLinear outputs (float names)
        self.quantized: dict[str, Tensor] = {}  # QuantizeLinear outputs (int8 names)
        self.pending: dict[str, _Pending] = {}
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.input_name = ""
        self.last_layer = "the input"
        self.graph_inputs = {v.name: v for v in graph.input if v.name not in self.values}

    # ------------------------------------------------------------ dispatch

    def visit(self, node: onnx.NodeProto) -> None:
        if node.op_type not in _QDQ and self._all_constant(node):
            self._fold(node)
            return
        handlers = {
            "QuantizeLinear": self._quantize,
            "DequantizeLinear": self._dequantize,
            "Conv": self._conv,
            "Gemm": self._gemm,
            "Add": self._add,
            "Relu": self._activation,
            "Clip": self._activation,
            "AveragePool": self._pool,
            "MaxPool": self._pool,
            "GlobalAveragePool": self._pool,
            "Flatten": self._flatten,
        }
        handler = handlers.get(node.op_type)
        if handler is None:
            self._unsupported(node)
        handler(node)

    def finish(self) -> Graph:
        outputs = [v.name for v in self.graph.output]
        if len(outputs) != 1 or not self.input_name:
            raise UserError(f"{self.source}: the MCU runtime takes one input and one output")
        name = outputs[0]
        if name in self.pending:
            output = self._float_output(self.pending.pop(name), name)
        elif name in self.activations:
            output = self.activations[name].name
        else:
            raise UserError(f"{self.source}: graph output '{name}' is not an integer tensor")
        if self.pending:
            unquantized = next(iter(self.pending.values()))
            self._fail(unquantized.node, "its output is not quantized")
        return Graph(self.tensors, self.ops, self.input_name, output, self.source)

    # ------------------------------------------------------------ errors

    def _describe(self, node: onnx.NodeProto) -> str:
        label = node.name or (node.output[0] if node.output else "?")
        return f"ONNX op {node.op_type} (node '{label}', after layer '{self.last_layer}')"

    def _fail(self, node: onnx.NodeProto, reason: str) -> NoReturn:
        raise UserError(f"{self.source}: {self._describe(node)}: {reason}")

    def _unsupported(self, node: onnx.NodeProto) -> NoReturn:
        self._fail(
            node, f"not supported by the MCU runtime (supported: {', '.join(SUPPORTED_OPS)})"
        )

    # ------------------------------------------------------------ constants

    def _all_constant(self, node: onnx.NodeProto) -> bool:
        return all(not name or name in self.values for name in node.input)

    def _fold(self, node: onnx.NodeProto) -> None:
        """Evaluate a node of constants (a packed weight's unpacking, a Constant)."""
        feeds = {name: self.values[name] for name in node.input if name}
        results = ReferenceEvaluator(node).run(None, feeds)
        self.values.update(zip(node.output, (np.asarray(r) for r in results), strict=True))

    def _attribute(self, node: onnx.NodeProto, name: str, default: object) -> object:
        for attribute in node.attribute:
            if attribute.name == name:
                return onnx.helper.get_attribute_value(attribute)
        return default

    # ------------------------------------------------------------ Q / DQ

    def _qparams(self, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero point (default: 0 of the codes' type, uint8 for a QuantizeLinear)."""
        if len(node.input) < 2 or node.input[1] not in self.values:
            self._fail(node, "needs a constant scale and zero point")
        scale = self.values[node.input[1]]
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in self.values:
                self._fail(node, "needs a constant zero point")
            return scale, self.values[node.input[2]]
        codes = self.values.get(node.input[0])
        dtype = (
            codes.dtype if node.op_type == "DequantizeLinear" and codes is not None else np.uint8
        )
        return scale, np.zeros((), dtype)

    def _int8_params(self, node: onnx.NodeProto) -> tuple[np.ndarray, int]:
        """Per-tensor scale and the zero point on the int8 grid (uint8 moved by -128)."""
        scale, zero_point = self._qparams(node)
        if scale.size != 1:
            self._fail(node, "activations must be quantized per tensor")
        if zero_point.dtype not in (np.int8, np.uint8):
            self._fail(node, f"activations must be 8-bit, not {zero_point.dtype}")
        offset = 128 if zero_point.dtype == np.uint8 else 0
        return scale.astype(np.float32).reshape(()), int(zero_point.reshape(())) - offset

    def _quantize(self, node: onnx.NodeProto) -> None:
        source, name = node.input[0], node.output[0]
        scale, zero_point = self._int8_params(node)
        if source in self.graph_inputs and not self.input_name:
            shape = self._input_shape(self.graph_inputs[source])
            self.input_name = name
            self._add_tensor(Tensor(name, shape, scale, zero_point))
        elif source in self.pending:
            pending = self.pending.pop(source)
            self._finish_op(pending, Tensor(name, pending.shape, scale, zero_point))
        elif source in self.activations:
            self._alias(node, self.activations[source], scale, zero_point)
        else:
            self._fail(node, "quantizes a tensor the MCU runtime does not compute")

    def _alias(self, node: onnx.NodeProto, tensor: Tensor, scale: np.ndarray, zp: int) -> None:
        """A QuantizeLinear right after a DequantizeLinear with the same grid is a no-op."""
        if not (np.isclose(scale, tensor.scale, rtol=1e-6) and zp == tensor.zero_point):
            self._fail(node, "re-quantizes an activation to another grid")
        self.quantized[node.output[0]] = tensor

    def _dequantize(self, node: onnx.NodeProto) -> None:
        source, name = node.input[0], node.output[0]
        if source in self.values:
            scale, zero_point = self._qparams(node)
            self.constants[name] = _Constant(self.values[source], scale, zero_point)
        elif source in self.quantized:
            self.activations[name] = self.quantized[source]
        else:
            self._fail(node, "dequantizes a tensor that is neither a constant nor int8")

    def _input_shape(self, value: onnx.ValueInfoProto) -> tuple[int, ...]:
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
        if len(shape) != 4 or any(s <= 0 for s in shape[1:]):
            raise UserError(
                f"{self.source}: the MCU runtime takes one image input (N, C, H, W) of fixed "
                f"size, not {value.name} of shape {shape}"
            )
        return (1, *shape[1:])

    def _add_tensor(self, tensor: Tensor) -> None:
        self.tensors[tensor.name] = tensor
        self.quantized[tensor.name] = tensor

    # ------------------------------------------------------------ compute ops

    def _activation_input(self, node: onnx.NodeProto, index: int = 0) -> Tensor:
        name = node.input[index]
        if name not in self.activations:
            self._fail(
                node,
                f"input '{name}' is not a dequantized int8 activation (the MCU runtime takes "
                "an int8 model: `mobiledl quantize MODEL --method ptq --bits 8 --onnx q.onnx`)",
            )
        return self.activations[name]

    def _weight(self, node: onnx.NodeProto, index: int) -> tuple[_Constant, str]:
        name = node.input[index]
        if name not in self.constants:
            self._fail(node, "its weight is not an int8 constant (was the model quantized?)")
        weight = self.constants[name]
        if weight.codes.dtype != np.int8 or np.any(weight.zero_point != 0):
            self._fail(node, "weights must be symmetric int8 (zero point 0)")
        producer = next(n for n in self.graph.node if name in n.output)
        return weight, _layer_name(producer.input[0])

    def _bias(self, node: onnx.NodeProto, x: Tensor, w: _Constant, out_channels: int) -> np.ndarray:
        """The int32 bias codes; their scale must be ``s_in * s_w`` (integer accumulation)."""
        if len(node.input) < 3 or not node.input[2]:
            return np.zeros(out_channels, np.int32)
        bias = self.constants.get(node.input[2])
        if bias is None or bias.codes.dtype != np.int32:
            self._fail(node, "its bias is not an int32 constant")
        expected = np.broadcast_to(x.scale * w.scale.astype(np.float32), (out_channels,))
        if not np.allclose(
            np.broadcast_to(bias.scale, expected.shape), expected, rtol=_BIAS_SCALE_RTOL
        ):
            self._fail(node, "its bias scale is not input scale x weight scale")
        return bias.codes.astype(np.int32).reshape(out_channels)

    def _conv(self, node: onnx.NodeProto) -> None:
        x = self._activation_input(node)
        weight, layer = self._weight(node, 1)
        if self._attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            self._fail(node, "auto_pad is not supported (export with explicit pads)")
        if any(d != 1 for d in self._attribute(node, "dilations", [1, 1])):
            self._fail(node, "dilated convolutions are not supported")
        codes = weight.codes
        if codes.ndim != 4:
            self._fail(node, "only 2-D convolutions are supported")
        groups = int(self._attribute(node, "group", 1))
        out_channels, _, kh, kw = codes.shape
        stride = tuple(self._attribute(node, "strides", [1, 1]))
        top, left, bottom, right = self._attribute(node, "pads", [0, 0, 0, 0])
        _, channels, height, width = x.shape
        out_h = (height + top + bottom - kh) // stride[0] + 1
        out_w = (width + left + right - kw) // stride[1] + 1
        kind = "conv"
        if groups == channels == out_channels and groups > 1:
            kind = "depthwise"
        elif groups == 1 and kh == kw == 1:
            kind = "pointwise"
        self.last_layer = layer
        op = Op(
            kind,
            layer,
            (x.name,),
            "",
            weight=codes,
            bias=self._bias(node, x, weight, out_channels),
            kernel=(kh, kw),
            stride=(int(stride[0]), int(stride[1])),
            pads=(int(top), int(left), int(bottom), int(right)),
            groups=groups,
        )
        self._defer(node, op, (1, out_channels, out_h, out_w), (x.scale * weight.scale,))

    def _gemm(self, node: onnx.NodeProto) -> None:
        x = self._activation_input(node)
        weight, layer = self._weight(node, 1)
        alpha, beta = self._attribute(node, "alpha", 1.0), self._attribute(node, "beta", 1.0)
        if alpha != 1.0 or beta != 1.0 or self._attribute(node, "transA", 0):
            self._fail(node, "only Gemm with alpha = beta = 1 and no transA is supported")
        codes = weight.codes if self._attribute(node, "transB", 0) else weight.codes.T
        out_features, in_features = codes.shape
        if x.size != in_features:
            self._fail(node, f"takes {in_features} features, the input has {x.size}")
        self.last_layer = layer
        op = Op(
            "fc",
            layer,
            (x.name,),
            "",
            weight=np.ascontiguousarray(codes),
            bias=self._bias(node, x, weight, out_features),
        )
        self._defer(node, op, (1, out_features), (x.scale * weight.scale,))

    def _add(self, node: onnx.NodeProto) -> None:
        a, b = self._activation_input(node, 0), self._activation_input(node, 1)
        if a.shape != b.shape:
            self._fail(node, f"broadcasting add {a.shape} + {b.shape} is not supported")
        op = Op("add", f"{self.last_layer}+add", (a.name, b.name), "")
        self._defer(node, op, a.shape, (a.scale, b.scale))

    def _pool(self, node: onnx.NodeProto) -> None:
        x = self._activation_input(node)
        _, channels, height, width = x.shape
        if node.op_type == "GlobalAveragePool":
            op = Op(
                "global_avgpool", f"{self.last_layer}+pool", (x.name,), "", kernel=(height, width)
            )
            self._defer(node, op, (1, channels, 1, 1), (x.scale,))
            return
        if any(d != 1 for d in self._attribute(node, "dilations", [1, 1])):
            self._fail(node, "dilated pooling is not supported")
        kh, kw = (int(k) for k in self._attribute(node, "kernel_shape", [1, 1]))
        sh, sw = (int(s) for s in self._attribute(node, "strides", [1, 1]))
        top, left, bottom, right = (int(p) for p in self._attribute(node, "pads", [0, 0, 0, 0]))
        include_pad = bool(self._attribute(node, "count_include_pad", 0))
        if node.op_type == "AveragePool" and not include_pad and any((top, left, bottom, right)):
            self._fail(node, "padded average pooling must count the padding (count_include_pad=1)")
        out_h, out_w = (height + top + bottom - kh) // sh + 1, (width + left + right - kw) // sw + 1
        if self._attribute(node, "ceil_mode", 0):
            if node.op_type != "MaxPool":
                self._fail(node, "ceil_mode is supported for max pooling only")
            out_h, bottom = _ceil_mode(height, top, bottom, kh, sh)
            out_w, right = _ceil_mode(width, left, right, kw, sw)
        kind = "maxpool" if node.op_type == "MaxPool" else "avgpool"
        op = Op(
            kind,
            f"{self.last_layer}+{kind}",
            (x.name,),
            "",
            kernel=(kh, kw),
            stride=(sh, sw),
            pads=(top, left, bottom, right),
        )
        self._defer(node, op, (1, channels, out_h, out_w), (x.scale,))

    def _flatten(self, node: onnx.NodeProto) -> None:
        """NCHW flattening at axis 1 moves no bytes: the output aliases the input."""
        x = self._activation_input(node)
        if self._attribute(node, "axis", 1) != 1:
            self._fail(node, "only Flatten at axis 1 is supported")
        self.activations[node.output[0]] = x

    def _activation(self, node: onnx.NodeProto) -> None:
        """ReLU / Clip after an op: narrows the op's output range (clamped on the int8 grid)."""
        pending = self.pending.pop(node.input[0], None)
        if pending is None:
            self._fail(node, "the MCU runtime fuses ReLU/Clip into the op before it only")
        if node.op_type == "Relu":
            low, high = 0.0, math.inf
        else:
            bounds = [self.values.get(name) for name in node.input[1:3]]
            if any(name and name not in self.values for name in node.input[1:3]):
                self._fail(node, "Clip bounds must be constants")
            low = float(bounds[0]) if len(bounds) > 0 and bounds[0] is not None else -math.inf
            high = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else math.inf
        pending.low, pending.high = max(pending.low, low), min(pending.high, high)
        self.pending[node.output[0]] = pending

    def _defer(
        self, node: onnx.NodeProto, op: Op, shape: tuple[int, ...], scales: tuple[np.ndarray, ...]
    ) -> None:
        self.pending[node.output[0]] = _Pending(op, node, shape, scales)

    def _finish_op(self, pending: _Pending, output: Tensor) -> None:
        """Give ``pending.op`` its output grid: multipliers, clamp, and the output tensor."""
        op = pending.op
        op.output = output.name
        out_scale = float(output.scale)
        if op.kind == "add":
            # TFLite: inputs rescaled to 2 * max(s_a, s_b) with 20 bits of headroom.
            common = 2.0 * max(float(s) for s in pending.scales)
            op.input_requant = tuple(
                Requant.of(np.array([float(s) / common])) for s in pending.scales
            )
            op.requant = Requant.of(np.array([common / ((1 << ADD_LEFT_SHIFT) * out_scale)]))
        elif op.kind in ("avgpool", "global_avgpool"):
            window = op.kernel[0] * op.kernel[1]
            op.requant = Requant.of(np.array([float(pending.scales[0]) / (out_scale * window)]))
        else:
            reals = np.asarray(pending.scales[0], np.float64).reshape(-1) / out_scale
            op.requant = Requant.of(reals)
        op.clamp = _clamp(pending.low, pending.high, out_scale, output.zero_point)
        self._add_tensor(Tensor(output.name, pending.shape, output.scale, output.zero_point))
        self.ops.append(op)

    def _float_output(self, pending: _Pending, name: str) -> str:
        """A final conv / fc without output quantizer: its int32 accumulator is the output."""
        op = pending.op
        if op.weight is None or math.isfinite(pending.low) or math.isfinite(pending.high):
            self._fail(pending.node, "a float graph output must come straight from a conv or fc")
        scale = np.asarray(pending.scales[0], np.float32).reshape(-1)
        op.output = name
        self.tensors[name] = Tensor(name, pending.shape, scale, 0, np.int32)
        self.ops.append(op)
        return name


#: Bits of headroom an add's inputs get before rescaling (TFLite's ``left_shift``).
ADD_LEFT_SHIFT = 20


def _clamp(low: float, high: float, scale: float, zero_point: int) -> tuple[int, int]:
    """The int8 codes of ``[low, high]`` (round half to even, as QuantizeLinear)."""
    q_low = INT8_MIN if math.isinf(low) else zero_point + int(np.rint(low / scale))
    q_high = INT8_MAX if math.isinf(high) else zero_point + int(np.rint(high / scale))
    return max(INT8_MIN, q_low), min(INT8_MAX, q_high)


def _ceil_mode(size: int, before: int, after: int, kernel: int, stride: int) -> tuple[int, int]:
    """Output size of a ceil-mode pooling and the end padding that makes its last window fit
    (a window must start inside the input or its leading padding, as in PyTorch)."""
    out = -(-(size + before + after - kernel) // stride) + 1
    if (out - 1) * stride >= size + before:
        out -= 1
    return out, max(after, (out - 1) * stride + kernel - size - before)


def _layer_name(initializer: str) -> str:
    """``features.1.conv.weight_quantized`` -> ``features.1.conv`` (the PyTorch module)."""
    name = initializer.removesuffix("_quantized")
    return name.removesuffix(".weight")
