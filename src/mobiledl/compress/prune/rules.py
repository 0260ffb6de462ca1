"""Pruning rules: what each layer type does to channels, kept in one registry.

Channel pruning (``graph.py``) traces a model and, for every layer it meets, asks the rule
registered for the layer's type. A rule says

- **how channels flow** (``flow``): given the channel ids of the layer's inputs (a
  ``LayerCall``), it registers the layer's *slots* (the dims pruning shrinks: ``out``,
  ``in``, ``channel``, ``heads``, ...), ties the ids that must be removed together, and
  returns the ids of its output. Granularity lives here: a rule that ties the channels of
  a head (Michel et al. 2019, "Are Sixteen Heads Really Better than One?") or of a
  convolution group makes whole heads or groups the units pruning removes.
- **how to cut** (``slices``, ``resize``; or ``shrink`` and ``mask`` themselves): which
  parameters each slot indexes and along which dim, so the generic ``shrink`` builds a
  smaller copy of the layer and ``mask`` zeroes the same entries in place.
- **which criteria apply**: the ``scored`` slices are ranked by magnitude or gradient
  criteria (``l1``, ``l2``, ``taylor``, ``hessian``), ``scale`` gives the per-channel
  scale that network slimming ranks (``bn_scale``, Liu et al. 2017), and
  ``supports_reconstruction`` says whether ThiNet's least-squares refit may treat the
  layer as a consumer.

``register_pruning_rule(MyLayer, rule)`` adds (or replaces) the rule for a type; the tracer
then treats every ``MyLayer`` as one call and does not trace into its ``forward``. A rule
may also be registered for a function (``F.scaled_dot_product_attention`` has one). The
built-in rules are in ``layer_rules.py`` and ``attention.py``.
"""

from __future__ import annotations

import importlib
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import torch
import torch.fx
from torch import Tensor, nn

from mobiledl.core.clone import clone_module
from mobiledl.errors import UserError

if TYPE_CHECKING:
    from mobiledl.compress.prune.graph import _ChannelFlow

NONE = -1  # label of a value that comes from no channel (a scalar, a padded border, ...)

#: Element scores of one parameter of a layer, looked up by its name in the layer.
ElementScores = Callable[[str], Tensor | None]


@dataclass(frozen=True)
class Slot:
    """One dimension of one layer that pruning shrinks.

    ``out``: output channels of a convolution (weight dim 0, bias) or output features of a
    linear layer; ``in``: their input channels (weight dim 1); ``channel``: the channels of a
    channel-wise layer (batch norm, depthwise convolution), whose input and output are one;
    ``heads``: the per-head projection dims of attention. Rules may name kinds of their own.
    A ``virtual`` slot is never cut: it only tells the MAC estimate how a layer's cost falls
    with the channels of its group (the heads of a functional attention call).
    """

    module: str
    kind: str
    virtual: bool = False


@dataclass(frozen=True)
class ChannelLabels:
    """Channel ids shaped like a tensor, and the dim pruning shrinks (``None``: none)."""

    ids: Tensor
    pdim: int | None


class UnsupportedPattern(Exception):
    """Raised by a rule (``LayerCall.fail``): the channels the call touches stay in place,
    for this reason (a warning; an error with ``strict``)."""


def rep_along(ids: Tensor, dim: int) -> Tensor:
    """One id per index along ``dim`` (the largest; ``NONE`` only if the slice has no id)."""
    return ids.movedim(dim, 0).reshape(ids.shape[dim], -1).amax(1)


def broadcast_along(vector: Tensor, dim: int, shape: Sequence[int]) -> Tensor:
    """``vector`` laid along ``dim`` of a tensor of ``shape``."""
    view = [1] * len(shape)
    view[dim] = -1
    return vector.reshape(view).expand(*shape)


class LayerCall:
    """One call of a layer (or function) that has a rule, as its rule sees it.

    ``name`` and ``module`` are the layer (``module`` is ``None`` for a function). The
    inputs' channel ids come from ``input``, other arguments from ``argument``; the rule
    records the layer's slots with ``register`` / ``produce``, couples ids with ``tie``,
    keeps channels with ``hold`` (a correct limit of the layer, not a warning) or gives up
    with ``fail`` (an unsupported pattern: a warning, or an error with ``strict``), and
    returns ``labels(...)`` of its output. ``call`` runs a sub-layer's rule, so a composite
    layer (a transformer block) is described by the rules of its parts.
    """

    def __init__(
        self,
        flow: _ChannelFlow,
        name: str,
        module: nn.Module | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        node: torch.fx.Node | None = None,
    ) -> None:
        self.flow = flow
        self.name = name
        self.module = module
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        self.node = node

    # ------------------------------------------------------------------ reading

    def input(self, position: int = 0, keyword: str | None = None) -> ChannelLabels:
        """Channel ids of a tensor argument (``fail`` if the analysis does not track it)."""
        labels = self._get(position, keyword, labels=True)
        if not isinstance(labels, ChannelLabels):
            self.fail("its input is not a tensor the analysis tracked")
        return labels

    def argument(self, position: int, keyword: str, default: Any = None) -> Any:
        """The concrete value of an argument (a tensor argument's recorded value)."""
        return self._get(position, keyword, default=default, labels=False)

    def _get(self, position: int, keyword: str | None, default: Any = None, *, labels: bool) -> Any:
        if len(self.args) > position:
            value = self.args[position]
        elif keyword is not None and keyword in self.kwargs:
            value = self.kwargs[keyword]
        else:
            return default
        if self.node is None:
            return value
        return self.flow.labels_of(value) if labels else self.flow.concrete(value)

    @property
    def output_shape(self) -> torch.Size:
        """Shape of the call's (first) output, as recorded when the model ran."""
        if self.node is None:
            raise RuntimeError(f"{self.describe()}: output shape unknown inside a layer")
        return self.flow.output_shape(self.node)

    def output_used(self, index: int) -> bool:
        """Whether item ``index`` of the call's tuple output is read by the model."""
        if self.node is None:
            return False
        return any(
            user.target is operator.getitem and user.args[1] == index and len(user.users) > 0
            for user in self.node.users
        )

    def owner(self) -> str:
        """The module a function call runs in (``""``: the model itself)."""
        stack = self.node.meta.get("nn_module_stack") if self.node is not None else None
        return next(reversed(stack.values()))[0] if stack else ""

    def describe(self) -> str:
        """``"layer 'name' (Type)"`` (or the function node) for messages."""
        if self.module is None:
            return f"node '{self.name}'"
        return f"layer '{self.name}' ({type(self.module).__name__})"

    # ------------------------------------------------------------------ channel ids

    @staticmethod
    def channels(labels: ChannelLabels, dim: int) -> Tensor:
        """One channel id per index of ``dim`` of a tensor."""
        return rep_along(labels.ids, dim)

    @staticmethod
    def labels(ids: Tensor, dim: int, shape: Sequence[int]) -> ChannelLabels:
        """Labels of an output of ``shape`` whose channels ``ids`` lie along ``dim``."""
        return ChannelLabels(broadcast_along(ids, dim, shape), dim)

    def fresh(self, count: int) -> Tensor:
        """``count`` new channel ids."""
        return self.flow.uf.new(count)

    def register(self, kind: str, ids: Tensor, module: str | None = None, **slot: Any) -> None:
        """Record slot ``kind`` of this layer (or of sub-layer ``module``): index ``i`` of the
        slot's dim carries channel ``ids[i]``. ``virtual=True``: a slot only for MACs."""
        self.flow.register(Slot(self._qualified(module), kind, **slot), ids)

    def produce(self, kind: str, count: int, module: str | None = None) -> Tensor:
        """New ids for ``count`` output channels, registered as slot ``kind``; the same ids
        on every call of the layer."""
        return self.flow.produce(Slot(self._qualified(module), kind), count)

    def tie(self, first: Tensor, second: Tensor) -> None:
        """``first[i]`` and ``second[i]`` are removed together (ids of no channel ignored)."""
        first, second = first.flatten(), second.flatten()
        both = (first >= 0) & (second >= 0)
        if both.any():
            self.flow.uf.union(first[both], second[both])

    def tie_blocks(self, ids: Tensor, size: int) -> None:
        """Every consecutive block of ``size`` ids is one unit (a group, a head)."""
        blocks = ids.reshape(-1, size)
        self.tie(blocks, blocks[:, :1].expand_as(blocks))

    def hold(self, ids: Tensor, reason: str) -> None:
        """Keep these channels: the layer's math needs all of them (``reason`` is reported
        when a target is missed, not warned)."""
        self.flow.hold(ids, f"{self.describe()}: {reason}")

    def fail(self, reason: str) -> NoReturn:
        """Give up on this call: every channel it touches stays, with a warning."""
        raise UnsupportedPattern(reason)

    def cost(self, macs: float, kinds: tuple[str, ...], module: str | None = None) -> None:
        """``macs`` of this call (on the traced batch) scale with the product of the kept
        fractions of slots ``kinds``; the layer's MACs beyond its cost terms stay."""
        self.flow.costs.setdefault(self._qualified(module), []).append((float(macs), kinds))

    def owner_cost(self, macs: float, ids: Tensor) -> None:
        """For a function call: ``macs`` (on the traced batch) of the module it runs in fall
        with the kept fraction of the channels ``ids`` (recorded as a virtual slot)."""
        owner, kind = self.owner(), f"call:{self.name}"
        self.flow.register(Slot(owner, kind, virtual=True), ids)
        self.flow.costs.setdefault(owner, []).append((float(macs), (kind,)))

    def call(self, module: str, *args: Any, **kwargs: Any) -> Any:
        """Run the rule of sub-layer ``module`` on inputs given as ``ChannelLabels``."""
        assert self.module is not None
        sub = self.module.get_submodule(module)
        rule = rule_for(sub)
        if rule is None:
            self.fail(f"its part '{module}' ({type(sub).__name__}) has no pruning rule")
        return rule.flow(LayerCall(self.flow, self._qualified(module), sub, args, kwargs))

    def _qualified(self, module: str | None) -> str:
        if module is None:
            return self.name
        return f"{self.name}.{module}" if self.name else module

    # ------------------------------------------------------------------ generic flows

    def elementwise(self) -> ChannelLabels:
        """Flow of a layer applied to each value alone."""
        return self.flow.elementwise(self._node())

    def spatial(self) -> ChannelLabels:
        """Flow of pooling or resizing: channels stay on dim 1, later dims change."""
        return self.flow.spatial(self._node())

    def reshape(self, apply: Callable[[Tensor], Tensor]) -> ChannelLabels:
        """Flow of a shape op: ``apply`` it to the ids and find the channel dim again."""
        return self.flow.shape_op(self._node(), apply)

    def softmax(self, dim: int | None) -> ChannelLabels:
        """Flow of a softmax over ``dim`` (unsupported over the channel dim)."""
        return self.flow.softmax(self._node(), dim)

    def _node(self) -> torch.fx.Node:
        if self.node is None:
            raise RuntimeError(f"{self.describe()}: only a traced call has a generic flow")
        return self.node


@dataclass(frozen=True)
class ParamSlice:
    """A parameter or buffer of a layer that a slot's positions index along ``dim``.

    ``scored``: its entries rank the slot's channels under ``l1``/``l2``/``taylor``/
    ``hessian``; ``zeroed``: masking sets the removed entries to zero (running statistics
    are sliced, not zeroed).
    """

    param: str
    dim: int
    scored: bool = True
    zeroed: bool = True


class PruningRule(ABC):
    """How one layer type takes part in channel pruning (see the module docstring).

    Subclasses implement ``flow`` and, unless they override ``shrink``, ``mask`` and
    ``scores``, describe their parameters with ``slices`` and their hyper-parameters with
    ``resize``.
    """

    @abstractmethod
    def flow(self, call: LayerCall) -> Any:
        """Map the input channels of one call to its output channels; return the output's
        ``ChannelLabels`` (a tuple of them for several outputs)."""

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        """The parameters that slot ``kind`` of ``module`` indexes."""
        return ()

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        """Update ``module``'s hyper-parameters after its tensors were sliced to ``counts``
        (kept positions per slot kind). The default: the layer has none to update."""
        return None

    def scale(self, module: nn.Module, kind: str) -> Tensor | None:
        """The per-channel scale network slimming ranks (a norm's gamma), if the layer has one."""
        return None

    def supports_reconstruction(self, module: nn.Module) -> bool:
        """Whether the reconstruction criterion may refit this layer as a consumer."""
        return False

    def scored_params(self, module: nn.Module, kind: str) -> list[str]:
        """Names of the parameters whose element scores ``scores`` reads for ``kind``."""
        return [s.param for s in self.slices(module, kind) if s.scored]

    def scores(self, module: nn.Module, kind: str, element: ElementScores) -> Tensor | None:
        """One score per position of slot ``kind``: element scores summed over the slice;
        ``None`` if no scored parameter has scores."""
        total = None
        for piece in self.slices(module, kind):
            scores = element(piece.param) if piece.scored else None
            if scores is None:
                continue
            per_index = scores.detach().transpose(0, piece.dim).flatten(1).sum(1).double()
            total = per_index if total is None else total + per_index
        return total

    def shrink(self, module: nn.Module, kept: Mapping[str, Tensor]) -> nn.Module:
        """A smaller copy of ``module`` holding the ``kept`` positions of each slot."""
        new = clone_module(module)
        for kind, positions in kept.items():
            for piece in self.slices(module, kind):
                tensor = get_tensor(new, piece.param)
                if tensor is not None:
                    set_tensor(new, piece.param, tensor.detach().index_select(piece.dim, positions))
        self.resize(new, {kind: len(positions) for kind, positions in kept.items()})
        return new

    @torch.no_grad()
    def mask(self, module: nn.Module, kept: Mapping[str, Tensor]) -> None:
        """Zero, in place, what ``shrink`` would remove."""
        for kind, positions in kept.items():
            for piece in self.slices(module, kind):
                tensor = get_tensor(module, piece.param)
                if tensor is None or not piece.zeroed:
                    continue
                tensor.index_fill_(piece.dim, complement(positions, tensor.shape[piece.dim]), 0.0)

    def after_surgery(self, module: nn.Module) -> None:
        """Called on every layer with this rule once surgery replaced what it replaces
        (the default does nothing)."""
        return None


def get_tensor(module: nn.Module, name: str) -> Tensor | None:
    """The parameter or buffer ``name`` (dotted, e.g. ``"out_proj.weight"``) of ``module``."""
    owner, _, attribute = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, attribute, None)


def set_tensor(module: nn.Module, name: str, value: Tensor) -> None:
    """Replace parameter or buffer ``name``; a parameter keeps its ``requires_grad``."""
    owner_name, _, attribute = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    old = getattr(owner, attribute)
    if isinstance(old, nn.Parameter):
        value = nn.Parameter(value, requires_grad=old.requires_grad)
    setattr(owner, attribute, value)


def complement(positions: Tensor, size: int) -> Tensor:
    """The indices in ``range(size)`` that are not in ``positions``."""
    mask = torch.ones(size, dtype=torch.bool)
    mask[positions] = False
    return torch.nonzero(mask).flatten()


# ---------------------------------------------------------------------------- registry

_RULES: dict[Any, PruningRule] = {}
_BUILTINS = ("mobiledl.compress.prune.layer_rules", "mobiledl.compress.prune.attention")
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTINS:
            importlib.import_module(module)


def register_pruning_rule(
    layer_type: type[nn.Module] | Callable[..., Any], rule: PruningRule
) -> None:
    """Use ``rule`` for every layer of exactly ``layer_type`` (or every call of a function).

    Replaces any rule registered for the type before, including a built-in one. A layer
    type with a rule is one call to the tracer: its ``forward`` may do anything.
    """
    _load_builtins()
    if not isinstance(rule, PruningRule):
        raise UserError(f"a pruning rule must be a PruningRule; got {type(rule).__name__}")
    is_layer = isinstance(layer_type, type) and issubclass(layer_type, nn.Module)
    if not is_layer and (isinstance(layer_type, type) or not callable(layer_type)):
        raise UserError(f"pruning rules are for nn.Module types or functions; got {layer_type!r}")
    _RULES[layer_type] = rule


def builtin_rule(*layer_types: Any) -> Callable[[type[PruningRule]], type[PruningRule]]:
    """Class decorator of the built-in rules: register one instance for ``layer_types``."""

    def register(cls: type[PruningRule]) -> type[PruningRule]:
        rule = cls()
        for layer_type in layer_types:
            _RULES[layer_type] = rule
        return cls

    return register


def rule_for(target: nn.Module | Callable[..., Any]) -> PruningRule | None:
    """The rule for a layer (by its type, else the nearest base class with one) or a function."""
    _load_builtins()
    if not isinstance(target, nn.Module):
        return _RULES.get(target)
    for cls in type(target).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def has_own_rule(module: nn.Module) -> bool:
    """True if a rule is registered for exactly this module's type (the tracer's leaves)."""
    _load_builtins()
    return type(module) in _RULES
