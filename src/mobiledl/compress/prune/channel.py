"""Channel pruning with physical removal: a smaller dense model that runs faster for real.

``prune_channels(model, example_input, criterion, sparsity=... | macs_ratio=...)`` returns a
pruned deep copy. Steps:

1. ``build_dependency_graph`` groups coupled channels (``graph.py``).
2. Each unit of a group gets an importance: the criterion's element scores summed over the
   unit's slices in every layer of the group (weights of producers and of consumers; which
   parameters a layer contributes is its pruning rule's, ``rules.py``):

   - ``l1`` / ``l2``: weight magnitude, the filter-norm ranking of Li et al. 2017
     ("Pruning Filters for Efficient ConvNets");
   - ``bn_scale`` (alias ``bn``): ``|gamma|`` of the group's batch (and group, instance)
     norms, network slimming (Liu et al. 2017, "Learning Efficient Convolutional Networks
     through Network Slimming"); a group without such a norm falls back to ``l1``;
   - ``taylor``: first-order Taylor estimate of the loss change (Molchanov et al. 2019,
     "Importance Estimation for Neural Network Pruning"); ``hessian``: Optimal Brain Damage;
   - ``reconstruction``: channel selection that preserves the next layers' outputs, then a
     least-squares refit of those layers (He et al. 2017; Luo et al. 2017, ThiNet), see
     ``reconstruction.py``.

3. A plan picks how many units each group keeps (``planner.py``): the same fraction in every
   group (``scope="layer"``) or one global ranking of group-normalized scores
   (``scope="global"``). ``macs_ratio`` bisects the pruning amount until the MACs kept
   (per-layer counts from ``mobiledl.profile``) are within 2% of the target, refining greedily
   by the least importance lost per MAC. Kept counts are multiples of ``round_to`` (channel
   counts that are not multiples of 8 can make ONNX Runtime slower), and each group keeps at
   least ``round_to`` channels. ``scope="latency"`` instead measures in the engine how much
   time each group's channels save and meets the MAC target with the cuts whose importance
   lost minus time saved is cheapest per MAC (NetAdapt-style, ``latency.py``).
4. ``prune_groups`` rebuilds the layers (``surgery.py``). The result is checked against the
   masked original (same output on ``example_input``) before it is returned.

A missed MAC target and the patterns the graph could not map end in one ``UserWarning``
(how far off, and which layers blocked it); with ``strict`` each is a ``UserError``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mobiledl.compress.prune.graph import (
    ChannelGroup,
    DependencyGraph,
    GroupMember,
    build_dependency_graph,
    unmapped_message,
)
from mobiledl.compress.prune.latency import LatencyProbe, segment_latency_slopes
from mobiledl.compress.prune.planner import MACS_TOLERANCE, ChannelPlanner
from mobiledl.compress.prune.reconstruction import reconstruction_importance, refit_consumers
from mobiledl.compress.prune.rules import PruningRule, rule_for
from mobiledl.compress.prune.surgery import mask_channels, plan_cut, prune_groups
from mobiledl.core.clone import clone_module
from mobiledl.core.inputs import Inputs, call_model, slice_batch
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "hessian", "reconstruction")
SCOPES = ("layer", "global", "latency")
_ALIASES = {"bn": "bn_scale"}

__all__ = [
    "CRITERIA",
    "MACS_TOLERANCE",
    "SCOPES",
    "ChannelPlan",
    "ChannelPlanner",
    "channel_importance",
    "plan_channels",
    "prune_channels",
]


def prune_channels(
    model: nn.Module,
    example_input: Inputs,
    criterion: str = "l1",
    *,
    sparsity: float | Mapping[str, float] | None = None,
    macs_ratio: float | None = None,
    round_to: int = 8,
    task: TensorTask | None = None,
    per_layer: Mapping[str, float] | None = None,
    scope: str = "layer",
    num_batches: int = 8,
    latency: LatencyProbe | None = None,
    strict: bool = False,
) -> nn.Module:
    """A deep copy of ``model`` with channels physically removed.

    - ``sparsity``: fraction of each group's channels to remove (``scope="layer"``) or of
      all prunable channels (``scope="global"``); a dict is taken as ``per_layer``.
    - ``macs_ratio``: fraction of the MACs to keep instead (bisected to within 2%).
    - ``per_layer``: ``{layer name: sparsity}`` for the groups those layers' outputs belong to
      (names as in ``named_modules``, a ``.weight`` suffix is ignored); these groups are
      excluded from the ``sparsity`` / ``macs_ratio`` search. Alone, it prunes only them.
    - ``scope``: ``layer`` (the same fraction of every group), ``global`` (one ranking), or
      ``latency`` (with ``macs_ratio``: the MAC target met by the cuts whose importance lost
      minus engine time saved is cheapest per MAC, ``latency`` saying how to measure;
      NetAdapt-style, see ``latency.py``).
    - ``round_to``: kept channel counts are multiples of this, and at least this many.
    - ``task``: data for ``taylor``, ``hessian`` (``num_batches`` batches) and
      ``reconstruction``.
    - ``strict``: a pattern the graph cannot map, or a MAC target missed by more than 2%,
      is a ``UserError`` instead of a warning.

    Raises ``UserError`` for bad arguments, an untraceable model, or a ``per_layer`` layer
    that cannot be pruned. Channels the graph cannot map stay; they and a missed target
    are reported in one ``UserWarning``.
    """
    plan = plan_channels(
        model,
        example_input,
        criterion,
        sparsity=sparsity,
        macs_ratio=macs_ratio,
        round_to=round_to,
        task=task,
        per_layer=per_layer,
        scope=scope,
        num_batches=num_batches,
        latency=latency,
        strict=strict,
    )
    pruned = prune_groups(clone_module(model), plan.graph, plan.keep)
    masked = mask_channels(clone_module(model), plan.graph, plan.keep)
    _check_equivalent(masked, pruned, example_input)
    if plan.criterion == "reconstruction":
        refit_consumers(pruned, model, plan.graph.layers, plan_cut(plan.graph, plan.keep), task)
    return pruned


@dataclass
class ChannelPlan:
    """What ``prune_channels`` removes: the graph and, per group index, the units kept."""

    graph: DependencyGraph
    keep: dict[int, Tensor]
    criterion: str


def plan_channels(
    model: nn.Module,
    example_input: Inputs,
    criterion: str = "l1",
    *,
    sparsity: float | Mapping[str, float] | None = None,
    macs_ratio: float | None = None,
    round_to: int = 8,
    task: TensorTask | None = None,
    per_layer: Mapping[str, float] | None = None,
    scope: str = "layer",
    num_batches: int = 8,
    latency: LatencyProbe | None = None,
    strict: bool = False,
) -> ChannelPlan:
    """The channels ``prune_channels`` would keep (same arguments); ``model`` is unchanged.

    Feed the plan to ``surgery.prune_groups`` (remove) or ``surgery.mask_channels`` (zero).
    """
    if isinstance(sparsity, Mapping):
        sparsity, per_layer = None, {**sparsity, **(per_layer or {})}
    criterion = _check_args(criterion, sparsity, macs_ratio, round_to, task, per_layer, scope)
    graph = build_dependency_graph(model, example_input, warn=False, strict=strict)
    importance = channel_importance(model, graph, criterion, task, num_batches)
    planner = ChannelPlanner(model, graph, importance, example_input, round_to)
    planner.fix_layers(per_layer or {})
    if scope == "latency":
        slopes = segment_latency_slopes(model, planner, example_input, latency or LatencyProbe())
        assert macs_ratio is not None  # _check_args
        counts = planner.latency_search(macs_ratio, slopes)
    elif macs_ratio is not None:
        counts = planner.search(macs_ratio, scope)
    else:
        counts = planner.counts_at(sparsity or 0.0, scope)
    _report(planner, counts, macs_ratio, strict)
    return ChannelPlan(graph, planner.keep(counts), criterion)


def _report(
    planner: ChannelPlanner, counts: list[int], macs_ratio: float | None, strict: bool
) -> None:
    """One warning (an error with ``strict``) for a missed target and unmapped patterns."""
    shortfall = planner.shortfall(counts, macs_ratio) if macs_ratio is not None else None
    if shortfall is not None and strict:
        raise UserError(shortfall + " (strict)")
    if shortfall is not None:
        warnings.warn(shortfall, stacklevel=3)
    elif planner.graph.warnings:
        warnings.warn(unmapped_message(planner.graph), stacklevel=3)


def _check_args(
    criterion: str,
    sparsity: float | None,
    macs_ratio: float | None,
    round_to: int,
    task: TensorTask | None,
    per_layer: Mapping[str, float] | None,
    scope: str,
) -> str:
    """Validate ``prune_channels`` arguments; return the canonical criterion name."""
    criterion = _ALIASES.get(criterion, criterion)
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    if scope not in SCOPES:
        raise UserError(f"unknown scope '{scope}'; choose one of {', '.join(SCOPES)}")
    if sparsity is not None and macs_ratio is not None:
        raise UserError("give either sparsity or macs_ratio, not both")
    if scope == "latency" and macs_ratio is None:
        raise UserError("scope 'latency' needs macs_ratio: it meets a MAC target at least latency")
    if sparsity is None and macs_ratio is None and not per_layer:
        raise UserError("give sparsity, macs_ratio or per_layer to say how much to prune")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise UserError(f"sparsity must lie in [0, 1); got {sparsity}")
    if macs_ratio is not None and not 0.0 < macs_ratio <= 1.0:
        raise UserError(f"macs_ratio must lie in (0, 1]; got {macs_ratio}")
    for name, value in (per_layer or {}).items():
        if not 0.0 <= value < 1.0:
            raise UserError(f"sparsity of layer '{name}' must lie in [0, 1); got {value}")
    if round_to < 1:
        raise UserError(f"round_to must be >= 1; got {round_to}")
    if criterion in ("taylor", "hessian", "reconstruction") and task is None:
        raise UserError(f"criterion '{criterion}' needs a task: it estimates from data")
    return criterion


# ---------------------------------------------------------------------------- importance


def channel_importance(
    model: nn.Module,
    graph: DependencyGraph,
    criterion: str,
    task: TensorTask | None = None,
    num_batches: int = 8,
) -> list[Tensor]:
    """One score per unit of every group (larger = more important), in ``graph.groups`` order."""
    if criterion == "reconstruction":
        return reconstruction_importance(model, graph, task)
    if criterion == "bn_scale":
        l1 = _weight_importance(model, graph, "l1", task, num_batches)
        scales = [_scale_importance(model, group) for group in graph.groups]
        return [s if s is not None else w for s, w in zip(scales, l1, strict=True)]
    return _weight_importance(model, graph, criterion, task, num_batches)


def _weight_importance(
    model: nn.Module,
    graph: DependencyGraph,
    criterion: str,
    task: TensorTask | None,
    num_batches: int,
) -> list[Tensor]:
    """Element scores summed, by each member's rule, over each unit's slices of every layer."""
    from mobiledl.compress.prune.criteria import parameter_scores, weight_scores

    scores = weight_scores(model, criterion, task, num_batches=num_batches)
    extra = [name for name in _scored_params(model, graph) if name not in scores]
    if extra:
        scores.update(parameter_scores(model, extra, criterion, task, num_batches=num_batches))
    importance = []
    for group in graph.groups:
        total = torch.zeros(group.width, dtype=torch.float64)
        for member, module, rule in _members(model, group):
            lookup = _lookup(scores, member.slot.module)
            per_index = rule.scores(module, member.slot.kind, lookup)
            if per_index is not None:
                total.index_add_(0, member.units, per_index)
        importance.append(total)
    return importance


def _members(
    model: nn.Module, group: ChannelGroup
) -> list[tuple[GroupMember, nn.Module, PruningRule]]:
    """(member, layer, its rule) for every member surgery cuts."""
    found = []
    for member in group.real_members:
        module = model.get_submodule(member.slot.module)
        rule = rule_for(module)
        assert isinstance(rule, PruningRule)  # every slot was registered by a rule
        found.append((member, module, rule))
    return found


def _scored_params(model: nn.Module, graph: DependencyGraph) -> list[str]:
    """Full names of the parameters the groups' rules score, each once."""
    params = dict(model.named_parameters())
    names: dict[str, None] = {}
    for group in graph.groups:
        for member, module, rule in _members(model, group):
            for param in rule.scored_params(module, member.slot.kind):
                name = f"{member.slot.module}.{param}"
                if name in params:  # a buffer or a missing tensor has no scores
                    names[name] = None
    return list(names)


def _lookup(scores: Mapping[str, Tensor], layer: str) -> Callable[[str], Tensor | None]:
    return lambda param: scores.get(f"{layer}.{param}")


def _scale_importance(model: nn.Module, group: ChannelGroup) -> Tensor | None:
    """Sum of the group's norm scales ``|gamma|`` (Liu et al. 2017); ``None`` without norms."""
    total, found = torch.zeros(group.width, dtype=torch.float64), False
    for member, module, rule in _members(model, group):
        scale = rule.scale(module, member.slot.kind)
        if scale is not None:
            total.index_add_(0, member.units, scale)
            found = True
    return total if found else None


# ---------------------------------------------------------------------------- checks


def _check_equivalent(masked: nn.Module, pruned: nn.Module, example_input: Inputs) -> None:
    """The pruned model must compute what the masked model computes (else: a bug here)."""
    x = slice_batch(example_input, 0, 1)
    expected = _eval_output(masked, x)
    try:
        actual = _eval_output(pruned, x)
    except Exception as exc:
        raise RuntimeError(f"channel pruning broke the model ({exc}); please report") from exc
    scale = float(expected.abs().max()) + 1.0
    if actual.shape != expected.shape or not torch.allclose(
        actual, expected, rtol=1e-3, atol=1e-4 * scale
    ):
        raise RuntimeError(
            "channel pruning changed the model beyond the removed channels; please report"
        )


def _eval_output(model: nn.Module, x: Inputs) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, x)
    finally:
        model.train(was_training)
    return output[0] if isinstance(output, (tuple, list)) else output
