"""Lean autograd: save for backward only what a gradient needs (Cai et al. 2020, TinyTL, Sec. 3).

TinyTL's observation: the activations kept for backward, not the weights, dominate training
memory, and *which* activations must be kept depends on what is trained. For ``y = W x + b``
the weight gradient needs ``x``, but the bias gradient and the gradient flowing on to ``x``
do not. A ReLU needs only the sign of its output: one bit per element. PyTorch's own autograd
does not exploit this: a convolution saves its input whenever anything around it needs a
gradient, a ReLU keeps its float output, and a batch norm in eval mode keeps its input even when
only its bias trains. ``LeanAutograd`` is a ``TorchFunctionMode`` that, while gradients are
enabled, routes these calls through autograd functions that save exactly what is needed:

- convolution with a frozen weight: saves nothing (the weight is already held), computes the
  input gradient from the weight and the bias gradient from the output gradient;
- ReLU / ReLU6 / hardtanh: a bit-packed 1-bit mask of the pass-through region;
- batch norm in eval mode (frozen statistics) with a frozen scale: a per-channel affine map,
  saves nothing;
- average pooling: saves only the input shape;
- a frozen convolution followed by a batch norm with frozen statistics and scale (and a
  ReLU/ReLU6), e.g. ``ConvBNAct``: one fused op (``fused_layers``). The batch norm is folded
  into the convolution's weight and bias, the activation is applied in place, and a 1-bit mask
  is kept, so the block holds one activation instead of three, as an inference engine would.

Everything else (convolutions with trainable weights, linear layers, whose PyTorch backward
already saves the input only when the weight trains, batch norm in training mode, h-swish,
max pooling, ...) runs unchanged. ``mobiledl.train.ondevice.memory`` predicts the memory of
a step run this way.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from mobiledl.errors import UserError
from mobiledl.train.ondevice.memory import TILE, fusable_conv_bn, segment_bounds

#: ``device="cpu"``: a first import inside a ``torch.device("meta")`` block must not make it meta.
_SHIFTS = torch.arange(8, dtype=torch.uint8, device="cpu")


class BitMask:
    """A 1-bit mask of an activation, 8 elements per byte in the activation's memory order.

    Masks are formed ``TILE`` elements at a time and gradients masked a few samples (about
    ``TILE`` elements) at a time, so no bool or float temporary the size of the activation is
    allocated, whatever the gradient's layout.
    """

    def __init__(self, packed: Tensor, shape: torch.Size, channels_last: bool) -> None:
        self.packed, self.shape, self.channels_last = packed, shape, channels_last

    @staticmethod
    def of(values: Tensor, bounds: tuple[float, float | None]) -> BitMask:
        """Where ``values`` lie strictly inside ``bounds`` (``high=None``: no upper bound)."""
        flat = _memory_order(values)
        packed = torch.empty(math.ceil(flat.numel() / 8), dtype=torch.uint8)
        for start in range(0, flat.numel(), TILE):
            bits = _pack_bits(_clamp_mask(flat[start : start + TILE], bounds))
            packed[start // 8 : start // 8 + len(bits)] = bits
        return BitMask(packed, values.shape, values.dim() == 4 and is_channels_last(values))

    def apply(self, grad: Tensor) -> Tensor:
        """``grad`` where the mask is set, else zero (a new tensor), a few samples at a time."""
        out = torch.empty_like(grad)
        step = max(1, TILE // max(1, grad[0].numel()))
        for first in range(0, len(grad), step):
            out[first : first + step] = self.apply_samples(grad, first, first + step)
        return out

    def apply_samples(self, grad: Tensor, first: int, last: int) -> Tensor:
        """The masked gradient of samples ``first:last`` only."""
        last = min(last, len(grad))
        per_sample = grad[0].numel()
        bits = _unpack_bits(self.packed, first * per_sample, last * per_sample)
        shape = (last - first, *self.shape[1:])
        if self.channels_last:
            n, c, h, w = shape
            mask = bits.view(n, h, w, c).permute(0, 3, 1, 2)
        else:
            mask = bits.view(shape)
        return torch.where(mask, grad[first:last], 0.0)


def _pack_bits(mask: Tensor) -> Tensor:
    """A flat bool tensor as ``ceil(n / 8)`` bytes, element ``i`` at bit ``i % 8``."""
    flat = mask.view(torch.uint8)
    if flat.numel() % 8:
        flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    return (flat.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.uint8)  # disjoint bits: sum == or


def _unpack_bits(packed: Tensor, start: int, stop: int) -> Tensor:
    """Elements ``start:stop`` of the flat bool tensor ``_pack_bits`` packed into ``packed``."""
    first = start // 8
    chunk = packed[first : math.ceil(stop / 8)]
    bits = (chunk.unsqueeze(1) >> _SHIFTS).bitwise_and_(1).view(-1)
    return bits[start - 8 * first : stop - 8 * first].view(torch.bool)


def is_channels_last(tensor: Tensor) -> bool:
    """A 4-D tensor laid out channels-last (and not also plain contiguous)."""
    return not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last)


def _memory_order(tensor: Tensor) -> Tensor:
    """The elements of a contiguous or channels-last tensor as a flat view, in memory order."""
    if tensor.dim() == 4 and is_channels_last(tensor):
        return tensor.permute(0, 2, 3, 1).reshape(-1)
    return tensor.reshape(-1)


class _FrozenWeightConv2d(torch.autograd.Function):
    """Conv2d whose weight does not train: the input is not saved."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, *conv: Any) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.conv, ctx.input_shape = conv, x.shape
        return F.conv2d(x, weight, bias, *conv)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (weight,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_input_grad(ctx.input_shape, weight, grad, *ctx.conv)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, None, grad_bias, *([None] * len(ctx.conv))


class _MaskedClamp(torch.autograd.Function):
    """``clamp(x, low, high)`` (ReLU: ``high=None``) keeping a 1-bit mask for backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, low: float, high: float | None) -> Tensor:
        out = torch.clamp(x, low, high)
        mask = BitMask.of(out, (low, high))
        ctx.save_for_backward(mask.packed)
        ctx.layout = (mask.shape, mask.channels_last)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (packed,) = ctx.saved_tensors
        return BitMask(packed, *ctx.layout).apply(grad), None, None


class _FrozenBatchNorm(torch.autograd.Function):
    """Batch norm with running statistics and a frozen scale: a per-channel affine map."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        mean: Tensor,
        var: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> Tensor:
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight
        ctx.save_for_backward(scale)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (scale,) = ctx.saved_tensors
        channel_dims = [d for d in range(grad.dim()) if d != 1]
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * scale.view(-1, *([1] * (grad.dim() - 2)))
        if ctx.needs_input_grad[4]:
            grad_bias = grad.sum(channel_dims)
        return grad_x, None, None, None, grad_bias, None


class _AvgPool2d(torch.autograd.Function):
    """Average pooling that saves the input's shape and layout, not the input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, *pool: Any) -> Tensor:
        ctx.pool, ctx.input_shape, ctx.channels_last = pool, x.shape, is_channels_last(x)
        return F.avg_pool2d(x, *pool)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        stub = grad.new_empty(()).expand(ctx.input_shape)  # shape only, no storage
        grad_x = _empty(ctx.input_shape, ctx.channels_last, grad)  # written in the input's layout
        torch.ops.aten.avg_pool2d_backward.grad_input(grad, stub, *ctx.pool, grad_input=grad_x)
        return grad_x, *([None] * len(ctx.pool))


class _FrozenConvBNAct(torch.autograd.Function):
    """``clamp(bn(conv(x)))`` with conv and BN frozen: one output, a 1-bit mask for backward.

    Only the BN shift and the conv bias can train; their gradients and the input's come from
    the masked output gradient and the folded weight (recomputed in backward), formed a few
    samples (at most about ``TILE`` elements of output or input gradient) at a time.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        bn_bias: Tensor | None,
        conv_bias: Tensor | None,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        bounds: tuple[float, float | None] | None,
    ) -> Tensor:
        weight, bias, scale = _fold(conv, bn)
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        del weight
        packed = None
        if bounds is not None:
            out.clamp_(*bounds)
            if any(ctx.needs_input_grad):
                packed = BitMask.of(out, bounds).packed
        ctx.save_for_backward(packed, scale)
        ctx.modules, ctx.input_shape = (conv, bn), x.shape
        ctx.layouts = (out.shape, is_channels_last(out), is_channels_last(x))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        packed, scale = ctx.saved_tensors
        conv, bn = ctx.modules
        out_shape, out_channels_last, x_channels_last = ctx.layouts
        mask = None if packed is None else BitMask(packed, out_shape, out_channels_last)
        want_x, want_bias = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:3])
        weight = _fold(conv, bn)[0] if want_x else None
        per_sample = max(grad[0].numel(), math.prod(ctx.input_shape[1:]))
        step = len(grad) if mask is None else max(1, TILE // per_sample)
        grad_x = (
            _empty(ctx.input_shape, x_channels_last, grad) if want_x and step < len(grad) else None
        )
        channel_grad = grad.new_zeros(out_shape[1]) if want_bias else None
        for first in range(0, len(grad), step):
            part = _fused_chunk_backward(ctx, grad, mask, weight, first, first + step, channel_grad)
            if grad_x is None:
                grad_x = part
            elif part is not None:
                grad_x[first : first + step] = part
            del part  # before the next chunk is formed
        grad_bn_bias = channel_grad if ctx.needs_input_grad[1] else None
        grad_conv_bias = channel_grad * scale if ctx.needs_input_grad[2] else None
        return grad_x, grad_bn_bias, grad_conv_bias, None, None, None


def conv_input_grad(
    input_shape: Sequence[int],
    weight: Tensor,
    grad: Tensor,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Tensor:
    """Gradient of ``conv2d(x, weight)`` w.r.t. ``x`` as a transposed convolution.

    ``torch.nn.grad.conv2d_input`` passes an expanded stand-in for ``x``, which oneDNN copies
    into a real input-sized tensor; the transposed convolution allocates only its result.
    """
    stride, padding, dilation = (nn.modules.utils._pair(v) for v in (stride, padding, dilation))
    output_padding = [
        input_shape[2 + i]
        - (
            (grad.shape[2 + i] - 1) * stride[i]
            - 2 * padding[i]
            + dilation[i] * (weight.shape[2 + i] - 1)
            + 1
        )
        for i in range(2)
    ]
    return F.conv_transpose2d(grad, weight, None, stride, padding, output_padding, groups, dilation)


def _fused_chunk_backward(
    ctx: Any,
    grad: Tensor,
    mask: BitMask | None,
    weight: Tensor | None,
    first: int,
    last: int,
    channel_grad: Tensor | None,
) -> Tensor | None:
    """Samples ``first:last`` of a fused op's backward: adds their bias gradient into
    ``channel_grad`` and returns their input gradient (if ``weight`` is given)."""
    last = min(last, len(grad))
    chunk = grad[first:last] if mask is None else mask.apply_samples(grad, first, last)
    if channel_grad is not None:
        channel_grad += chunk.sum((0, 2, 3))
    if weight is None:
        return None
    conv = ctx.modules[0]
    shape = (last - first, *ctx.input_shape[1:])
    conv_args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    return conv_input_grad(shape, weight, chunk, *conv_args)


def _empty(shape: torch.Size, channels_last: bool, like: Tensor) -> Tensor:
    """An uninitialised tensor of ``shape`` with ``like``'s dtype and device."""
    layout = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=layout)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor, Tensor]:
    """Weight and bias of ``bn(conv(.))`` as one convolution, and the BN scale."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), bias, scale


def _clamp_mask(out: Tensor, bounds: tuple[float, float | None]) -> Tensor:
    """Where the gradient passes a clamp to ``bounds``: strictly inside them."""
    low, high = bounds
    mask = out > low
    if high is not None:
        mask &= out < high
    return mask


def _fused_forward(module: nn.Sequential, x: Tensor) -> Tensor:
    """``module``'s forward: fused when ``fusable_conv_bn`` allows it, else unchanged."""
    fused = fusable_conv_bn(module)
    if fused is None:
        return type(module).forward(module, x)
    conv, bn, bounds = fused
    return _FrozenConvBNAct.apply(x, bn.bias, conv.bias, conv, bn, bounds)


@contextlib.contextmanager
def fused_layers(model: nn.Module) -> Iterator[None]:
    """Run frozen conv + BN (+ ReLU/ReLU6) sequences of ``model`` as fused ops while inside."""
    patched = []
    for module in model.modules():
        if isinstance(module, nn.Sequential) and len(module) in (2, 3):
            module.forward = functools.partial(_fused_forward, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _needs_grad(tensor: Any) -> bool:
    return isinstance(tensor, Tensor) and tensor.requires_grad


def _conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Tensor | None:
    if weight.requires_grad or not x.requires_grad or isinstance(padding, str):
        return None
    return _FrozenWeightConv2d.apply(x, weight, bias, stride, padding, dilation, groups)


def _relu(x: Tensor, inplace: bool = False) -> Tensor | None:
    return _MaskedClamp.apply(x, 0.0, None) if x.requires_grad and not inplace else None


def _relu6(x: Tensor, inplace: bool = False) -> Tensor | None:
    return _MaskedClamp.apply(x, 0.0, 6.0) if x.requires_grad and not inplace else None


def _hardtanh(
    x: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> Tensor | None:
    if not x.requires_grad or inplace:
        return None
    return _MaskedClamp.apply(x, float(min_val), float(max_val))


def _batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor | None:
    if training or running_mean is None or running_var is None or _needs_grad(weight):
        return None
    if not (x.requires_grad or _needs_grad(bias)):
        return None
    return _FrozenBatchNorm.apply(x, running_mean, running_var, weight, bias, eps)


def _avg_pool2d(
    x: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor | None:
    if not x.requires_grad:
        return None
    kernel = list(nn.modules.utils._pair(kernel_size))
    strides = kernel if stride is None or stride == [] else list(nn.modules.utils._pair(stride))
    pads = list(nn.modules.utils._pair(padding))
    pool = (kernel, strides, pads, ceil_mode, count_include_pad, divisor_override)
    return _AvgPool2d.apply(x, *pool)


_LEAN: dict[Callable[..., Any], Callable[..., Tensor | None]] = {
    F.conv2d: _conv2d,
    F.relu: _relu,
    torch.relu: _relu,
    F.relu6: _relu6,
    F.hardtanh: _hardtanh,
    F.batch_norm: _batch_norm,
    F.avg_pool2d: _avg_pool2d,
}


class LeanAutograd(TorchFunctionMode):
    """Route convolutions, ReLUs, frozen batch norms and average pools through lean backward
    functions while gradients are enabled (see the module docstring)."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        lean = _LEAN.get(func)
        if lean is not None and torch.is_grad_enabled():
            out = lean(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def gradient_checkpointing(model: nn.Module, segments: int | None) -> Iterator[None]:
    """Run ``model.features`` as ``segments`` checkpointed stages (Chen et al. 2016).

    Only each stage's input is kept during the forward pass; a stage's activations are
    recomputed (under ``LeanAutograd``) when the backward pass reaches it. ``None`` or 0 leaves
    the model unchanged. Batch norms in training mode update their running statistics again
    during the recomputation.
    """
    if not segments:
        yield
        return
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise UserError(
            f"gradient checkpointing needs model.features to be an nn.Sequential of stages; "
            f"{type(model).__name__} has none"
        )
    stages = [features[start:stop] for start, stop in segment_bounds(len(features), segments)]

    def forward(x: Tensor) -> Tensor:
        for stage in stages:
            x = checkpoint(stage, x, use_reentrant=False, context_fn=_lean_recompute)
        return x

    features.forward = forward
    try:
        yield
    finally:
        del features.forward


def _lean_recompute() -> tuple[contextlib.AbstractContextManager, TorchFunctionMode]:
    return contextlib.nullcontext(), LeanAutograd()
