"""Surgery: rebuild layers with fewer channels, so a pruned model is smaller *and* faster.

Given a ``DependencyGraph`` and, for each group, the units to keep, ``prune_groups`` replaces
every affected ``nn.Conv1d/2d/3d``, ``nn.Linear`` and ``nn.BatchNorm1d/2d/3d`` by a new,
smaller module holding copied slices of the old weights (Li et al. 2017, "Pruning Filters for
Efficient ConvNets", Fig. 2: removing a filter removes its feature map and the matching
kernels of the next layer). Depthwise convolutions keep ``groups == channels``. The model's
own ``forward`` is untouched, so the result is a plain dense model that runs in PyTorch,
exports to ONNX, and is rebuilt by ``mobiledl.models.load_model`` from the saved shapes.

``mask_channels`` is the same cut without changing shapes: it zeroes every slice that
``prune_groups`` would remove. The pruned model computes exactly what the masked model
computes, which is how the tests check the surgery.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mobiledl.compress.prune.graph import DependencyGraph, SlotKind
from mobiledl.errors import UserError

Cut = dict[str, dict[SlotKind, Tensor]]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def plan_cut(graph: DependencyGraph, keep: Mapping[int, Tensor]) -> Cut:
    """For each layer that loses channels: the kept indices of each of its slots.

    ``keep`` maps a group's index in ``graph.groups`` to the units it keeps; groups not in
    ``keep`` stay whole.
    """
    cut: Cut = {}
    for index, units in keep.items():
        group = graph.groups[index]
        for member in group.members:
            positions = group.kept_positions(member, units)
            if len(positions) < len(member.units):
                cut.setdefault(member.slot.module, {})[member.slot.kind] = positions
    return cut


def prune_groups(model: nn.Module, graph: DependencyGraph, keep: Mapping[int, Tensor]) -> nn.Module:
    """Replace the layers that lose channels by smaller copies; returns ``model`` (in place)."""
    for name, kinds in plan_cut(graph, keep).items():
        module = _plain_layer(model, name)
        _replace(model, name, _shrunk(module, kinds))
    return model


@torch.no_grad()
def mask_channels(
    model: nn.Module, graph: DependencyGraph, keep: Mapping[int, Tensor]
) -> nn.Module:
    """Zero what ``prune_groups`` would remove, keeping every shape; returns ``model``."""
    for name, kinds in plan_cut(graph, keep).items():
        module = _plain_layer(model, name)
        if module.weight is None:  # a batch norm without affine parameters
            continue
        for kind, positions in kinds.items():
            dim = 1 if kind == "in" else 0
            removed = _complement(positions, module.weight.shape[dim])
            module.weight.index_fill_(dim, removed, 0.0)
            if kind != "in" and module.bias is not None:
                module.bias.index_fill_(0, removed, 0.0)
    return model


def _complement(positions: Tensor, size: int) -> Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[positions] = False
    return torch.nonzero(mask).flatten()


def _plain_layer(model: nn.Module, name: str) -> nn.Module:
    module = model.get_submodule(name)
    if parametrize.is_parametrized(module):
        raise UserError(
            f"layer '{name}' carries a parametrization (e.g. a pruning mask); "
            "remove it (mobiledl.compress.prune.remove_masks) before channel pruning"
        )
    return module


def _shrunk(module: nn.Module, kinds: dict[SlotKind, Tensor]) -> nn.Module:
    """A new layer like ``module`` holding only the kept slices."""
    if isinstance(module, _NORMS):
        return _shrunk_norm(module, kinds["channel"])
    if isinstance(module, _CONVS):
        return _shrunk_conv(module, kinds)
    if isinstance(module, nn.Linear):
        return _shrunk_linear(module, kinds)
    raise UserError(f"cannot shrink layer of type {type(module).__name__}")


def _shrunk_conv(module: nn.Conv2d, kinds: dict[SlotKind, Tensor]) -> nn.Module:
    full_out = torch.arange(module.out_channels)
    full_in = torch.arange(module.in_channels)
    if "channel" in kinds:  # depthwise: input channel c is output channel c
        out_idx = in_idx = kinds["channel"]
        weight = module.weight[out_idx]
        groups = len(out_idx)
    else:
        out_idx, in_idx = kinds.get("out", full_out), kinds.get("in", full_in)
        weight = module.weight[out_idx][:, in_idx]
        groups = 1
    new = type(module)(
        len(in_idx),
        len(out_idx),
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    _copy(new.weight, weight, module.weight)
    if module.bias is not None:
        _copy(new.bias, module.bias[out_idx], module.bias)
    return new.train(module.training)


def _shrunk_linear(module: nn.Linear, kinds: dict[SlotKind, Tensor]) -> nn.Module:
    out_idx = kinds.get("out", torch.arange(module.out_features))
    in_idx = kinds.get("in", torch.arange(module.in_features))
    new = nn.Linear(
        len(in_idx),
        len(out_idx),
        bias=module.bias is not None,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    _copy(new.weight, module.weight[out_idx][:, in_idx], module.weight)
    if module.bias is not None:
        _copy(new.bias, module.bias[out_idx], module.bias)
    return new.train(module.training)


def _shrunk_norm(module: nn.Module, idx: Tensor) -> nn.Module:
    new = type(module)(
        len(idx),
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
        device=_device_of(module),
    )
    if module.affine:
        _copy(new.weight, module.weight[idx], module.weight)
        _copy(new.bias, module.bias[idx], module.bias)
    if module.track_running_stats:
        new.running_mean.copy_(module.running_mean[idx])
        new.running_var.copy_(module.running_var[idx])
        new.num_batches_tracked.copy_(module.num_batches_tracked)
    return new.train(module.training)


def _device_of(module: nn.Module) -> torch.device:
    tensors = [*module.parameters(), *module.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


def _copy(target: nn.Parameter, values: Tensor, source: nn.Parameter) -> None:
    with torch.no_grad():
        target.copy_(values)
    target.requires_grad_(source.requires_grad)


def _replace(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)
