"""Channel pruning with physical removal: a smaller dense model that runs faster for real.

``prune_channels(model, example_input, criterion, sparsity=... | macs_ratio=...)`` returns a
pruned deep copy. Steps:

1. ``build_dependency_graph`` groups coupled channels (``graph.py``).
2. Each unit of a group gets an importance: the criterion's element scores summed over the
   unit's slices in every layer of the group (weights of producers and of consumers):

   - ``l1`` / ``l2``: weight magnitude, the filter-norm ranking of Li et al. 2017
     ("Pruning Filters for Efficient ConvNets");
   - ``bn_scale`` (alias ``bn``): ``|gamma|`` of the group's batch norms, network slimming
     (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
     Slimming"); a group without batch norm falls back to ``l1``;
   - ``taylor``: first-order Taylor estimate of the loss change (Molchanov et al. 2019,
     "Importance Estimation for Neural Network Pruning"); ``hessian``: Optimal Brain Damage;
   - ``reconstruction``: channel selection that preserves the next layers' outputs, then a
     least-squares refit of those layers (He et al. 2017; Luo et al. 2017, ThiNet), see
     ``reconstruction.py``.

3. A plan picks how many units each group keeps: the same fraction in every group
   (``scope="layer"``) or one global ranking of group-normalized scores
   (``scope="global"``). ``macs_ratio`` bisects the pruning amount until the MACs kept
   (per-layer counts from ``mobiledl.profile``) are within 2% of the target, refining greedily
   by the least importance lost per MAC. Kept counts are multiples of ``round_to`` (channel
   counts that are not multiples of 8 can make ONNX Runtime slower), and each group keeps at
   least ``round_to`` channels. ``scope="latency"`` instead measures in the engine how much
   time each group's channels save and meets the MAC target with the cuts whose importance
   lost minus time saved is cheapest per MAC (NetAdapt-style, ``latency.py``).
4. ``prune_groups`` rebuilds the layers (``surgery.py``). The result is checked against the
   masked original (same output on ``example_input``) before it is returned.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mobiledl.compress.prune.graph import ChannelGroup, DependencyGraph, build_dependency_graph
from mobiledl.compress.prune.latency import LatencyProbe, segment_latency_slopes
from mobiledl.compress.prune.reconstruction import reconstruction_importance, refit_consumers
from mobiledl.compress.prune.surgery import mask_channels, plan_cut, prune_groups
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.profile import profile_model

CRITERIA = ("l1", "l2", "bn_scale", "taylor", "hessian", "reconstruction")
SCOPES = ("layer", "global", "latency")
MACS_TOLERANCE = 0.02
_ALIASES = {"bn": "bn_scale"}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def prune_channels(
    model: nn.Module,
    example_input: Tensor,
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

    Raises ``UserError`` for bad arguments, an untraceable model, or a ``per_layer`` layer
    that cannot be pruned. Channels the graph cannot map stay, with a ``UserWarning``.
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
    )
    pruned = prune_groups(copy.deepcopy(model), plan.graph, plan.keep)
    masked = mask_channels(copy.deepcopy(model), plan.graph, plan.keep)
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
    example_input: Tensor,
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
) -> ChannelPlan:
    """The channels ``prune_channels`` would keep (same arguments); ``model`` is unchanged.

    Feed the plan to ``surgery.prune_groups`` (remove) or ``surgery.mask_channels`` (zero).
    """
    if isinstance(sparsity, Mapping):
        sparsity, per_layer = None, {**sparsity, **(per_layer or {})}
    criterion = _check_args(criterion, sparsity, macs_ratio, round_to, task, per_layer, scope)
    graph = build_dependency_graph(model, example_input)
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
    return ChannelPlan(graph, planner.keep(counts), criterion)


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
        return [
            _bn_importance(model, group) if _has_norm(model, group) else scores
            for group, scores in zip(graph.groups, l1, strict=True)
        ]
    return _weight_importance(model, graph, criterion, task, num_batches)


def _weight_importance(
    model: nn.Module,
    graph: DependencyGraph,
    criterion: str,
    task: TensorTask | None,
    num_batches: int,
) -> list[Tensor]:
    """Element scores of ``weight_scores`` summed over each unit's slices of every layer."""
    from mobiledl.compress.prune.criteria import weight_scores

    scores = weight_scores(model, criterion, task, num_batches=num_batches)
    importance = []
    for group in graph.groups:
        total = torch.zeros(group.width, dtype=torch.float64)
        for member in group.members:
            element = scores.get(f"{member.slot.module}.weight")
            if element is None:
                continue
            dim = 1 if member.slot.kind == "in" else 0
            per_index = element.detach().transpose(0, dim).flatten(1).sum(1).double()
            total.index_add_(0, member.units, per_index)
        importance.append(total)
    return importance


def _has_norm(model: nn.Module, group: ChannelGroup) -> bool:
    return any(_is_affine_norm(model.get_submodule(name)) for name in group.layers)


def _is_affine_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORMS) and module.affine


def _bn_importance(model: nn.Module, group: ChannelGroup) -> Tensor:
    """Sum of ``|gamma|`` over the group's batch norms (Liu et al. 2017)."""
    total = torch.zeros(group.width, dtype=torch.float64)
    for member in group.members:
        module = model.get_submodule(member.slot.module)
        if _is_affine_norm(module):
            total.index_add_(0, member.units, module.weight.detach().abs().double())
    return total


# ---------------------------------------------------------------------------- planning


@dataclass
class _Segment:
    """Units of one group that share their layers; their kept count is rounded together."""

    group: int
    frozen: Tensor  # units that must stay
    removal: Tensor  # prunable units, least important first
    weights: Tensor  # their scores, normalized to mean 1 within the segment
    step: int  # kept counts are multiples of this many units
    fixed: float | None = None  # a per-layer sparsity, outside the search

    @property
    def size(self) -> int:
        return len(self.frozen) + len(self.removal)

    def counts(self) -> list[int]:
        """Allowed kept counts, ascending: multiples of ``step`` covering the frozen units."""
        lowest = self.step * max(1, math.ceil(len(self.frozen) / self.step))
        allowed = list(range(lowest, self.size + 1, self.step))
        return allowed if allowed and allowed[-1] == self.size else [*allowed, self.size]

    def nearest(self, target: float) -> int:
        return min(self.counts(), key=lambda count: (abs(count - target), -count))

    def kept(self, count: int) -> Tensor:
        extra = count - len(self.frozen)
        return torch.cat([self.frozen, self.removal[len(self.removal) - extra :]])

    def lost(self, count: int, new_count: int) -> float:
        """Normalized importance of the units that change state between two counts."""
        start = len(self.removal) - (max(count, new_count) - len(self.frozen))
        stop = len(self.removal) - (min(count, new_count) - len(self.frozen))
        return float(self.weights[start:stop].sum())

    def neighbour(self, count: int, down: bool) -> int | None:
        allowed = self.counts()
        index = allowed.index(count) + (-1 if down else 1)
        return allowed[index] if 0 <= index < len(allowed) else None


class ChannelPlanner:
    """Chooses kept counts per segment and estimates the MACs of a plan.

    MACs come from ``profile_model`` per layer; a convolution or linear layer keeping a
    fraction ``a`` of its inputs and ``b`` of its outputs keeps ``a * b`` of its MACs (a
    depthwise one ``a``), which is exact for these layers.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: DependencyGraph,
        importance: list[Tensor],
        example_input: Tensor,
        round_to: int,
    ) -> None:
        self.graph = graph
        self.segments = [
            segment
            for index, group in enumerate(graph.groups)
            if group.prunable
            for segment in _segments(index, group, importance[index], round_to)
        ]
        profile = profile_model(model, example_input[:1])
        self.total_macs = profile.macs
        self.layer_macs = {layer.name: layer.macs for layer in profile.layers}

    def fix_layers(self, per_layer: Mapping[str, float]) -> None:
        """Give the segments that contain each named layer's outputs a fixed sparsity."""
        for raw_name, value in per_layer.items():
            name = raw_name.removesuffix(".weight")
            matched = [s for s in self.segments if name in self._outputs(s)]
            if not matched:
                raise UserError(_unprunable_reason(self.graph, name))
            for segment in matched:
                segment.fixed = value

    def _outputs(self, segment: _Segment) -> set[str]:
        group = self.graph.groups[segment.group]
        return {m.slot.module for m in group.members if m.slot.kind != "in"}

    def counts_at(self, amount: float, scope: str) -> list[int]:
        """Kept count per segment when removing ``amount`` of the prunable units."""
        if scope == "global":
            return self._global_counts(amount)
        return [
            s.nearest(s.size * (1.0 - (amount if s.fixed is None else s.fixed)))
            for s in self.segments
        ]

    def _global_counts(self, amount: float) -> list[int]:
        """Remove the ``amount`` least important units of all free segments together."""
        free = [(i, s.weights) for i, s in enumerate(self.segments) if s.fixed is None]
        pool = torch.cat([torch.zeros(0, dtype=torch.float64), *(w for _, w in free)])
        owner = torch.cat(
            [torch.zeros(0, dtype=torch.long), *(torch.full((len(w),), i) for i, w in free)]
        )
        lowest = torch.argsort(pool, stable=True)[: round(amount * len(pool))]
        removed = torch.bincount(owner[lowest], minlength=len(self.segments)).tolist()
        return [
            s.nearest(s.size * (1.0 - s.fixed) if s.fixed is not None else s.size - r)
            for s, r in zip(self.segments, removed, strict=True)
        ]

    def keep(self, counts: list[int]) -> dict[int, Tensor]:
        """Kept units of each prunable group, sorted."""
        kept: dict[int, list[Tensor]] = {}
        for segment, count in zip(self.segments, counts, strict=True):
            kept.setdefault(segment.group, []).append(segment.kept(count))
        return {group: torch.sort(torch.cat(parts)).values for group, parts in kept.items()}

    def macs(self, counts: list[int]) -> int:
        """Estimated MACs of the model pruned to ``counts``."""
        fractions: dict[str, float] = {}
        for index, units in self.keep(counts).items():
            group = self.graph.groups[index]
            mask = torch.zeros(group.width, dtype=torch.bool)
            mask[units] = True
            for member in group.members:
                kept = float(mask[member.units].float().mean())
                name = member.slot.module
                fractions[name] = fractions.get(name, 1.0) * kept
        saved = sum(self.layer_macs.get(name, 0) * (1.0 - f) for name, f in fractions.items())
        return round(self.total_macs - saved)

    def search(self, ratio: float, scope: str) -> list[int]:
        """Counts whose MACs are closest to ``ratio`` of the unpruned MACs."""

        def kept_ratio(counts: list[int]) -> float:
            return self.macs(counts) / self.total_macs

        low, high = 0.0, 1.0
        if kept_ratio(self.counts_at(high, scope)) > ratio:
            return self._out_of_reach(ratio, self.counts_at(high, scope))
        for _ in range(40):
            middle = (low + high) / 2
            if kept_ratio(self.counts_at(middle, scope)) > ratio:
                low = middle
            else:
                high = middle
        candidates = [self.counts_at(low, scope), self.counts_at(high, scope)]
        best = min(candidates, key=lambda c: abs(kept_ratio(c) - ratio))
        return self._refine(best, ratio)

    def _out_of_reach(self, ratio: float, counts: list[int]) -> list[int]:
        """Warn that ``ratio`` cannot be met; return ``counts``, the furthest cut."""
        warnings.warn(
            f"macs_ratio {ratio} is out of reach with round_to and frozen channels; "
            f"pruning as far as possible ({self.macs(counts) / self.total_macs:.3f})",
            stacklevel=4,
        )
        return counts

    def full_counts(self) -> list[int]:
        """Every free segment whole, fixed segments at their per-layer sparsity."""
        return [
            s.size if s.fixed is None else s.nearest(s.size * (1.0 - s.fixed))
            for s in self.segments
        ]

    def latency_search(self, ratio: float, slopes: list[float]) -> list[int]:
        """Counts near ``ratio`` of the MACs that save the most engine time for the importance
        they lose (``slopes``: ms saved per unit, measured by
        ``latency.segment_latency_slopes``). From the whole model, each step cuts the
        segment whose move has the lowest cost per fraction of MACs removed, where cost =
        fraction of the importance lost - fraction of the latency saved; then the counts are
        refined to the target like ``search``."""
        counts = self.full_counts()
        total_ms = sum(s * n for s, n in zip(slopes, counts, strict=True)) or 1.0
        total_units = float(sum(len(s.removal) for s in self.segments)) or 1.0
        while self.macs(counts) > ratio * self.total_macs:
            move = self._cheapest_latency_move(counts, slopes, total_ms, total_units)
            if move is None:
                return self._out_of_reach(ratio, counts)
            counts = move
        return self._refine(counts, ratio)

    def _cheapest_latency_move(
        self, counts: list[int], slopes: list[float], total_ms: float, total_units: float
    ) -> list[int] | None:
        current = self.macs(counts)
        best, best_cost = None, math.inf
        for index, segment in enumerate(self.segments):
            new = segment.neighbour(counts[index], down=True) if segment.fixed is None else None
            if new is None:
                continue
            trial = [*counts[:index], new, *counts[index + 1 :]]
            macs_saved = (current - self.macs(trial)) / self.total_macs
            if macs_saved <= 0:
                continue
            lost = segment.lost(counts[index], new) / total_units
            saved = slopes[index] * (counts[index] - new) / total_ms
            cost = (lost - saved) / macs_saved
            if cost < best_cost:
                best, best_cost = trial, cost
        return best

    def _refine(self, counts: list[int], ratio: float) -> list[int]:
        """Move one segment by one step at a time, the least importance per MAC first."""
        for _ in range(8 * len(self.segments)):
            error = self.macs(counts) / self.total_macs - ratio
            if abs(error) <= MACS_TOLERANCE * ratio:
                break
            move = self._best_move(counts, down=error > 0)
            if move is None:
                break
            new_error = self.macs(move) / self.total_macs - ratio
            if abs(new_error) >= abs(error):
                break
            counts = move
        return counts

    def _best_move(self, counts: list[int], down: bool) -> list[int] | None:
        current = self.macs(counts)
        best, best_cost = None, math.inf
        for index, segment in enumerate(self.segments):
            new = segment.neighbour(counts[index], down) if segment.fixed is None else None
            if new is None:
                continue
            trial = [*counts[:index], new, *counts[index + 1 :]]
            change = abs(current - self.macs(trial))
            if change == 0:
                continue
            lost = segment.lost(counts[index], new)
            cost = lost / change if down else -lost / change
            if cost < best_cost:
                best, best_cost = trial, cost
        return best


def _segments(index: int, group: ChannelGroup, scores: Tensor, round_to: int) -> list[_Segment]:
    segments = []
    for units in group.segments():
        frozen = units[group.frozen[units]]
        free = units[~group.frozen[units]]
        order = torch.argsort(scores[free], stable=True)
        weights = scores[free][order].double()
        mean = float(weights.mean()) if len(weights) else 0.0
        weights = weights / mean if mean > 0 else torch.ones_like(weights)
        step = _step(group, units, round_to)
        segments.append(_Segment(index, frozen, free[order], weights, step))
    return segments


def _step(group: ChannelGroup, units: Tensor, round_to: int) -> int:
    """Units per rounding step so every member of the segment keeps a multiple of round_to."""
    step = 1
    for member in group.members:
        counts = torch.bincount(member.units, minlength=group.width)[units]
        if counts.max() == 0:
            continue
        per_unit = int(counts[counts > 0].min())
        step = math.lcm(step, round_to // math.gcd(round_to, per_unit))
    return step


def _unprunable_reason(graph: DependencyGraph, name: str) -> str:
    if not graph.groups_of(name):
        return f"per_layer: no prunable layer '{name}' (not a convolution, linear or batch norm)"
    return (
        f"per_layer: layer '{name}' cannot be pruned: its output channels are tied to the "
        "model's input or output, or to an operation the channel graph cannot map"
    )


# ---------------------------------------------------------------------------- checks


def _check_equivalent(masked: nn.Module, pruned: nn.Module, example_input: Tensor) -> None:
    """The pruned model must compute what the masked model computes (else: a bug here)."""
    x = example_input[:1]
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


def _eval_output(model: nn.Module, x: Tensor) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        model.train(was_training)
    return output[0] if isinstance(output, (tuple, list)) else output
