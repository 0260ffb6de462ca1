"""The integer IR as a TFLite flatbuffer, run by TensorFlow Lite Micro: an outside anchor for
the planner's arena and the reference's outputs.

TFLM (David et al. 2021, "TensorFlow Lite Micro: Embedded Machine Learning on TinyML
Systems") interprets a ``.tflite`` model in one tensor arena it plans itself (greedy, by
tensor lifetimes), so its arena size for the *same* int8 model is the number TinyEngine and
MCUNet compare against. ``to_tflite`` writes our ``Graph`` with the same int8 weights, biases
and activation grids (NHWC, per-channel weight scales recovered from the requantization
multipliers), using TFLM's own kernels: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD,
MAX_POOL_2D (global average pooling as a depthwise conv of unit weights: see
``_global_avgpool``), and PAD / PADV2 where PyTorch's explicit padding is not TFLite's SAME.
TFLM requantizes with gemmlowp's double rounding and recomputes the multipliers from the
float32 scales the file stores (``tflite_multipliers``): our integer reference with
``graph.rounding = "double"`` on those multipliers gives its outputs bit for bit (checked in
tests). Its arena adds the interpreter's own persistent data (tensor structs, per-channel
multiplier arrays, node data) to the activations its planner places.

Needs the ``tflite-micro`` package (``pip install 'mobiledl[mcu]'``): the flatbuffer schema
and model builder it ships, and its Python interpreter.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobiledl.deploy.mcu.graph import Graph, Op, Requant, Tensor
from mobiledl.errors import UserError

INSTALL = "pip install 'mobiledl[mcu]'"
#: The arena ``tflm_arena`` measures in (bytes): more than any model here needs.
MAX_ARENA = 64 << 20


def _modules() -> tuple[Any, Any]:
    try:
        from tflite_micro.tensorflow.lite.micro.compression import model_editor
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
    except ImportError:
        raise UserError(f"TFLite Micro needs the tflite-micro package: {INSTALL}") from None
    return model_editor, schema


def with_int8_output(graph: Graph, scale: float) -> Graph:
    """``graph`` with a float-output final layer (int32 accumulators) requantized to int8 on
    the grid ``(scale, 0)``, as TFLite needs; other graphs are returned as they are."""
    out = graph.tensors[graph.output]
    if out.dtype == np.int8:
        return graph
    last = graph.ops[-1]
    reals = np.asarray(out.scale, np.float64).reshape(-1) / scale
    op = dataclasses.replace(last, requant=Requant.of(reals))
    tensors = {**graph.tensors, out.name: Tensor(out.name, out.shape, np.float32(scale), 0)}
    return dataclasses.replace(graph, tensors=tensors, ops=[*graph.ops[:-1], op])


def to_tflite(graph: Graph) -> bytes:
    """``graph`` (int8 output: ``with_int8_output``) as a ``.tflite`` flatbuffer."""
    if graph.tensors[graph.output].dtype != np.int8:
        raise UserError("TFLite needs an int8 output: requantize with with_int8_output first")
    editor, schema = _modules()
    writer = _Writer(graph, editor, schema)
    for op in graph.ops:
        writer.add(op)
    subgraph = editor.Subgraph(
        operators=writer.operators,
        inputs=[writer.tensors[graph.input]],
        outputs=[writer.tensors[graph.output]],
    )
    return bytes(editor.Model(subgraphs=[subgraph], description="mobiledl").build())


class _Writer:
    """Tensors and operators of the flatbuffer, op by op."""

    def __init__(self, graph: Graph, editor: Any, schema: Any) -> None:
        self.graph, self.editor, self.schema = graph, editor, schema
        self.operators: list[Any] = []
        self.tensors: dict[str, Any] = {}
        self.tensors[graph.input] = self._activation(graph.tensors[graph.input])

    def _activation(self, tensor: Tensor, shape: tuple[int, ...] | None = None) -> Any:
        scale, zero_point = tensor.first_scale, tensor.zero_point
        return self.editor.Tensor(
            shape=shape or _nhwc(tensor.shape),
            dtype=self.schema.TensorType.INT8,
            quantization=self.editor.Quantization(scale, zero_point),
            name=tensor.name,
        )

    def _constant(self, values: np.ndarray, dtype: int, scales: list[float], axis: int) -> Any:
        quantization = self.editor.Quantization(scales, [0] * len(scales), axis)
        return self.editor.Tensor(
            shape=values.shape, dtype=dtype, data=values, quantization=quantization
        )

    def _operator(self, code: int, inputs: list[Any], output: Any, options: Any, kind: int) -> None:
        fb = self.schema.OperatorT()
        fb.builtinOptionsType, fb.builtinOptions = kind, options
        self.operators.append(self.editor.Operator(code, inputs, [output], _fb=fb))

    def add(self, op: Op) -> None:
        """Append the operators of one IR op."""
        output_tensor = self.graph.tensors[op.output]
        output = self._activation(output_tensor)
        self.tensors[op.output] = output
        inputs = [self.tensors[name] for name in op.inputs]
        if op.kind in ("conv", "pointwise", "depthwise"):
            self._conv(op, inputs[0], output)
        elif op.kind == "fc":
            self._fc(op, inputs[0], output)
        elif op.kind == "add":
            options = self.schema.AddOptionsT()
            options.fusedActivationFunction = self._activation_code(op)
            self._operator(self.schema.BuiltinOperator.ADD, inputs, output, options,
                           self.schema.BuiltinOptions.AddOptions)  # fmt: skip
        elif op.kind == "global_avgpool":
            self._global_avgpool(op, inputs[0], output)
        elif op.kind == "maxpool":
            self._maxpool(op, inputs[0], output)
        else:
            raise UserError(f"layer '{op.layer}': no TFLite form for our '{op.kind}' op")

    def _activation_code(self, op: Op) -> int:
        """The fused activation whose clamp TFLite derives as ours is (module docstring)."""
        codes = self.schema.ActivationFunctionType
        low, high = op.clamp
        if high < 127:
            return codes.RELU6
        return codes.RELU if low > -128 else codes.NONE

    def _padding(self, op: Op, x: Any) -> tuple[Any, int]:
        """TFLite padding for ``op``'s explicit pads: SAME or VALID where they match, else a
        PAD op (padding with the zero point, real 0) and VALID."""
        kinds = self.schema.Padding
        _, height, width, channels = x.shape
        if not any(op.pads):
            return x, kinds.VALID
        if _same_pads(height, op.kernel[0], op.stride[0]) == (op.pads[0], op.pads[2]) and (
            _same_pads(width, op.kernel[1], op.stride[1]) == (op.pads[1], op.pads[3])
        ):
            return x, kinds.SAME
        top, left, bottom, right = op.pads
        pads = self.editor.Tensor(
            shape=(4, 2),
            dtype=self.schema.TensorType.INT32,
            data=np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32),
        )
        padded = self.editor.Tensor(
            shape=(1, height + top + bottom, width + left + right, channels),
            dtype=self.schema.TensorType.INT8,
            quantization=x.quantization,
            name=f"{op.layer}/pad",
        )
        if op.kind == "maxpool":  # pad with the lowest code, which never wins
            lowest = self.editor.Tensor(shape=(1,), dtype=self.schema.TensorType.INT8,
                                        data=np.array([-128], np.int8),
                                        quantization=x.quantization)  # fmt: skip
            options, kind = self.schema.PadV2OptionsT(), self.schema.BuiltinOptions.PadV2Options
            self._operator(self.schema.BuiltinOperator.PADV2, [x, pads, lowest], padded, options,
                           kind)  # fmt: skip
        else:  # PAD fills with the zero point: real 0
            options, kind = self.schema.PadOptionsT(), self.schema.BuiltinOptions.PadOptions
            self._operator(self.schema.BuiltinOperator.PAD, [x, pads], padded, options, kind)
        return padded, kinds.VALID

    def _weights_and_bias(self, op: Op, weight: np.ndarray, axis: int) -> tuple[Any, Any]:
        scales = _weight_scales(self.graph, op)
        s_in = self.graph.tensors[op.inputs[0]].first_scale
        types = self.schema.TensorType
        w = self._constant(np.ascontiguousarray(weight, np.int8), types.INT8, list(scales), axis)
        b = self._constant(op.bias.astype(np.int32), types.INT32, list(scales * s_in), 0)
        return w, b

    def _conv(self, op: Op, x: Any, output: Any) -> None:
        source, padding = self._padding(op, x)
        if op.kind == "depthwise":
            weight = op.weight.transpose(1, 2, 3, 0)  # (C, 1, kh, kw) -> (1, kh, kw, C)
            w, b = self._weights_and_bias(op, weight, 3)
            options = self.schema.DepthwiseConv2DOptionsT()
            options.depthMultiplier = 1
            kind = self.schema.BuiltinOptions.DepthwiseConv2DOptions
            code = self.schema.BuiltinOperator.DEPTHWISE_CONV_2D
        elif op.groups == 1:
            w, b = self._weights_and_bias(op, op.weight.transpose(0, 2, 3, 1), 0)
            options = self.schema.Conv2DOptionsT()
            kind, code = (
                self.schema.BuiltinOptions.Conv2DOptions,
                self.schema.BuiltinOperator.CONV_2D,
            )
        else:
            raise UserError(f"layer '{op.layer}': grouped convolution has no TFLM kernel")
        options.padding, options.strideH, options.strideW = padding, *op.stride
        options.dilationHFactor = options.dilationWFactor = 1
        options.fusedActivationFunction = self._activation_code(op)
        self._operator(code, [source, w, b], output, options, kind)

    def _fc(self, op: Op, x: Any, output: Any) -> None:
        weight = op.weight
        _, height, width, channels = x.shape if len(x.shape) == 4 else (1, 1, 1, x.shape[-1])
        if height * width > 1:  # our columns are in CHW order, TFLite flattens HWC
            weight = weight.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
        w, b = self._weights_and_bias(op, weight.reshape(weight.shape[0], -1), 0)
        options = self.schema.FullyConnectedOptionsT()
        options.fusedActivationFunction = self._activation_code(op)
        self._operator(self.schema.BuiltinOperator.FULLY_CONNECTED, [x, w, b], output, options,
                       self.schema.BuiltinOptions.FullyConnectedOptions)  # fmt: skip

    def _global_avgpool(self, op: Op, x: Any, output: Any) -> None:
        """Global average pooling as a depthwise conv of ones over the whole plane. TFLM's MEAN
        requantizes the sum by ``s_in / s_out`` and then divides by the count (two roundings);
        our op requantizes the sum once by a multiplier that includes ``1 / count``, which is
        what a depthwise conv with unit weights does in TFLM's kernels."""
        _, height, width, channels = x.shape
        scales = np.broadcast_to(_weight_scales(self.graph, op), (channels,))
        s_in = self.graph.tensors[op.inputs[0]].first_scale
        types = self.schema.TensorType
        ones = np.ones((1, height, width, channels), np.int8)
        w = self._constant(ones, types.INT8, list(scales), 3)
        b = self._constant(np.zeros(channels, np.int32), types.INT32, list(scales * s_in), 0)
        options = self.schema.DepthwiseConv2DOptionsT()
        options.padding, options.strideH, options.strideW = self.schema.Padding.VALID, 1, 1
        options.depthMultiplier = options.dilationHFactor = options.dilationWFactor = 1
        options.fusedActivationFunction = self._activation_code(op)
        self._operator(self.schema.BuiltinOperator.DEPTHWISE_CONV_2D, [x, w, b], output,
                       options, self.schema.BuiltinOptions.DepthwiseConv2DOptions)  # fmt: skip

    def _maxpool(self, op: Op, x: Any, output: Any) -> None:
        source, padding = self._padding(op, x)
        options = self.schema.Pool2DOptionsT()
        options.padding, options.strideH, options.strideW = padding, *op.stride
        options.filterHeight, options.filterWidth = op.kernel
        options.fusedActivationFunction = self._activation_code(op)
        self._operator(self.schema.BuiltinOperator.MAX_POOL_2D, [source], output, options,
                       self.schema.BuiltinOptions.Pool2DOptions)  # fmt: skip


def _weight_scales(graph: Graph, op: Op) -> np.ndarray:
    """Per-output-channel weight scales ``M * s_out / s_in``, from the Q31 multipliers."""
    multipliers = op.requant.m0.astype(np.float64) * np.exp2(op.requant.shift - 31.0)
    return (
        multipliers * graph.tensors[op.output].first_scale / graph.tensors[op.inputs[0]].first_scale
    )


def tflite_multipliers(graph: Graph) -> Graph:
    """``graph`` with the requantization multipliers TFLM derives from the ``.tflite`` that
    ``to_tflite`` writes. The format stores float32 scales, not Q31 multipliers: TFLM computes
    a conv's per-channel multiplier as ``s_in * s_w[c] / s_out`` in double from float32 values
    (a per-tensor fully connected layer multiplies ``s_in * s_w`` in float32 first), so its
    ``M0`` can differ from ours in the low bits (about 2**-24 relative) and an accumulator next
    to a rounding boundary then lands one code apart. Adds keep theirs: TFLM derives them
    from the activation scales, as we do."""
    ops = []
    for op in graph.ops:
        if op.requant is None or op.kind not in ("conv", "pointwise", "depthwise", "fc",
                                                 "global_avgpool"):  # fmt: skip
            ops.append(op)
            continue
        s_in = np.float32(graph.tensors[op.inputs[0]].first_scale)
        s_out = np.float64(np.float32(graph.tensors[op.output].first_scale))
        weights = np.float32(_weight_scales(graph, op))
        if op.kind == "fc" and weights.size == 1:
            product = np.float64(s_in * weights)
        else:
            product = np.float64(s_in) * weights.astype(np.float64)
        ops.append(dataclasses.replace(op, requant=Requant.of(product / s_out)))
    return dataclasses.replace(graph, ops=ops)


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else shape


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TFLite SAME padding (before, after) of one axis: the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _interpreter(model: bytes, arena: int) -> Any:
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise UserError(f"TFLite Micro needs the tflite-micro package: {INSTALL}") from None
    return runtime.Interpreter.from_bytes(model, arena_size=arena)


@dataclass
class TflmArena:
    """TFLM's tensor arena for a model, from its recording allocator: ``head`` is what its
    memory planner gives the activations (and kernel scratch), ``tail`` the persistent part
    (tensor structs, per-channel multipliers, node data); ``total`` is the arena it needs."""

    total: int
    head: int
    tail: int


_ALLOCATION = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")


def tflm_arena(model: bytes, image_shape: tuple[int, ...]) -> TflmArena:
    """Allocate ``model`` in a large arena, run it once on zeros and read what it used."""
    interpreter = _interpreter(model, MAX_ARENA)
    interpreter.set_input(np.zeros(image_shape, np.int8), 0)
    interpreter.invoke()
    sizes = dict(_ALLOCATION.findall(_stderr_of(interpreter.print_allocations)))
    if set(sizes) != {"total", "head", "tail"}:
        raise RuntimeError("TFLM printed no arena allocation summary")
    return TflmArena(int(sizes["total"]), int(sizes["head"]), int(sizes["tail"]))


def _stderr_of(call: Callable[[], object]) -> str:
    """What ``call`` writes to file descriptor 2 (TFLM prints from C++)."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            call()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        return capture.read().decode(errors="replace")


def tflm_run(model: bytes, codes: np.ndarray, arena: int) -> np.ndarray:
    """TFLM's int8 outputs ``(N, K)`` on int8 NCHW inputs ``codes`` (one image at a time)."""
    interpreter = _interpreter(model, arena)
    outputs = []
    for image in np.asarray(codes, np.int8):
        interpreter.set_input(np.ascontiguousarray(image.transpose(1, 2, 0))[None], 0)
        interpreter.invoke()
        outputs.append(np.asarray(interpreter.get_output(0)).reshape(-1))
    return np.stack(outputs)
