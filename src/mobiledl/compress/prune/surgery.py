"""Surgery: rebuild layers with fewer channels, so a pruned model is smaller *and* faster.

Given a ``DependencyGraph`` and, for each group, the units to keep, ``prune_groups`` replaces
every layer that loses channels by the smaller copy its pruning rule builds (``rules.py``):
sliced weights of convolutions, linear layers, norms and embeddings (Li et al. 2017,
"Pruning Filters for Efficient ConvNets", Fig. 2: removing a filter removes its feature map
and the matching kernels of the next layer), fewer heads of attention, fewer groups of a
grouped convolution. The model's own ``forward`` is untouched, so the result is a plain
dense model that runs in PyTorch, exports to ONNX, and is rebuilt by
``mobiledl.models.load_model`` from the saved shapes.

``mask_channels`` is the same cut without changing shapes: it zeroes every slice that
``prune_groups`` would remove. The pruned model computes exactly what the masked model
computes, which is how the tests check the surgery.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.nn.utils import parametrize

from mobiledl.compress.prune.graph import DependencyGraph
from mobiledl.compress.prune.rules import PruningRule, rule_for
from mobiledl.errors import UserError

Cut = dict[str, dict[str, Tensor]]


def plan_cut(graph: DependencyGraph, keep: Mapping[int, Tensor]) -> Cut:
    """For each layer that loses channels: the kept indices of each of its slots.

    ``keep`` maps a group's index in ``graph.groups`` to the units it keeps; groups not in
    ``keep`` stay whole.
    """
    cut: Cut = {}
    for index, units in keep.items():
        group = graph.groups[index]
        for member in group.real_members:
            positions = group.kept_positions(member, units)
            if len(positions) < len(member.units):
                cut.setdefault(member.slot.module, {})[member.slot.kind] = positions
    return cut


def prune_groups(model: nn.Module, graph: DependencyGraph, keep: Mapping[int, Tensor]) -> nn.Module:
    """Replace the layers that lose channels by smaller copies; returns ``model`` (in place)."""
    for name, kinds in plan_cut(graph, keep).items():
        module = _plain_layer(model, name)
        _replace(model, name, _rule(module, name).shrink(module, kinds))
    for module in model.modules():
        rule = rule_for(module)
        if rule is not None:
            rule.after_surgery(module)
    return model


def mask_channels(
    model: nn.Module, graph: DependencyGraph, keep: Mapping[int, Tensor]
) -> nn.Module:
    """Zero what ``prune_groups`` would remove, keeping every shape; returns ``model``."""
    for name, kinds in plan_cut(graph, keep).items():
        module = _plain_layer(model, name)
        _rule(module, name).mask(module, kinds)
    return model


def _plain_layer(model: nn.Module, name: str) -> nn.Module:
    module = model.get_submodule(name)
    if parametrize.is_parametrized(module):
        raise UserError(
            f"layer '{name}' carries a parametrization (e.g. a pruning mask); "
            "remove it (mobiledl.compress.prune.remove_masks) before channel pruning"
        )
    return module


def _rule(module: nn.Module, name: str) -> PruningRule:
    rule = rule_for(module)
    if rule is None:
        raise UserError(f"layer '{name}' ({type(module).__name__}) has no pruning rule")
    return rule


def _replace(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)
