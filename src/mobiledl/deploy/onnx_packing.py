"""Small ONNX files for low-bit weights: codes bit-packed into bytes, unpacked by graph ops
that ONNX Runtime folds away when it loads the file.

k-means weight sharing (Han et al. ICLR 2016), binary (Courbariaux et al. 2015; Rastegari
et al. 2016) and ternary weights (Li et al. 2016; Zhu et al. 2017) leave each weight one of a
few values, yet the exporter writes every weight as 4 bytes. ``pack_weights`` stores such a
float weight as a float32 codebook (one per tensor, or one per output channel when that is
smaller: binary weights have two values per channel) and one ``b``-bit code per weight
(``b`` in 1, 2, 4, 8), ``8 / b`` codes per byte. Opset 17 has no sub-byte tensor type (INT4
came with opset 21), so the bytes are unpacked in the graph with standard operators:

    planes = Mod(BitShift(packed[1, L], [[0], [b], [2b], ...], RIGHT), 2**b)   # (8/b, L)
    codes  = Reshape(Slice(Reshape(planes, [-1]), 0, count), weight shape)
    weight = Gather(codebook, Cast(codes, int32) [+ row * width])

Every input of these nodes is an initializer, so ONNX Runtime's constant folding evaluates
them once at session creation: the graph it runs holds the same float weights as the
unpacked export, with the same kernels and speed, and the outputs are identical (the
packing is lossless). Any engine that reads ONNX can run the file.

An int8 graph's weights are int8 codes that ``DequantizeLinear`` reads; a grid of fewer than
8 bits (QAT or mixed precision at 2-7 bits, Jacob et al. 2018; Esser et al. 2020) uses only
``2**b`` of them, so they are packed the same way (an int8 codebook), and ONNX Runtime folds
the unpacking before it fuses the dequantized weight into its integer kernels (QLinearConv).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobiledl.models.packed import MAX_PALETTE, row_palettes

#: Metadata key of a packed file: the weight elements its packed weights unpack to.
METADATA_KEY = "mobiledl.packed_weight_elements"
#: Prefix of every tensor and node the packing adds.
PREFIX = "packed/"
#: Smallest weight worth packing (its unpacking nodes cost a hundred bytes or so).
MIN_ELEMENTS = 256
#: Code widths a byte holds a whole number of.
CODE_BITS = (1, 2, 4, 8)
_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)


def pack_weights(model: onnx.ModelProto) -> int:
    """Store every weight of ``model`` with at most ``MAX_PALETTE`` distinct values (per tensor
    or per output channel) as bit-packed codes and a codebook, in place; returns the number of
    weights packed. A weight is left as it is where packing would not save bytes."""
    graph = model.graph
    if any(prop.key == METADATA_KEY for prop in model.metadata_props):
        return 0  # packed already
    chosen = _weights_to_pack(graph)
    build = _Builder(_all_names(graph))
    elements = 0
    for initializer in list(graph.initializer):
        if initializer.name not in chosen:
            continue
        plan = _smallest_packing(numpy_helper.to_array(initializer))
        if plan is None:
            continue
        graph.initializer.remove(initializer)
        _unpack(initializer.name, plan, build)
        elements += plan.codes.size
    if build.nodes:
        rest = list(graph.node)
        del graph.node[:]
        graph.node.extend(build.nodes + rest)
        graph.initializer.extend(build.tensors)
        props = {prop.key: prop.value for prop in model.metadata_props}
        helper.set_model_props(model, {**props, METADATA_KEY: str(elements)})
    return len([node for node in build.nodes if node.op_type == "Gather"])


def packed_weight_elements(model: onnx.ModelProto) -> tuple[int, str | None]:
    """The weight elements the packed weights of ``model`` unpack to, and the name prefix of
    the initializers that hold them (``None`` when nothing is packed), so that a parameter
    count counts each weight once."""
    entry = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if entry is None or not entry.isdigit():
        return 0, None
    return int(entry), PREFIX


class _Packing:
    """One weight as codes into a codebook: ``table`` is ``(rows, width)`` (one row for a
    per-tensor codebook), ``codes`` flat in weight order."""

    def __init__(self, shape: tuple[int, ...], table: np.ndarray, codes: np.ndarray) -> None:
        self.shape = shape
        self.table = table  # the weight's dtype: float32, or int8 / uint8 codes
        self.codes = codes.astype(np.uint8)
        width = self.table.shape[1]
        self.bits = next(b for b in CODE_BITS if width <= 1 << b)

    @property
    def per_row(self) -> bool:
        return self.table.shape[0] > 1

    def nbytes(self) -> int:
        """Bytes of the codebook, the packed codes and (per row) the row offsets."""
        offsets = 4 * self.table.shape[0] if self.per_row else 0
        return self.table.nbytes + self.packed_length + offsets

    @property
    def packed_length(self) -> int:
        """Bytes the packed codes take."""
        return math.ceil(self.codes.size / (8 // self.bits))

    def packed_bytes(self) -> np.ndarray:
        """The codes ``8 / bits`` to a byte: plane ``j`` (the ``j``-th slice of the flat codes,
        zero-padded) in bits ``bits * j`` and up."""
        per_byte, length = 8 // self.bits, self.packed_length
        planes = np.zeros(per_byte * length, dtype=np.uint8)
        planes[: self.codes.size] = self.codes
        planes = planes.reshape(per_byte, length).astype(np.uint16)
        shifts = (self.bits * np.arange(per_byte, dtype=np.uint16))[:, None]
        return (planes << shifts).sum(axis=0).astype(np.uint8)


def _weights_to_pack(graph: onnx.GraphProto) -> set[str]:
    """Initializers worth trying: float weights (not the scales or inputs of quantize /
    dequantize steps) and the int8 / uint8 weights ``DequantizeLinear`` reads."""
    qdq_inputs = {name for node in graph.node if node.op_type in _QDQ_OPS for name in node.input}
    dequantized = {node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    chosen = set()
    for initializer in graph.initializer:
        if math.prod(initializer.dims) < MIN_ELEMENTS:
            continue
        if initializer.data_location == TensorProto.EXTERNAL:
            continue
        float_weight = initializer.data_type == TensorProto.FLOAT and (
            initializer.name not in qdq_inputs
        )
        int8_weight = initializer.data_type in _INT8_TYPES and initializer.name in dequantized
        if float_weight or int8_weight:
            chosen.add(initializer.name)
    return chosen


def _smallest_packing(values: np.ndarray) -> _Packing | None:
    """The smaller of the per-tensor and per-row codebooks of ``values``, if either holds
    every value exactly and takes fewer bytes than the float weight."""
    if not np.isfinite(values).all():
        return None
    options = []
    palette, codes = np.unique(values, return_inverse=True)
    if palette.size <= MAX_PALETTE:
        options.append(_Packing(values.shape, palette[None, :], codes.reshape(-1)))
    if values.ndim >= 2 and values.shape[0] > 1:
        rows = row_palettes(values.reshape(values.shape[0], -1))
        if rows is not None:
            options.append(_Packing(values.shape, *rows))
    best = min(options, key=_Packing.nbytes, default=None)
    return best if best is not None and best.nbytes() < values.nbytes else None


def _unpack(name: str, plan: _Packing, build: _Builder) -> None:
    """Add the initializers and nodes that rebuild weight ``name`` from ``plan``."""
    codes = build.constant(plan.packed_bytes(), "codes")
    per_byte = 8 // plan.bits
    if per_byte > 1:
        shifts = np.arange(0, 8, plan.bits, dtype=np.uint8).reshape(per_byte, 1)
        planes = build.node("BitShift", [codes, build.shared(shifts)], direction="RIGHT")
        planes = build.node("Mod", [planes, build.shared(np.array([1 << plan.bits], np.uint8))])
        codes = build.node("Reshape", [planes, build.shared(np.array([-1], np.int64))])
        if per_byte * plan.packed_length != plan.codes.size:
            start, end = np.array([0], np.int64), np.array([plan.codes.size], np.int64)
            codes = build.node("Slice", [codes, build.shared(start), build.shared(end)])
    shape = build.shared(np.array(plan.shape, np.int64))
    index = build.node("Cast", [build.node("Reshape", [codes, shape])], to=TensorProto.INT32)
    if plan.per_row:
        rows, width = plan.table.shape
        offsets = np.arange(rows, dtype=np.int32) * width
        view = offsets.reshape((rows,) + (1,) * (len(plan.shape) - 1))
        index = build.node("Add", [index, build.shared(view)])
    codebook = build.constant(plan.table.reshape(-1), "codebook")
    build.node("Gather", [codebook, index], output=name, axis=0)


class _Builder:
    """The initializers and nodes the packing adds, under fresh names starting with
    ``PREFIX`` that clash with nothing in the graph; constants several weights need (shifts,
    shapes, row offsets) are stored once."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.nodes: list[onnx.NodeProto] = []
        self.tensors: list[TensorProto] = []
        self._shared: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    def constant(self, array: np.ndarray, label: str) -> str:
        self.tensors.append(numpy_helper.from_array(array, self._fresh(label)))
        return self.tensors[-1].name

    def shared(self, array: np.ndarray) -> str:
        """A constant stored once however many weights use it."""
        key = (str(array.dtype), array.shape, array.tobytes())
        if key not in self._shared:
            self._shared[key] = self.constant(array, "c")
        return self._shared[key]

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes: Any) -> str:
        name = self._fresh(op)
        output = output or name
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
        return output

    def _fresh(self, label: str) -> str:
        index = len(self.taken)
        while f"{PREFIX}{label}{index}" in self.taken:
            index += 1
        name = f"{PREFIX}{label}{index}"
        self.taken.add(name)
        return name


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    for node in graph.node:
        names |= {*node.input, *node.output, node.name}
    return names
