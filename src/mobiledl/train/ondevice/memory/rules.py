"""The lean engine's memory rules: what each op keeps for backward and the workspaces it needs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from mobiledl.train.ondevice.memory.layout import TILE, FusedConv
from mobiledl.train.ondevice.memory.results import ModuleMemory
from mobiledl.train.ondevice.memory.trace import TensorArg, TracedOp

if TYPE_CHECKING:
    from mobiledl.train.ondevice.memory.simulation import StepSimulation


@dataclass
class OpMemory:
    """What one op keeps for backward and the temporaries it needs."""

    saved: list[int] = field(default_factory=list)
    extra_saved: int = 0
    forward_workspace: int = 0
    backward_workspace: int = 0


_NO_SAVE = {
    "add", "add_", "sub", "neg", "cat", "stack", "mean", "sum", "view", "_unsafe_view",
    "reshape", "_reshape_alias", "transpose", "permute", "t", "split", "split_with_sizes",
    "chunk", "unbind", "narrow", "slice", "select", "unsqueeze", "squeeze", "expand",
    "alias", "detach", "clone", "contiguous", "flatten", "constant_pad_nd", "_to_copy",
    "upsample_nearest2d", "upsample_bilinear2d", "avg_pool2d", "copy_", "lift_fresh",
    "as_strided", "as_strided_",
}  # fmt: skip
NOT_DIFFERENTIABLE = {
    "empty_like", "zeros_like", "ones_like", "empty", "zeros", "ones", "full", "bernoulli_",
    "new_zeros", "new_empty", "new_ones", "arange", "scalar_tensor", "argmax", "eq", "ne",
    "gt", "lt", "ge", "le", "rand_like", "randn_like",
}  # fmt: skip
_SAVE_INPUT = {"hardswish", "hardsigmoid", "silu", "gelu", "_adaptive_avg_pool2d", "elu"}
_SAVE_OUTPUT = {"_log_softmax", "_softmax", "sigmoid", "tanh", "exp"}


class LeanRules:
    """The lean-engine rules, evaluated for the current trainability."""

    def __init__(self, sim: StepSimulation) -> None:
        self.sim = sim

    def __call__(self, op: TracedOp) -> OpMemory:
        if op.module is not None:
            return self._module(op)
        if op.name in _NO_SAVE or op.name in NOT_DIFFERENTIABLE:
            return OpMemory()
        handler = getattr(self, f"_{op.name.strip('_')}", None)
        if handler is not None:
            return handler(op)
        if op.name in _SAVE_INPUT:
            return OpMemory(saved=self._acts(op.tensor_args[:1]))
        if op.name in _SAVE_OUTPUT:
            return OpMemory(saved=op.outputs[:1])
        self.sim.unknown.add(op.name)
        return OpMemory(saved=self._acts(op.tensor_args))

    def _acts(self, args: list[TensorArg]) -> list[int]:
        return [a.act for a in args if a.kind == "act" and self.sim.acts[a.act].is_float]

    def _module(self, op: TracedOp) -> OpMemory:
        x = op.tensor_args[0]
        if op.fused is not None:
            report = self._fused(op.fused, op)
        else:
            report = op.module.memory_for_training(x.shape, op.out_shape)  # type: ignore[union-attr]
        saved = [x.act] if report.saves_input and x.kind == "act" else []
        return OpMemory(
            saved, report.extra_saved, report.forward_workspace, report.backward_workspace
        )

    def _fused(self, fused: FusedConv, op: TracedOp) -> ModuleMemory:
        """Frozen conv + BN (+ clamp): the folded weight exists while it runs; with a gradient
        to pass, a packed mask is kept and backward masks a few samples at a time."""
        conv, _, bounds = fused
        x_shape = op.tensor_args[0].shape
        folded = 4 * conv.weight.numel()
        folded += conv_workspace(
            x_shape, conv.weight.shape, conv.stride, conv.dilation, conv.groups, op.out_shape
        )
        if not self.sim.in_graph[op.index]:
            return ModuleMemory(forward_workspace=folded)
        if bounds is None:
            return ModuleMemory(forward_workspace=folded, backward_workspace=folded)
        numel, batch = math.prod(op.out_shape), op.out_shape[0]
        samples = chunk_samples(max(numel, op.tensor_args[0].numel), batch)
        in_chunk = samples * op.tensor_args[0].numel // batch
        backward = folded + 5 * samples * numel // batch
        if samples < batch:  # each chunk's input gradient is formed, then copied into place
            backward += 4 * in_chunk
        return ModuleMemory(
            extra_saved=math.ceil(numel / 8),
            forward_workspace=max(folded, self._mask_workspace(numel, bounds)),
            backward_workspace=backward,
        )

    @staticmethod
    def _mask_workspace(numel: int, bounds: tuple[float, float | None]) -> int:
        """Bool tiles (one per comparison), their shifted bytes and the packed tile."""
        tile = min(numel, TILE)
        return (1 if bounds[1] is None else 2) * tile + tile + tile // 8

    def _convolution(self, op: TracedOp) -> OpMemory:
        """oneDNN reorders the weight into its blocked layout (forward), forms a trainable
        weight's gradient in that layout before converting it, and for a frozen one reorders
        it again for the transposed convolution giving the input gradient."""
        x, weight = op.args[0], op.args[1]
        stride, dilation, groups = op.args[3], op.args[5], op.args[8]
        reorder = conv_workspace(x.shape, weight.shape, stride, dilation, groups, op.out_shape)
        if not self.sim.needs_grad(weight):
            return OpMemory(forward_workspace=reorder, backward_workspace=reorder)
        # a kernel covering the whole input: oneDNN's algorithm for it needs twice as much
        covering = len(x.shape) == 4 and any(
            k >= size for k, size in zip(weight.shape[2:], x.shape[2:], strict=True)
        )
        gradient = (4 if covering else 2) * max(reorder, 4 * weight.numel)
        return OpMemory(self._acts([x]), forward_workspace=reorder, backward_workspace=gradient)

    def _addmm(self, op: TracedOp) -> OpMemory:
        return self._matmul(op.args[1], op.args[2])

    def _mm(self, op: TracedOp) -> OpMemory:
        return self._matmul(op.args[0], op.args[1])

    def _bmm(self, op: TracedOp) -> OpMemory:
        return self._matmul(op.args[0], op.args[1])

    def _matmul(self, left: TensorArg, right: TensorArg) -> OpMemory:
        saved = self._acts([left]) if self.sim.needs_grad(right) else []
        if self.sim.needs_grad(left):
            saved += self._acts([right])
        return OpMemory(saved=saved)

    def _mul(self, op: TracedOp) -> OpMemory:
        left, right = op.args[0], op.args[1]
        if not isinstance(right, TensorArg):  # times a scalar
            return OpMemory()
        saved = self._acts([right]) if self.sim.needs_grad(left) else []
        if self.sim.needs_grad(right):
            saved += self._acts([left])
        out_numel = max(left.numel, right.numel)
        broadcast = any(
            self.sim.needs_grad(a) and a.numel < out_numel for a in (left, right)
        )  # the gradient is formed at full size, then summed down
        return OpMemory(saved=saved, backward_workspace=4 * out_numel if broadcast else 0)

    def _relu(self, op: TracedOp) -> OpMemory:
        return self._mask(op, comparisons=1)

    def _hardtanh(self, op: TracedOp) -> OpMemory:
        return self._mask(op, comparisons=2)

    def _mask(self, op: TracedOp, comparisons: int) -> OpMemory:
        """``LeanAutograd``'s clamp: a packed bit mask, formed and applied a tile at a time."""
        x = op.args[0]
        if not self.sim.needs_grad(x):
            return OpMemory()
        tile = min(x.numel, TILE)
        batch = x.shape[0] if x.shape else 1
        chunk = chunk_samples(x.numel, batch) * x.numel // batch
        return OpMemory(
            extra_saved=math.ceil(x.numel / 8),
            forward_workspace=comparisons * tile + tile + tile // 8,
            backward_workspace=5 * chunk,
        )

    def _native_batch_norm(self, op: TracedOp) -> OpMemory:
        x, weight, training = op.args[0], op.args[1], op.args[5]
        channels = x.shape[1] if len(x.shape) > 1 else 1
        if training:  # its backward kernel holds one input-sized temporary
            saved = self._acts([x])
            return OpMemory(saved, extra_saved=2 * 4 * channels, backward_workspace=4 * x.numel)
        return OpMemory(saved=self._acts([x]) if self.sim.needs_grad(weight) else [])

    def _native_group_norm(self, op: TracedOp) -> OpMemory:
        x, groups = op.args[0], op.args[6]
        return OpMemory(saved=self._acts([x]), extra_saved=2 * 4 * x.shape[0] * groups)

    def _max_pool2d_with_indices(self, op: TracedOp) -> OpMemory:
        return OpMemory(saved=self._acts(op.tensor_args[:1]) + op.outputs[1:2])

    def _nll_loss_forward(self, op: TracedOp) -> OpMemory:
        return OpMemory(saved=self._acts(op.tensor_args[:1]) + op.outputs[1:2])

    def _div(self, op: TracedOp) -> OpMemory:
        left, right = op.args[0], op.args[1]
        if not isinstance(right, TensorArg):
            return OpMemory()
        saved = (
            self._acts([right]) if self.sim.needs_grad(left) or self.sim.needs_grad(right) else []
        )
        return OpMemory(saved=saved + (self._acts([left]) if self.sim.needs_grad(right) else []))


def uses_onednn(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> bool:
    """Whether PyTorch's CPU convolution dispatches a float conv to oneDNN (ATen's
    ``ConvParams::use_mkldnn``): single-threaded unstrided 1x1 convolutions on small batches
    and tiny single-sample inputs go to the native kernels instead."""
    kernel_1x1 = tuple(weight_shape[-2:]) == (1, 1)
    unusual = any(s != 1 for s in stride) or any(d != 1 for d in dilation)
    onednn_faster = unusual or x_shape[0] >= 16 or not kernel_1x1 or torch.get_num_threads() > 1
    not_tiny = (
        groups > 1
        or (weight_shape[-1] > 3 and weight_shape[-2] > 3)
        or x_shape[0] > 1
        or math.prod(x_shape) > 20480
    )
    return onednn_faster and not_tiny


def conv_workspace(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_shape: Sequence[int],
) -> int:
    """Temporaries of a forward convolution: oneDNN's reordered copy of the weight, or the
    native kernel's im2col columns for one sample (none for a 1x1 convolution)."""
    if uses_onednn(x_shape, weight_shape, stride, dilation, groups):
        return 4 * math.prod(weight_shape)
    if tuple(weight_shape[-2:]) == (1, 1):
        return 0
    return 4 * math.prod(weight_shape[1:]) * groups * math.prod(out_shape[2:])


def chunk_samples(numel: int, batch: int) -> int:
    """Samples per chunk when masking a gradient about ``TILE`` elements at a time."""
    return min(batch, max(1, TILE * batch // max(1, numel)))
