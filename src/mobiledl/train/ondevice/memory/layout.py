"""The trainer's conventions the memory model encodes: optimizer state per parameter, the
channels-last layout, batch-norm modes, fused frozen conv + BN blocks, checkpoint segments.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from mobiledl.errors import UserError

OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2}

#: Adam's update allocates ``sqrt(v)`` and its quotient for one parameter at a time.
OPTIMIZER_WORKSPACE = {"sgd": 0, "momentum": 0, "adam": 2}

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Elements per tile: the lean ops form 1-bit masks and masked gradients a tile at a time.
TILE = 1 << 16


def training_layout(tensor: Tensor) -> Tensor:
    """A 4-D batch in the channels-last layout the trainer uses (other tensors unchanged).

    oneDNN convolutions on NCHW tensors reorder activations into a blocked layout, holding
    activation-sized copies; on channels-last (NHWC, the layout of mobile engines) they
    allocate nothing but their output.
    """
    if tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def training_batch(tensor: Tensor) -> Tensor:
    """One batch as the trainer holds it: a copy in its own storage, in ``training_layout``.

    The data loader collates each batch into fresh buffers, so a step holds one batch, never
    the dataset a slice such as ``x_train[:64]`` is a view of (its storage is the whole split).
    """
    layout = torch.channels_last if tensor.dim() == 4 else torch.contiguous_format
    return tensor.clone(memory_format=layout)


def segment_bounds(length: int, segments: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into ``segments`` contiguous, near-equal ``(start, stop)`` runs."""
    if segments < 1:
        raise UserError(f"checkpoint segments must be >= 1; got {segments}")
    segments = min(segments, length)
    cuts = [round(i * length / segments) for i in range(segments + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(segments)]


@contextlib.contextmanager
def training_modes(model: nn.Module) -> Iterator[None]:
    """The trainer's modes: ``model.train()``, except batch norms whose scale is frozen.

    A batch norm with a frozen (or no) scale keeps its running statistics (eval mode): on a
    device the batch is small, and TinyTL and MCUNetV3 keep the pretrained statistics. Every
    module's flag is restored afterwards.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(module.weight is not None and module.weight.requires_grad)
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


FusedConv = tuple[nn.Conv2d, nn.BatchNorm2d, tuple[float, float | None] | None]


def clamp_bounds(module: nn.Module) -> tuple[float, float | None] | None:
    """``(low, high)`` of a ReLU (``high=None``), ReLU6 or hardtanh; ``None`` for others."""
    if type(module) is nn.ReLU:
        return (0.0, None)
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    return None


def fusable_conv_bn(module: nn.Module) -> FusedConv | None:
    """``(conv, bn, clamp)`` if the trainer runs ``module`` as one fused op, else ``None``.

    That is a ``Sequential`` of a convolution with a frozen weight, a batch norm with running
    statistics and a frozen (or no) scale, and optionally a ReLU / ReLU6 / hardtanh: batch norm
    folds into the convolution and the activation is applied in place, so the block holds one
    output, as in an inference engine (``LeanAutograd`` documents the fused op).
    """
    children = list(module.children()) if isinstance(module, nn.Sequential) else []
    if len(children) not in (2, 3):
        return None
    conv, bn = children[0], children[1]
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return None
    frozen = not conv.weight.requires_grad and not (
        bn.weight is not None and bn.weight.requires_grad
    )
    plain = conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    if not (frozen and plain and not bn.training and bn.running_var is not None):
        return None
    bounds = clamp_bounds(children[2]) if len(children) == 3 else None
    if len(children) == 3 and bounds is None:
        return None
    return conv, bn, bounds
