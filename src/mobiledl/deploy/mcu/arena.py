"""Run a ``Graph`` following a ``MemoryPlan`` in one real byte arena.

The arena is one int8 NumPy buffer of ``plan.arena_bytes``; every tensor is a view at its
planned offset, so a plan that lets two live tensors overlap corrupts the data and changes the
output. The kernels are the integer reference's (``mobiledl.deploy.mcu.reference``); an op
never writes its output over an input it is reading (the executor refuses a plan that asks for
it), except an in-place depthwise conv (TinyEngine, Lin et al. 2020), which runs channel by
channel: channel ``c`` into the one-channel temporary, then the temporary to output plane
``c`` of the shared slot, behind the input channels still to be read.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mobiledl.deploy.mcu.graph import Graph, Op, Requant
from mobiledl.deploy.mcu.planner import MemoryPlan
from mobiledl.deploy.mcu.reference import depthwise_acc, execute, requantize

#: What a fresh arena holds, so reading a tensor nobody wrote shows in the output.
POISON = 0x5A


class ArenaExecutor:
    """One arena and the views of ``plan``'s tensors into it."""

    def __init__(self, plan: MemoryPlan, arena: np.ndarray | None = None, base: int = 0) -> None:
        """Run ``plan`` in ``arena`` (default: a fresh one of the plan's size) from ``base``."""
        self.plan = plan
        self.graph = plan.graph
        self.arena = np.full(plan.arena_bytes, POISON, np.int8) if arena is None else arena
        self.base = base

    def view(self, name: str) -> np.ndarray:
        tensor = self.graph.tensors[name]
        offset = self.base + self.plan.offset(name)
        raw = self.arena[offset : offset + tensor.nbytes]
        return raw.view(tensor.dtype).reshape(tensor.shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        """The integer output on one int8 input image ``x`` (shape of the graph input)."""
        self.view(self.graph.input)[...] = np.asarray(x, np.int8).reshape(
            self.graph.tensors[self.graph.input].shape
        )
        self.run_ops()
        return self.view(self.graph.output).copy()

    def run_ops(self) -> None:
        """Every op in the plan's order, on what the arena holds."""
        for op_index in self.plan.order:
            op = self.graph.ops[op_index]
            if op_index in self.plan.in_place:
                self._depthwise_in_place(op_index, op)
            else:
                self._run_op(op)

    def inputs(self, op: Op) -> list[np.ndarray]:
        """What ``op`` reads: its input tensors' views."""
        return [self.view(name) for name in op.inputs]

    def _span(self, name: str) -> tuple[int, int]:
        view = self.view(name)
        start = view.__array_interface__["data"][0] - self.arena.__array_interface__["data"][0]
        last = start + sum((n - 1) * st for n, st in zip(view.shape, view.strides, strict=True))
        return start, last + view.itemsize

    def _run_op(self, op: Op) -> None:
        out_start, out_end = self._span(op.output)
        for name in op.inputs:
            start, end = self._span(name)
            if start < out_end and out_start < end:
                raise RuntimeError(f"plan writes {op.output} over its input {name} ({op.layer})")
        self.view(op.output)[...] = execute(op, self.graph, self.inputs(op))

    def _depthwise_in_place(self, op_index: int, op: Op) -> None:
        """Channel by channel through the one-channel temporary (module docstring)."""
        source, target = self.graph.tensors[op.inputs[0]], self.graph.tensors[op.output]
        base = self.base + self.plan.offset(op.inputs[0])
        if self.base + self.plan.offset(op.output) != base:
            raise RuntimeError(f"in-place {op.layer}: output and input slots differ")
        temp_slot = self.plan.temporary(op_index)
        in_plane, out_plane = math.prod(source.shape[2:]), math.prod(target.shape[2:])
        temp_start = self.base + temp_slot.offset
        temp = self.arena[temp_start : temp_start + out_plane]
        for c in range(source.shape[1]):
            start = base + c * in_plane
            channel = self.arena[start : start + in_plane].reshape(1, 1, *source.shape[2:])
            temp[...] = depthwise_channel(op, self.graph, channel, c).reshape(-1)
            self.arena[base + c * out_plane : base + (c + 1) * out_plane] = temp


def depthwise_channel(op: Op, graph: Graph, channel: np.ndarray, c: int) -> np.ndarray:
    """Output channel ``c`` of depthwise ``op`` from input channel ``c`` (1, 1, H, W)."""
    one = dataclasses.replace(
        op,
        weight=op.weight[c : c + 1],
        bias=op.bias[c : c + 1],
        requant=Requant(op.requant.m0[c : c + 1], op.requant.shift[c : c + 1]),
    )
    zero_point = np.int32(graph.tensors[op.inputs[0]].zero_point)
    acc = depthwise_acc(one, channel.astype(np.int32) - zero_point)
    return requantize(one, acc, graph.tensors[op.output], graph.rounding)


def run_planned(plan: MemoryPlan, x: np.ndarray) -> np.ndarray:
    """``plan``'s graph on a batch of int8 inputs, one image at a time in the arena."""
    executor = ArenaExecutor(plan)
    return np.concatenate([executor.run(image[None]) for image in np.asarray(x, np.int8)])
