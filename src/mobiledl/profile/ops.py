"""Cost of one ATen op: multiply-accumulates (MACs) and pooling operations.

The profiler sees every op at the ATen level (after ``torch.matmul``, ``F.conv2d``,
``x @ w`` and ``nn`` layers are lowered), so one table covers modules and functional code.

**MACs** (the number papers report and fvcore / torchprofile count for these ops):

- convolution, including grouped, depthwise and transposed:
  ``Cout * Hout * Wout * (Cin / groups) * kh * kw`` per image (transposed: per *input*
  position, ``Cin * Hin * Win * (Cout / groups) * kh * kw``). Bias adds are not counted.
- matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``addbmm``, ``mv``, ``addmv``,
  ``dot``; ``nn.Linear``, ``torch.matmul``, ``@`` and ``einsum`` lower to these):
  output elements times the contracted dimension, i.e. ``in * out`` per row of a linear.
- fused recurrent layers (``nn.LSTM`` on CPU runs one ``mkldnn_rnn_layer`` per layer and
  direction): ``steps * batch * gates * hidden * (input + hidden)``, the matrix products of
  every gate; ``nn.GRU`` and ``nn.RNN`` lower to ``addmm`` / ``mm`` and are counted as such.
- fused scaled-dot-product attention kernels: ``QK^T`` plus ``AV``,
  ``batch * heads * Lq * Lk * (E + Ev)``. (Under the profiler PyTorch usually takes the
  math path, which lowers to ``bmm`` and is counted as such.)

**Pooling operations** are kept apart in ``pool_ops`` because fvcore and torchprofile do
not agree on them (fvcore counts adaptive-average-pool input elements, torchprofile counts
output elements and ignores max pooling), so adding them to ``macs`` would break agreement
with both. One pooling operation is one add or compare per element of a window:

- max / average pooling: ``output elements * kernel elements``;
- adaptive max / average pooling: the exact sum of window sizes (for divisible sizes this
  is the number of input elements);
- ``mean`` (a global average pool is lowered to it, as is ``x.mean((2, 3))``): one add per
  input element.

Everything else (batch norm, activations, element-wise adds and multiplies, softmax) costs
nothing in both counts. So does an embedding lookup (``nn.Embedding``, ``aten.embedding``):
it gathers rows of its weight and multiplies nothing (torchprofile counts it as free too);
its parameters are counted like any layer's. 1-D convolutions (``nn.Conv1d``) follow the
convolution rule above with one spatial dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

aten = torch.ops.aten

Counter = Callable[[tuple[Any, ...], Any], int]


def _first_tensor(value: Any) -> torch.Tensor:
    """The tensor itself, or the first element of a tuple/list of outputs."""
    if isinstance(value, torch.Tensor):
        return value
    return value[0]


def _conv_macs(args: tuple[Any, ...], out: Any) -> int:
    """``convolution(input, weight, bias, stride, padding, dilation, transposed, ...)``."""
    x, weight = args[0], args[1]
    transposed = bool(args[6]) if len(args) > 6 else False
    per_position = weight.shape[1] * math.prod(weight.shape[2:])
    positions = x.numel() if transposed else _first_tensor(out).numel()
    return positions * per_position


def _contracted_macs(inner: Callable[[tuple[Any, ...]], int]) -> Counter:
    """A matrix-product counter: output elements times the contracted size ``inner``."""

    def count(args: tuple[Any, ...], out: Any) -> int:
        return _first_tensor(out).numel() * inner(args)

    return count


def _attention_macs(args: tuple[Any, ...], out: Any) -> int:
    """Fused attention ``(q, k, v, ...)``: ``QK^T`` and ``AV``."""
    q, k, v = args[0], args[1], args[2]
    return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _rnn_layer_macs(args: tuple[Any, ...], out: Any) -> int:
    """One fused recurrent layer ``(input (T, B, in), w_ih (G*H, in), w_hh (G*H, H), ...)``:
    the input and hidden products of every gate at every step, ``T B G H (in + H)``."""
    x, w_ih, w_hh = args[0], args[1], args[2]
    return x.shape[0] * x.shape[1] * w_ih.shape[0] * (w_ih.shape[1] + w_hh.shape[1])


MAC_COUNTERS: dict[Any, Counter] = {
    aten.convolution: _conv_macs,
    aten._convolution: _conv_macs,
    aten.convolution_overrideable: _conv_macs,
    aten.mm: _contracted_macs(lambda a: a[0].shape[-1]),
    aten.bmm: _contracted_macs(lambda a: a[0].shape[-1]),
    aten.matmul: _contracted_macs(lambda a: a[0].shape[-1]),
    aten.mv: _contracted_macs(lambda a: a[0].shape[-1]),
    aten.dot: _contracted_macs(lambda a: a[0].shape[-1]),
    aten.vdot: _contracted_macs(lambda a: a[0].shape[-1]),
    aten.linear: _contracted_macs(lambda a: a[0].shape[-1]),
    aten.addmm: _contracted_macs(lambda a: a[1].shape[-1]),
    aten._addmm_activation: _contracted_macs(lambda a: a[1].shape[-1]),
    aten.baddbmm: _contracted_macs(lambda a: a[1].shape[-1]),
    aten.addmv: _contracted_macs(lambda a: a[1].shape[-1]),
    aten.addbmm: _contracted_macs(lambda a: a[1].shape[0] * a[1].shape[-1]),
    aten.mkldnn_rnn_layer: _rnn_layer_macs,
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_macs,
    aten._scaled_dot_product_flash_attention: _attention_macs,
    aten._scaled_dot_product_efficient_attention: _attention_macs,
    aten._scaled_dot_product_cudnn_attention: _attention_macs,
    aten._scaled_dot_product_fused_attention_overrideable: _attention_macs,
    aten.mkldnn_rnn_layer: _rnn_layer_macs,
}


def _expand(values: Sequence[int] | int, ndim: int) -> list[int]:
    """A kernel size given as one int, one-element list or full list, as ``ndim`` ints."""
    if isinstance(values, int):
        return [values] * ndim
    values = list(values)
    return values * ndim if len(values) == 1 else values


def _window_pool(ndim: int) -> Counter:
    """Max/average pooling ``(input, kernel_size, ...)``: output elements x kernel size."""

    def count(args: tuple[Any, ...], out: Any) -> int:
        return _first_tensor(out).numel() * math.prod(_expand(args[1], ndim))

    return count


def _adaptive_windows(in_size: int, out_size: int) -> int:
    """Total window length of adaptive pooling along one dimension (PyTorch's bounds)."""
    total = 0
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        total += end - start
    return total


def _adaptive_pool(ndim: int) -> Counter:
    """Adaptive pooling ``(input, output_size)``: the exact sum of window sizes."""

    def count(args: tuple[Any, ...], out: Any) -> int:
        x, y = args[0], _first_tensor(out)
        leading = math.prod(y.shape[:-ndim])
        windows = math.prod(
            _adaptive_windows(i, o) for i, o in zip(x.shape[-ndim:], y.shape[-ndim:], strict=True)
        )
        return leading * windows

    return count


def _mean_ops(args: tuple[Any, ...], out: Any) -> int:
    """``mean``: one add per input element."""
    return args[0].numel()


POOL_COUNTERS: dict[Any, Counter] = {
    aten.max_pool1d: _window_pool(1),
    aten.max_pool1d_with_indices: _window_pool(1),
    aten.max_pool2d: _window_pool(2),
    aten.max_pool2d_with_indices: _window_pool(2),
    aten.max_pool3d: _window_pool(3),
    aten.max_pool3d_with_indices: _window_pool(3),
    aten.avg_pool1d: _window_pool(1),
    aten.avg_pool2d: _window_pool(2),
    aten.avg_pool3d: _window_pool(3),
    aten._adaptive_avg_pool2d: _adaptive_pool(2),
    aten._adaptive_avg_pool3d: _adaptive_pool(3),
    aten.adaptive_max_pool2d: _adaptive_pool(2),
    aten.adaptive_max_pool3d: _adaptive_pool(3),
    aten.mean: _mean_ops,
}


def op_cost(func: Any, args: tuple[Any, ...], out: Any) -> tuple[int, int]:
    """``(macs, pool_ops)`` of one ATen op overload ``func`` called on ``args``."""
    packet = getattr(func, "overloadpacket", func)
    mac_counter = MAC_COUNTERS.get(packet)
    if mac_counter is not None:
        return mac_counter(args, out), 0
    pool_counter = POOL_COUNTERS.get(packet)
    if pool_counter is not None:
        return 0, pool_counter(args, out)
    return 0, 0
