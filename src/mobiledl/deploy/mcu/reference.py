"""Integer-only execution of a ``Graph`` in NumPy: the oracle for the MCU runtime.

Every kernel follows Jacob et al. 2018 ("Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", Sec. 2.2-2.4): int8 inputs minus their zero
point, int32 accumulation with int8 weights and int32 biases, requantization by a Q31
multiplier and a shift, rounded once or twice as ``graph.rounding`` says
(``mobiledl.deploy.mcu.fixedpoint``), a saturating cast
to int8 within the fused activation's clamp. Nothing in a kernel is a float; floats appear only
at the graph boundary (``quantize_input``, ``dequantize``).

Activations are NCHW; ``run`` takes a batch (N images at once, for tests), the planned-arena
executor in ``mobiledl.deploy.mcu.arena`` one image at a time.
"""

from __future__ import annotations

import numpy as np

from mobiledl.deploy.mcu.fixedpoint import EVEN, multiply_by_quantized_multiplier, saturate
from mobiledl.deploy.mcu.graph import ADD_LEFT_SHIFT, Graph, Op, Tensor


def quantize_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """The float input ``x`` on the input tensor's int8 grid (round half to even)."""
    tensor = graph.tensors[graph.input]
    return quantize_codes(x, tensor.scale, tensor.zero_point)


def quantize_codes(x: np.ndarray, scale: np.ndarray | float, zero_point: int) -> np.ndarray:
    """Float ``x`` on the int8 grid ``(scale, zero_point)``, as QuantizeLinear rounds."""
    codes = np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32)) + zero_point
    return saturate(codes, -128, 127)


def dequantize(tensor: Tensor, codes: np.ndarray) -> np.ndarray:
    """Real values of ``codes`` (per channel along axis 1 for an int32 output)."""
    scale = np.asarray(tensor.scale, np.float32)
    if scale.ndim == 1:
        scale = scale.reshape((1, -1) + (1,) * (codes.ndim - 2))
    return (codes.astype(np.int64) - tensor.zero_point).astype(np.float32) * scale


def run(graph: Graph, x: np.ndarray) -> np.ndarray:
    """The integer output of ``graph`` on int8 input ``x`` (N, C, H, W)."""
    return run_all(graph, x)[graph.output]


def run_all(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of ``graph`` on int8 input ``x``, by name."""
    values = {graph.input: np.asarray(x, np.int8)}
    for op in graph.ops:
        values[op.output] = execute(op, graph, [values[name] for name in op.inputs])
    return values


def execute(op: Op, graph: Graph, inputs: list[np.ndarray]) -> np.ndarray:
    """One op on its input arrays (batch first)."""
    tensors = [graph.tensors[name] for name in op.inputs]
    output = graph.tensors[op.output]
    if op.kind == "add":
        return add(op, inputs, tensors, output, graph.rounding)
    centred = inputs[0].astype(np.int32) - np.int32(tensors[0].zero_point)
    if op.kind == "maxpool":
        acc = max_pool(op, inputs[0]).astype(np.int32) - np.int32(tensors[0].zero_point)
    elif op.kind in ("avgpool", "global_avgpool"):
        acc = sum_pool(op, centred)
    elif op.kind == "fc":
        acc = centred.reshape(len(centred), -1) @ op.weight.T.astype(np.int32) + op.bias
    elif op.kind == "depthwise":
        acc = depthwise_acc(op, centred)
    else:
        acc = conv_acc(op, centred)
    return requantize(op, acc, output, graph.rounding)


def requantize(op: Op, acc: np.ndarray, output: Tensor, rounding: str = EVEN) -> np.ndarray:
    """int32 accumulators to the output grid (per channel on axis 1), or kept as int32 for a
    float-output layer (``op.requant is None``)."""
    if op.requant is None:
        return acc.astype(np.int32)
    view = (1, -1) + (1,) * (acc.ndim - 2)
    m0, shift = op.requant.m0.reshape(view), op.requant.shift.reshape(view)
    scaled = multiply_by_quantized_multiplier(acc, m0, shift, rounding) + np.int32(
        output.zero_point
    )
    return saturate(scaled, *op.clamp)


def padded(op: Op, centred: np.ndarray, value: int = 0) -> np.ndarray:
    top, left, bottom, right = op.pads
    widths = ((0, 0), (0, 0), (top, bottom), (left, right))
    return np.pad(centred, widths, constant_values=value)


def _out_size(op: Op, height: int, width: int) -> tuple[int, int]:
    top, left, bottom, right = op.pads
    out_h = (height + top + bottom - op.kernel[0]) // op.stride[0] + 1
    out_w = (width + left + right - op.kernel[1]) // op.stride[1] + 1
    return out_h, out_w


def _taps(op: Op, source: np.ndarray, out_h: int, out_w: int):
    """``(i, j, window)``: the input pixels kernel tap ``(i, j)`` meets, one per output."""
    sh, sw = op.stride
    for i in range(op.kernel[0]):
        for j in range(op.kernel[1]):
            yield i, j, source[:, :, i : i + sh * out_h : sh, j : j + sw * out_w : sw]


def depthwise_acc(op: Op, centred: np.ndarray) -> np.ndarray:
    """int32 accumulators of a depthwise conv: one filter per channel, tap by tap."""
    out_h, out_w = _out_size(op, *centred.shape[2:])
    source = padded(op, centred)
    acc = np.zeros((len(centred), op.weight.shape[0], out_h, out_w), np.int32)
    weight = op.weight.astype(np.int32)
    for i, j, window in _taps(op, source, out_h, out_w):
        acc += window * weight[:, 0, i, j].reshape(1, -1, 1, 1)
    return acc + op.bias.reshape(1, -1, 1, 1)


def conv_acc(op: Op, centred: np.ndarray) -> np.ndarray:
    """int32 accumulators of a (grouped) conv as an integer matrix product per group."""
    batch, channels = centred.shape[:2]
    out_h, out_w = _out_size(op, *centred.shape[2:])
    out_channels = op.weight.shape[0]
    groups = op.groups
    per_in, per_out = channels // groups, out_channels // groups
    taps = [window for _, _, window in _taps(op, padded(op, centred), out_h, out_w)]
    columns = np.stack(taps, axis=2)  # (N, C, taps, OH, OW)
    columns = columns.reshape(batch, groups, per_in * len(taps), out_h * out_w)
    weight = op.weight.astype(np.int32).reshape(groups, per_out, per_in * len(taps))
    acc = np.matmul(weight[None], columns)  # (N, groups, per_out, OH*OW)
    acc = acc.reshape(batch, out_channels, out_h, out_w)
    return acc + op.bias.reshape(1, -1, 1, 1)


def sum_pool(op: Op, centred: np.ndarray) -> np.ndarray:
    """Window sums of ``x - zp`` (the padding counts as real zero)."""
    if op.kind == "global_avgpool":
        return centred.sum(axis=(2, 3), keepdims=True, dtype=np.int32)
    out_h, out_w = _out_size(op, *centred.shape[2:])
    acc = np.zeros((*centred.shape[:2], out_h, out_w), np.int32)
    for _, _, window in _taps(op, padded(op, centred), out_h, out_w):
        acc += window
    return acc


def max_pool(op: Op, x: np.ndarray) -> np.ndarray:
    """Window maxima of the int8 codes (padding never wins)."""
    out_h, out_w = _out_size(op, *x.shape[2:])
    source = padded(op, x, value=-128)
    result = np.full((*x.shape[:2], out_h, out_w), -128, np.int8)
    for _, _, window in _taps(op, source, out_h, out_w):
        np.maximum(result, window, out=result)
    return result


def add(
    op: Op, inputs: list[np.ndarray], tensors: list[Tensor], output: Tensor, rounding: str = EVEN
) -> np.ndarray:
    """Elementwise add of two int8 tensors on different grids (TFLite's integer add)."""
    total = np.zeros(inputs[0].shape, np.int32)
    for codes, tensor, scale in zip(inputs, tensors, op.input_requant, strict=True):
        centred = (codes.astype(np.int32) - np.int32(tensor.zero_point)) << ADD_LEFT_SHIFT
        total += multiply_by_quantized_multiplier(centred, scale.m0, scale.shift, rounding)
    final = op.requant
    scaled = multiply_by_quantized_multiplier(total, final.m0, final.shift, rounding)
    return saturate(scaled + np.int32(output.zero_point), *op.clamp)
