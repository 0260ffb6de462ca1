"""Dependency graph of coupled channels, the map that physical channel pruning needs.

Removing output channel ``c`` of a convolution also removes channel ``c`` of the batch norm
after it, input channel ``c`` of every layer that reads it, and, through a residual addition,
channel ``c`` of every other branch meeting at that addition (Li et al. 2017, "Pruning Filters
for Efficient ConvNets", Sec. 3.3; the grouping is the "DepGraph" of Fang et al. 2023).

``build_dependency_graph(model, example_input)`` traces the model with ``torch.fx`` and runs it
once. Alongside every intermediate tensor it propagates a *label tensor* of the same shape
whose entries name the channel each value comes from: a fresh id per output channel of every
convolution and linear layer, the same ids through batch norms, depthwise convolutions,
activations and pooling. Shape operations (``view``, ``flatten``, ``transpose``, ``chunk``,
``cat``, indexing) are applied to the label tensor itself, so concatenation offsets, the H×W
features each channel becomes after ``flatten`` and the permutation of a channel shuffle come
out exactly. Two rules turn labels into constraints, kept in a union-find:

- an element-wise op (``+``, ``*``, ...) unifies the ids meeting at each position (residual
  additions, the squeeze-excite gate);
- every tensor has at most one *pruned dim*, whose size shrinks with pruning, and all ids in a
  slice across it are unified. A ``reshape`` that splits the channel dim into a constant and a
  computed factor (channel shuffle) thereby ties channel ``k * C/g + i`` for every ``k``;
  ``chunk`` ties channel ``i`` of every piece, so the pruned model still splits evenly.

What a *layer* does to channels is its pruning rule (``rules.py``): convolutions, linear
layers, norms, embeddings, attention and any layer a user registers a rule for; the tracer
treats every layer with a rule as one call. Slicing the channel dim with constant bounds
(``torch.cat([a, b], 1)[:, :k]``, GhostNet-style) keeps the channels before the slice's end
in place, or, when nothing else reads the channels after it, removes those instead (they
are dead).

The result is a list of ``ChannelGroup``: each unit of a group is one set of coupled channels,
and each member (a layer, a dim, and for every index of that dim its unit) is what surgery
slices. The model's input channels and its outputs are never prunable; channels a layer's
math needs whole (a LayerNorm's) are *held*. A pattern the analysis cannot map (an op that
mixes channels such as ``x.mean(1)``, a ``view`` to a hard-coded size, a parameter used
directly in ``forward``, a layer type without a rule) freezes the channels it touches and is
listed in one ``warnings.warn`` naming the node or layer, or, with ``strict``, raises a
``UserError``; the model is never left broken.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.compress.prune.rules import (
    NONE,
    ChannelLabels,
    LayerCall,
    Slot,
    UnsupportedPattern,
    broadcast_along,
    has_own_rule,
    rep_along,
    rule_for,
)
from mobiledl.core.inputs import Inputs, check_inputs, input_tensors, map_inputs, repeat_batch
from mobiledl.errors import UserError

SlotKind = str  # "out", "in", "channel", "heads", or a kind of a user's rule

_ELEMENTWISE_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.abs,
    torch.exp,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.sigmoid,
    F.tanh,
    F.softplus,
    F.dropout,
}
_ELEMENTWISE_METHODS = {
    "add",
    "sub",
    "mul",
    "div",
    "relu",
    "sigmoid",
    "tanh",
    "clamp",
    "abs",
    "exp",
    "neg",
    "contiguous",
    "clone",
    "detach",
}
_POOL_FUNCTIONS = {
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.interpolate,
}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_SHAPE_OPS = {"view", "reshape", "flatten", "transpose", "permute", "squeeze", "unsqueeze"}
_SHAPE_FUNCTIONS: dict[Callable[..., Any], str] = {
    torch.reshape: "reshape",
    torch.flatten: "flatten",
    torch.transpose: "transpose",
    torch.permute: "permute",
    torch.squeeze: "squeeze",
    torch.unsqueeze: "unsqueeze",
}
_REDUCTION_FUNCTIONS: dict[Callable[..., Any], str] = {
    torch.mean: "mean",
    torch.sum: "sum",
    torch.amax: "amax",
    torch.amin: "amin",
}


@dataclass
class GroupMember:
    """A slot of a group and, for every index along the slot's dim, the unit it belongs to.

    A unit usually covers one index of each member; after ``flatten`` it covers the H×W input
    features of the next linear layer, after a channel shuffle several channels.
    """

    slot: Slot
    units: Tensor

    @property
    def multiplicity(self) -> int:
        """Fewest indices that a unit present in this slot has in it."""
        counts = torch.bincount(self.units)
        return int(counts[counts > 0].min())


@dataclass
class ChannelGroup:
    """Channels of several layers that must be removed together: ``width`` units, each a set
    of coupled channels. ``frozen[u]`` marks units that must stay (model input and output,
    held or unsupported ops), ``dropped[u]`` units that must go (channels a constant slice
    cuts off and nothing else reads)."""

    members: list[GroupMember]
    width: int
    frozen: Tensor
    dropped: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        if len(self.dropped) != self.width:
            self.dropped = torch.zeros(self.width, dtype=torch.bool)

    @property
    def prunable(self) -> bool:
        """True if at least one unit may be removed and one would remain."""
        free = ~self.frozen & ~self.dropped
        return int((~self.dropped).sum()) > 1 and bool(free.any())

    @property
    def real_members(self) -> list[GroupMember]:
        """The members surgery cuts (not the virtual slots that only count MACs)."""
        return [member for member in self.members if not member.slot.virtual]

    @property
    def layers(self) -> list[str]:
        """Names of the modules in the group, in execution order, each once."""
        return list(dict.fromkeys(member.slot.module for member in self.real_members))

    def kept_positions(self, member: GroupMember, keep: Tensor) -> Tensor:
        """Indices along ``member``'s dim that belong to the units in ``keep``."""
        mask = torch.zeros(self.width, dtype=torch.bool)
        mask[keep] = True
        return torch.nonzero(mask[member.units]).flatten()

    def segments(self) -> list[Tensor]:
        """The units split by which members they appear in, in order of first unit.

        Usually one segment; after a concatenation, the channels of each concatenated layer
        form their own segment, whose kept count is rounded on its own.
        """
        members = self.real_members
        present = torch.zeros(self.width, len(members), dtype=torch.bool)
        for index, member in enumerate(members):
            present[member.units, index] = True
        _, inverse = torch.unique(present, dim=0, return_inverse=True)
        first = {int(key): None for key in inverse.tolist()}
        return [torch.nonzero(inverse == key).flatten() for key in first]

    def describe(self) -> str:
        """``"features.1.conv.out, features.1.bn.channel, ..."`` (for messages)."""
        return ", ".join(f"{m.slot.module}.{m.slot.kind}" for m in self.real_members)


#: How a layer's MACs fall with pruning: (MACs on the traced batch, slot kinds) terms.
CostTerms = list[tuple[float, tuple[str, ...]]]


@dataclass
class DependencyGraph:
    """Every group of coupled channels of a model, what the analysis left unpruned, and the
    layers with prunable dims in the order they run.

    ``warnings``: unsupported patterns that froze channels; ``held``: layers whose math
    needs their channels whole (not warned; named when a target is missed); ``costs``: the
    layers whose MACs do not simply scale with the product of their slots' kept fractions
    (grouped convolutions, attention), on a traced batch of ``batch`` samples.
    """

    groups: list[ChannelGroup]
    warnings: list[str]
    layers: list[str]
    held: list[str] = field(default_factory=list)
    costs: dict[str, CostTerms] = field(default_factory=dict)
    batch: int = 2

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [group for group in self.groups if group.prunable]

    def groups_of(self, module: str) -> list[ChannelGroup]:
        """The groups in which layer ``module`` takes part."""
        return [group for group in self.groups if module in group.layers]


def build_dependency_graph(
    model: nn.Module, example_input: Inputs, warn: bool = True, strict: bool = False
) -> DependencyGraph:
    """Trace ``model`` on ``example_input`` (one sample suffices) and group coupled channels.

    ``example_input`` is one tensor, a tuple of tensors (the ``forward`` arguments in order)
    or a dict of them by argument name, as ``mobiledl.core.inputs`` describes.

    Raises ``UserError`` if ``torch.fx`` cannot trace the model. With ``warn``, issues one
    ``UserWarning`` listing every node whose channels had to stay for lack of a mapping;
    with ``strict``, that list is a ``UserError`` instead.
    """
    traced = _trace(model)
    values = _record_values(traced, _two_samples(example_input))
    flow = _ChannelFlow(traced, values)
    for node in traced.graph.nodes:
        flow.visit(node)
    graph = flow.finish()
    if strict and graph.warnings:
        raise UserError(unmapped_message(graph) + " (strict)")
    if warn and graph.warnings:
        warnings.warn(unmapped_message(graph), stacklevel=2)
    return graph


def unmapped_message(graph: DependencyGraph) -> str:
    """One line naming every pattern that left channels in place."""
    return "channel pruning leaves some channels in place: " + "; ".join(graph.warnings)


class _RuleTracer(torch.fx.Tracer):
    """``torch.fx`` tracing that keeps every layer with a pruning rule as one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return has_own_rule(m) or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    tracer = _RuleTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types for data-dependent Python
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"channel pruning needs a model torch.fx can trace; {type(model).__name__} "
            f"cannot be traced ({first[:160]})"
        ) from None
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def _two_samples(example_input: Inputs) -> Inputs:
    """A batch of two equal samples: a reshape that merges batch and channels shows up."""
    check_inputs(example_input, "channel pruning's example input")
    if any(tensor.dim() == 0 for tensor in input_tensors(example_input)):
        raise UserError("channel pruning needs example input tensors with a batch dimension")
    return repeat_batch(map_inputs(torch.Tensor.detach, example_input), 2)


def _placeholder_args(traced: torch.fx.GraphModule, inputs: Inputs) -> list[Any]:
    """``inputs`` as the traced graph's positional arguments (a dict by argument name)."""
    if not isinstance(inputs, dict):
        return input_tensors(inputs)
    names = [node.target for node in traced.graph.nodes if node.op == "placeholder"]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise UserError(
            f"channel pruning's example input names {unknown}, which are not arguments of "
            f"the model's forward ({', '.join(map(str, names))})"
        )
    given = [name for name in names if name in inputs]
    if given != names[: len(given)]:
        raise UserError(
            "channel pruning's example input dict must give the forward's arguments in order "
            f"from the first ({', '.join(map(str, names))}); got {', '.join(inputs)}"
        )
    return [inputs[name] for name in given]


class _Recorder(torch.fx.Interpreter):
    """Runs the traced graph and keeps every node's value (shapes and concrete arguments)."""

    def __init__(self, module: torch.fx.GraphModule) -> None:
        super().__init__(module)
        self.values: dict[torch.fx.Node, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        self.values[n] = result
        return result


def _record_values(traced: torch.fx.GraphModule, x: Inputs) -> dict[torch.fx.Node, Any]:
    was_training = traced.training
    traced.eval()
    recorder = _Recorder(traced)
    args = _placeholder_args(traced, x)
    try:
        with torch.no_grad():
            recorder.run(*args)
    except Exception as exc:
        shapes = ", ".join(str(list(tensor.shape)) for tensor in input_tensors(x))
        raise UserError(
            f"the model fails on an input of shape {shapes}: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        traced.train(was_training)
    return recorder.values


class _UnionFind:
    """Channel ids with a union-find over them; a frozen flag lives on each root."""

    def __init__(self) -> None:
        self.parent = np.zeros(0, dtype=np.int64)
        self.frozen = np.zeros(0, dtype=bool)

    def new(self, count: int, frozen: bool = False) -> Tensor:
        start = len(self.parent)
        self.parent = np.concatenate([self.parent, np.arange(start, start + count)])
        self.frozen = np.concatenate([self.frozen, np.full(count, frozen)])
        return torch.arange(start, start + count)

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = int(parent[item])
        return item

    def roots(self, ids: np.ndarray) -> np.ndarray:
        """Roots of many ids at once (pointer jumping)."""
        roots = self.parent[ids]
        while True:
            up = self.parent[roots]
            if np.array_equal(up, roots):
                return roots
            roots = up

    def union(self, first: Tensor, second: Tensor) -> None:
        """Unify ``first[i]`` with ``second[i]`` for every ``i`` (non-negative ids)."""
        first, second = first.flatten(), second.flatten()
        keep = first != second
        base = int(max(first.max(), second.max())) + 1 if len(first) else 1
        keys = torch.unique(first[keep] * base + second[keep])
        for a, b in zip((keys // base).tolist(), (keys % base).tolist(), strict=True):
            root_a, root_b = self.find(a), self.find(b)
            if root_a != root_b:
                self.parent[root_b] = root_a
                self.frozen[root_a] |= self.frozen[root_b]

    def freeze(self, ids: np.ndarray) -> None:
        self.frozen[self.roots(ids)] = True


def _size_at(ids: Tensor, dim: int) -> int:
    """Size of ``ids`` along ``dim``; 1 for a dim it lacks (it broadcasts there)."""
    return ids.shape[dim] if 0 <= dim < ids.dim() else 1


def _leaves(value: Any) -> Iterator[Any]:
    """The non-container items of nested tuples, lists and dicts."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


@dataclass
class _Event:
    """Why some channels stay: ``ids`` frozen for ``reason``; ``always``: warn even if no
    layer could have lost them (a layer with weights left unpruned); ``held``: the layer's
    math needs them whole (reported, not warned)."""

    reason: str
    ids: np.ndarray
    always: bool = False
    held: bool = False


@dataclass
class _Slice:
    """A slice of the channel dim at constant bounds: the ids before its end (``prefix``)
    and after it (``tail``); the tail is removed (``dropping``) unless one of its ids must
    stay, and then the prefix is held instead."""

    reason: str
    prefix: np.ndarray
    tail: np.ndarray
    dropping: bool = True


class _ChannelFlow:
    """Propagates channel labels through the graph node by node (see module docstring)."""

    def __init__(self, traced: torch.fx.GraphModule, values: dict[torch.fx.Node, Any]) -> None:
        self.modules = dict(traced.named_modules())
        self.values = values
        self.uf = _UnionFind()
        self.labels: dict[torch.fx.Node, Any] = {}
        self.slots: dict[Slot, Tensor] = {}
        self.producers: dict[Slot, Tensor] = {}
        self.costs: dict[str, CostTerms] = {}
        self.events: list[_Event] = []
        self.slices: list[_Slice] = []

    # ------------------------------------------------------------------ visiting nodes

    def visit(self, node: torch.fx.Node) -> None:
        if node.op == "output":
            for labels in _leaves(self.labels_of(node.args[0])):
                if isinstance(labels, ChannelLabels):
                    self.uf.freeze(self._ids_of(labels))
            return
        before = (set(self.slots), set(self.producers), {k: len(v) for k, v in self.costs.items()})
        try:
            self.labels[node] = self._dispatch(node)
        except UnsupportedPattern as reason:
            self._forget(*before)
            self._opaque(node, str(reason))
        except Exception as exc:  # a rule that failed: keep its channels, say why
            self._forget(*before)
            detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            self._opaque(node, f"its channels could not be mapped ({reason})")

    def _forget(self, slots: set[Slot], producers: set[Slot], costs: dict[str, int]) -> None:
        """Drop what a failed call registered: its channels are frozen instead."""
        for key in set(self.slots) - slots:
            del self.slots[key]
        for key in set(self.producers) - producers:
            del self.producers[key]
        for key in list(self.costs):
            del self.costs[key][costs.get(key, 0) :]
            if not self.costs[key]:
                del self.costs[key]

    def _dispatch(self, node: torch.fx.Node) -> Any:
        value = self.values[node]
        if node.op == "placeholder":
            return self._fresh_like(value, frozen=True)
        if node.op == "get_attr" or not node.all_input_nodes:
            return self._constant(node, value)
        if not any(isinstance(v, Tensor) for v in _leaves(value)):
            return None  # sizes, shapes, ints: no channels
        if node.op == "call_module":
            return self._call_module(node, self.modules[node.target])
        return self._call_op(node, node.target)

    def _call_module(self, node: torch.fx.Node, module: nn.Module) -> Any:
        rule = rule_for(module)
        if rule is None:
            raise UnsupportedPattern(
                f"layer type {type(module).__name__} has no pruning rule "
                "(mobiledl.compress.prune.register_pruning_rule adds one)"
            )
        return rule.flow(LayerCall(self, str(node.target), module, node.args, node.kwargs, node))

    def _call_op(self, node: torch.fx.Node, key: Any) -> Any:
        rule = rule_for(key) if callable(key) else None
        if rule is not None:
            return rule.flow(LayerCall(self, node.name, None, node.args, node.kwargs, node))
        if key in _ELEMENTWISE_FUNCTIONS or key in _ELEMENTWISE_METHODS:
            return self.elementwise(node)
        if key in _SHAPE_FUNCTIONS or key in _SHAPE_OPS:
            return self._shape_method(node, _SHAPE_FUNCTIONS.get(key, key))
        if key in _REDUCTION_FUNCTIONS or key in _REDUCTIONS:
            return self._reduction(node)
        if key in (torch.cat, torch.concat, torch.concatenate):
            return self._cat(node)
        if key in (torch.chunk, "chunk"):
            return self._chunk(node)
        if key in (torch.split, "split"):
            return self._split(node)
        if key in (torch.narrow, "narrow"):
            return self._narrow(node)
        if key is operator.getitem:
            return self._getitem(node)
        if key in _POOL_FUNCTIONS:
            return self.spatial(node)
        if key is F.pad:
            return self._pad(node)
        if key in (F.softmax, F.log_softmax, torch.softmax, "softmax", "log_softmax"):
            return self.softmax(node, self._arg(node, 1, "dim"))
        raise UnsupportedPattern(f"operation '{_op_name(key)}' is not supported")

    # ------------------------------------------------------------------ slots (for rules)

    def produce(self, slot: Slot, count: int) -> Tensor:
        """The ids of a layer's output channels, created on its first call."""
        if slot not in self.producers:
            self.producers[slot] = self.uf.new(count)
            self.register(slot, self.producers[slot])
        return self.producers[slot]

    def register(self, slot: Slot, ids: Tensor) -> None:
        ids = ids.clone()
        missing = ids == NONE
        if missing.any():
            ids[missing] = self.uf.new(int(missing.sum()), frozen=True)
        if slot in self.slots:  # a layer called twice: both calls see the same channels
            if len(self.slots[slot]) != len(ids):
                raise UnsupportedPattern(
                    f"layer '{slot.module}' is called on different channel counts"
                )
            self.uf.union(self.slots[slot], ids)
            return
        self.slots[slot] = ids

    def hold(self, ids: Tensor, reason: str) -> None:
        """Freeze ``ids``: a layer's math needs them (reported, not warned)."""
        ids = ids[ids >= 0].numpy()
        if len(ids):
            self.uf.freeze(ids)
            self.events.append(_Event(reason, ids, held=True))

    def labels_of(self, arg: Any) -> Any:
        """The labels of the nodes in ``arg`` (other items become ``None``)."""
        return torch.fx.node.map_aggregate(
            arg, lambda a: self.labels.get(a) if isinstance(a, torch.fx.Node) else None
        )

    def concrete(self, arg: Any) -> Any:
        """``arg`` with every node replaced by its recorded value."""
        return torch.fx.node.map_aggregate(
            arg, lambda a: self.values[a] if isinstance(a, torch.fx.Node) else a
        )

    def output_shape(self, node: torch.fx.Node) -> torch.Size:
        return next(v for v in _leaves(self.values[node]) if isinstance(v, Tensor)).shape

    # ------------------------------------------------------------------ element-wise ops

    def elementwise(self, node: torch.fx.Node) -> ChannelLabels:
        shape = self.values[node].shape
        operands = [
            (self.labels[arg], self.values[arg].dim())
            for arg in node.all_input_nodes
            if isinstance(self.values[arg], Tensor)
            and isinstance(self.labels.get(arg), ChannelLabels)
        ]
        pdims = {lab.pdim + len(shape) - ndim for lab, ndim in operands if lab.pdim is not None}
        if len(pdims) > 1:
            raise UnsupportedPattern("it combines tensors whose channels lie on different dims")
        pdim = pdims.pop() if pdims else None
        ids: Tensor | None = None
        for labels, ndim in operands:
            if pdim is not None and _size_at(labels.ids, pdim - len(shape) + ndim) < shape[pdim]:
                self.uf.freeze(self._ids_of(labels))  # one channel broadcast over all
                continue
            expanded = labels.ids.expand(shape)
            ids = expanded if ids is None else self._merge(ids, expanded)
        if ids is None:
            ids = torch.full(shape, NONE, dtype=torch.long)
        return self._settle(ids, pdim)

    def _merge(self, ids: Tensor, other: Tensor) -> Tensor:
        both = (ids >= 0) & (other >= 0)
        if both.any():
            self.uf.union(ids[both], other[both])
        return torch.where(ids >= 0, ids, other)

    def _settle(self, ids: Tensor, pdim: int | None) -> ChannelLabels:
        """Unify the ids in each slice across the pruned dim (see module docstring)."""
        if pdim is None:
            return ChannelLabels(ids, None)
        if pdim == 0:
            raise UnsupportedPattern("it merges the batch dim with channels")
        rows = ids.movedim(pdim, 0).reshape(ids.shape[pdim], -1)
        rep = rows.amax(1, keepdim=True).expand_as(rows)
        mixed = (rows != rep) & (rows >= 0)
        if mixed.any():
            self.uf.union(rows[mixed], rep[mixed])
        return ChannelLabels(ids, pdim)

    # ------------------------------------------------------------------ shape ops

    def _shape_method(self, node: torch.fx.Node, name: str) -> ChannelLabels:
        if name in ("view", "reshape"):
            shape = self.values[node].shape
            return self.shape_op(node, lambda ids: ids.reshape(shape), _size_kinds(node))
        rest = [self.concrete(arg) for arg in node.args[1:]]
        kwargs = {key: self.concrete(arg) for key, arg in node.kwargs.items()}
        method = getattr(torch.Tensor, name)
        return self.shape_op(node, lambda ids: method(ids, *rest, **kwargs))

    def shape_op(
        self, node: torch.fx.Node, apply: Callable[[Tensor], Tensor], kinds: list[str] | None = None
    ) -> ChannelLabels:
        """Apply a shape op to the labels; find the new pruned dim (``kinds``: reshape sizes)."""
        labels = self._input(node)
        ids = apply(labels.ids)
        if labels.pdim is None:
            return ChannelLabels(ids, None)
        varying = self._varying_dims(ids)
        if kinds is None:
            if len(varying) > 1:
                raise UnsupportedPattern("it spreads channels over several dims")
            return self._settle(ids, varying[0] if varying else None)
        scaling = [dim for dim in varying if kinds[dim] != "const"]
        if varying and len(scaling) != 1:
            raise UnsupportedPattern(
                f"it reshapes the channels to fixed sizes {list(ids.shape[1:])}"
            )
        return self._settle(ids, scaling[0] if scaling else None)

    def _varying_dims(self, ids: Tensor) -> list[int]:
        """Dims along which the channel *classes* (roots) change."""
        classes = self._classes(ids)
        return [
            dim
            for dim in range(ids.dim())
            if ids.shape[dim] > 1 and bool((classes != classes.narrow(dim, 0, 1)).any())
        ]

    def _classes(self, ids: Tensor) -> Tensor:
        unique, inverse = torch.unique(ids, return_inverse=True)
        roots = unique.clone()
        valid = unique >= 0
        roots[valid] = torch.from_numpy(self.uf.roots(unique[valid].numpy()))
        return roots[inverse]

    def _cat(self, node: torch.fx.Node) -> ChannelLabels:
        parts = [self.labels[arg] for arg in node.args[0]]
        dim = self._arg(node, 1, "dim", 0) % parts[0].ids.dim()
        pdims = {labels.pdim for labels in parts if labels.pdim is not None}
        if len(pdims) > 1:
            raise UnsupportedPattern("it concatenates tensors whose channels lie on different dims")
        ids = torch.cat([labels.ids for labels in parts], dim)
        return self._settle(ids, pdims.pop() if pdims else None)

    def _chunk(self, node: torch.fx.Node) -> tuple[ChannelLabels, ...]:
        labels = self._input(node)
        chunks = self._arg(node, 1, "chunks")
        dim = self._arg(node, 2, "dim", 0) % labels.ids.dim()
        pieces = torch.chunk(labels.ids, chunks, dim)
        if dim == labels.pdim:
            if labels.ids.shape[dim] % chunks:
                raise UnsupportedPattern(f"it chunks {labels.ids.shape[dim]} channels unevenly")
            for piece in pieces[1:]:  # the pruned model must still split evenly
                self._merge(pieces[0], piece)
        return tuple(ChannelLabels(piece, labels.pdim) for piece in pieces)

    def _split(self, node: torch.fx.Node) -> tuple[ChannelLabels, ...]:
        labels = self._input(node)
        dim = self._arg(node, 2, "dim", 0) % labels.ids.dim()
        sizes = self.concrete(self._arg(node, 1, "split_size_or_sections"))
        if dim == labels.pdim:
            channels = rep_along(labels.ids, dim)
            fixed = (len(channels) - 1) // sizes * sizes if isinstance(sizes, int) else None
            what = "every piece but the last" if fixed is not None else "every piece"
            reason = f"{self._describe(node)}: it splits at fixed sizes, {what} stays whole"
            self.hold(channels[:fixed], reason)
        pieces = torch.split(labels.ids, sizes, dim)
        return tuple(ChannelLabels(piece, labels.pdim) for piece in pieces)

    def _narrow(self, node: torch.fx.Node) -> ChannelLabels:
        labels = self._input(node)
        dim = self._arg(node, 1, "dim") % labels.ids.dim()
        start, length = self._arg(node, 2, "start"), self._arg(node, 3, "length")
        if dim == labels.pdim:
            self._slice_channels(node, labels, slice(start, start + length), node.args[2:])
        return self.shape_op(node, lambda ids: ids.narrow(dim, start, length))

    def _getitem(self, node: torch.fx.Node) -> Any:
        source = self.labels[node.args[0]]
        index = self.concrete(node.args[1])
        if isinstance(source, tuple):  # a piece of chunk / split
            return source[index]
        if not isinstance(source, ChannelLabels):
            return None
        item = _channel_item(index, source)
        if item is not None and item != slice(None):
            self._slice_channels(node, source, item, node.args[1])
        return self.shape_op(node, lambda ids: ids[index])

    def _slice_channels(
        self, node: torch.fx.Node, labels: ChannelLabels, item: Any, raw: Any
    ) -> None:
        """Constrain the channels a slice ``item`` of the channel dim reads (see ``_Slice``)."""
        if not isinstance(item, slice):
            raise UnsupportedPattern("it selects single channels")
        if _has_node(raw):
            raise UnsupportedPattern("it slices the channels at bounds computed at run time")
        channels = rep_along(labels.ids, labels.pdim)
        start, stop, step = item.indices(len(channels))
        if step != 1:
            raise UnsupportedPattern("it slices the channels with a step")
        if start == 0 and stop == len(channels):
            return  # the whole dim, before and after pruning
        reason = f"{self._describe(node)}: it takes channels {start}:{stop} at fixed offsets"
        self.hold(channels[:start], reason)
        tail, prefix = channels[stop:], channels[:stop]
        if not len(tail[tail >= 0]):
            return
        if len(node.args[0].users) > 1:  # the channels after the slice may be read elsewhere
            self.hold(prefix, reason)
        else:
            self.slices.append(_Slice(reason, prefix[prefix >= 0].numpy(), tail[tail >= 0].numpy()))

    # ------------------------------------------------------------------ reductions, pooling

    def _reduction(self, node: torch.fx.Node) -> ChannelLabels:
        labels = self._input(node)
        ndim = labels.ids.dim()
        dims = self._arg(node, 1, "dim")
        keepdim = bool(self._arg(node, 2, "keepdim", False))
        dims = list(range(ndim)) if dims is None else dims
        dims = sorted(d % ndim for d in ([dims] if isinstance(dims, int) else dims))
        if labels.pdim in dims:
            raise UnsupportedPattern("it reduces over the channel dim")
        ids = labels.ids.amax(dim=dims, keepdim=keepdim) if dims else labels.ids
        pdim = labels.pdim
        if pdim is not None and not keepdim:
            pdim -= sum(d < pdim for d in dims)
        return ChannelLabels(ids, pdim)

    def spatial(self, node: torch.fx.Node) -> ChannelLabels:
        """Pooling, resizing: each channel stays a channel; only dims from 2 on change."""
        labels = self._input(node)
        shape = self.values[node].shape
        if labels.pdim not in (None, 1) or shape[:2] != labels.ids.shape[:2]:
            raise UnsupportedPattern("it does not keep the channels on dim 1")
        return ChannelLabels(broadcast_along(rep_along(labels.ids, 1), 1, shape), labels.pdim)

    def _pad(self, node: torch.fx.Node) -> ChannelLabels:
        labels = self._input(node)
        padded = len(self.concrete(self._arg(node, 1, "pad"))) // 2
        if labels.pdim is not None and labels.pdim >= labels.ids.dim() - padded:
            raise UnsupportedPattern("it pads the channel dim")
        return self.spatial(node)

    def softmax(self, node: torch.fx.Node, dim: int | None) -> ChannelLabels:
        labels = self._input(node)
        if dim is None or labels.pdim == dim % labels.ids.dim():
            raise UnsupportedPattern("it normalizes over the channel dim")
        return labels

    # ------------------------------------------------------------------ constants, fallbacks

    def _constant(self, node: torch.fx.Node, value: Any) -> Any:
        """A parameter or created tensor of fixed shape: it freezes the channels it meets."""
        if not isinstance(value, Tensor):
            return None
        if value.numel() <= 1:
            return ChannelLabels(torch.full(value.shape, NONE, dtype=torch.long), None)
        ids = self.uf.new(value.numel(), frozen=True).reshape(value.shape)
        what = f"parameter '{node.target}'" if node.op == "get_attr" else "a created tensor"
        reason = f"{self._describe(node)}: uses {what} of fixed shape"
        self.events.append(_Event(reason, ids.numpy()))
        return ChannelLabels(ids, None)

    def _fresh_like(self, value: Any, frozen: bool) -> Any:
        if isinstance(value, (tuple, list)):
            return tuple(self._fresh_like(item, frozen) for item in value)
        if not isinstance(value, Tensor):
            return None
        if value.dim() < 2:
            return ChannelLabels(torch.full(value.shape, NONE, dtype=torch.long), None)
        ids = self.uf.new(value.shape[1], frozen=frozen)
        return ChannelLabels(broadcast_along(ids, 1, value.shape), 1)

    def _opaque(self, node: torch.fx.Node, reason: str) -> None:
        """Freeze every channel going in; the output gets fresh frozen channels."""
        touched = [
            self._ids_of(labels)
            for arg in node.all_input_nodes
            for labels in _leaves(self.labels.get(arg))
            if isinstance(labels, ChannelLabels)
        ]
        output = self._fresh_like(self.values[node], frozen=True)
        touched += [self._ids_of(lab) for lab in _leaves(output) if isinstance(lab, ChannelLabels)]
        ids = np.concatenate(touched) if touched else np.zeros(0, dtype=np.int64)
        if len(ids):
            self.uf.freeze(ids)
        layer = self.modules.get(node.target) if node.op == "call_module" else None
        has_weights = layer is not None and any(True for _ in layer.parameters())
        self.events.append(_Event(f"{self._describe(node)}: {reason}", ids, has_weights))
        self.labels[node] = output

    # ------------------------------------------------------------------ helpers

    def _input(self, node: torch.fx.Node) -> ChannelLabels:
        labels = self.labels.get(node.args[0]) if node.args else None
        if not isinstance(labels, ChannelLabels):
            raise UnsupportedPattern("its input is not a tensor the analysis tracked")
        return labels

    def _arg(self, node: torch.fx.Node, position: int, name: str, default: Any = None) -> Any:
        if len(node.args) > position:
            return self.concrete(node.args[position])
        return self.concrete(node.kwargs.get(name, default))

    @staticmethod
    def _ids_of(labels: ChannelLabels) -> np.ndarray:
        ids = torch.unique(labels.ids)
        return ids[ids >= 0].numpy()

    def _describe(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"layer '{node.target}' ({type(self.modules[node.target]).__name__})"
        return f"node '{node.name}' ({_op_name(node.target)})"

    # ------------------------------------------------------------------ groups

    def finish(self) -> DependencyGraph:
        dropped = self._resolve_slices()
        slots = list(self.slots.items())
        roots = [self.uf.roots(ids.numpy()) for _, ids in slots]
        components = _connect(roots)
        groups = [
            self._group([slots[i] for i in comp], [roots[i] for i in comp], dropped)
            for comp in components
        ]
        order = list(dict.fromkeys(slot.module for slot, _ in slots if not slot.virtual))
        removable = {
            int(r)
            for (slot, _), slot_roots in zip(slots, roots, strict=True)
            if slot.kind != "in" and not slot.virtual
            for r in slot_roots
        }
        warned = self._reasons(removable, held=False)
        return DependencyGraph(groups, warned, order, self._reasons(removable, True), self.costs)

    def _resolve_slices(self) -> set[int]:
        """Roots of the units constant slices remove. A slice whose cut-off channels must
        stay holds the channels before its end instead (until nothing changes)."""
        changed = True
        while changed:
            changed = False
            for cut in self.slices:
                if cut.dropping and self.uf.frozen[self.uf.roots(cut.tail)].any():
                    cut.dropping = False
                    self.hold(torch.from_numpy(cut.prefix), cut.reason)
                    changed = True
        tails = [self.uf.roots(cut.tail) for cut in self.slices if cut.dropping]
        return set(np.concatenate(tails).tolist()) if tails else set()

    def _group(
        self, slots: list[tuple[Slot, Tensor]], roots: list[np.ndarray], dropped: set[int]
    ) -> ChannelGroup:
        order = dict.fromkeys(int(r) for slot_roots in roots for r in slot_roots)
        unit_of = {root: unit for unit, root in enumerate(order)}
        members = [
            GroupMember(slot, torch.tensor([unit_of[int(r)] for r in slot_roots]))
            for (slot, _), slot_roots in zip(slots, roots, strict=True)
        ]
        frozen = torch.from_numpy(self.uf.frozen[np.fromiter(order, dtype=np.int64)].copy())
        gone = torch.tensor([root in dropped for root in order], dtype=torch.bool)
        return ChannelGroup(members, len(order), frozen, gone)

    def _reasons(self, removable: set[int], held: bool) -> list[str]:
        """Reasons of the (held or unsupported) events that froze channels some layer could
        otherwise have lost, and of every layer with weights that is left unpruned."""
        messages = []
        for event in self.events:
            if event.held != held:
                continue
            ids = np.ravel(event.ids)  # an op's labels may have more than one dim
            if event.always or (len(ids) and removable.intersection(self.uf.roots(ids).tolist())):
                messages.append(event.reason)
        return list(dict.fromkeys(messages))


def _connect(roots: list[np.ndarray]) -> list[list[int]]:
    """Indices of slots that share a channel class, grouped; in order of first slot."""
    parent = list(range(len(roots)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for index, slot_roots in enumerate(roots):
        for root in np.unique(slot_roots).tolist():
            if root in owner:
                parent[find(index)] = find(owner[root])
            else:
                owner[root] = index
    components: dict[int, list[int]] = {}
    for index in range(len(roots)):
        components.setdefault(find(index), []).append(index)
    return sorted(components.values(), key=lambda comp: comp[0])


def _op_name(key: Any) -> str:
    return key if isinstance(key, str) else getattr(key, "__name__", str(key))


def _size_kinds(node: torch.fx.Node) -> list[str]:
    """For each size argument of ``view``/``reshape``: ``const``, ``infer`` (-1) or ``dynamic``."""
    sizes = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = list(sizes[0])
    if not sizes and "shape" in node.kwargs:
        sizes = list(node.kwargs["shape"])
    return [
        "dynamic" if isinstance(s, torch.fx.Node) else "infer" if s == -1 else "const"
        for s in sizes
    ]


def _channel_item(index: Any, labels: ChannelLabels) -> Any:
    """The item of an index that applies to the channel dim (``None``: no item does)."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(item, (Tensor, list)) for item in items):
        raise UnsupportedPattern("it indexes with a tensor or list")
    consumed = sum(1 for item in items if item is not None and item is not Ellipsis)
    dim = 0
    for item in items:
        if item is Ellipsis:
            dim += labels.ids.dim() - consumed
            continue
        if item is None:
            continue
        if dim == labels.pdim:
            return item
        dim += 1
    return None


def _has_node(arg: Any) -> bool:
    """Whether ``arg`` (an index, a list of sizes) holds a value computed at run time."""
    found = []
    torch.fx.node.map_aggregate(arg, lambda a: found.append(isinstance(a, torch.fx.Node)))
    return any(found)
