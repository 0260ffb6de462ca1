"""How many channels each group keeps: the search behind ``prune_channels``.

A *segment* is the units of one group that appear in the same layers (after a concatenation,
each concatenated layer's channels are a segment); its kept count is a multiple of a step,
so that every layer keeps a multiple of ``round_to`` channels (counts that are not
multiples of 8 can make ONNX Runtime slower), and at least one step. The planner

- keeps the same fraction of every segment (``scope="layer"``) or ranks group-normalized
  scores globally (``scope="global"``);
- for a MAC target, bisects that amount, then moves one segment by one step at a time (the
  least importance lost per MAC first) and, where single steps cannot land within 2%,
  searches moves of several segments at once (a beam search): models whose layers are few
  channels wide, such as a DenseNet's 12-channel growth layers with ``round_to=8``, only
  have coarse steps;
- estimates the MACs of a plan from the per-layer counts of ``mobiledl.profile``: a layer
  keeps the product of its slots' kept fractions of its MACs, or what its rule's cost terms
  say (a grouped convolution keeps the fraction of its groups, attention the fraction of
  its heads for the attention products);
- explains a missed target in one line: how far off, whether even the most pruning allowed
  keeps too much, and the layers that blocked it (held, unsupported or coarse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mobiledl.compress.prune.graph import ChannelGroup, DependencyGraph
from mobiledl.core.inputs import Inputs, slice_batch
from mobiledl.errors import UserError
from mobiledl.profile import profile_model

MACS_TOLERANCE = 0.02
#: Beam search for MAC targets that single steps miss: candidates kept and moves deep.
_BEAM_WIDTH = 8
_BEAM_DEPTH = 4


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
    depthwise one ``a``), which is exact for these layers; a layer with cost terms
    (``DependencyGraph.costs``) keeps what they say.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: DependencyGraph,
        importance: list[Tensor],
        example_input: Inputs,
        round_to: int,
    ) -> None:
        self.graph = graph
        self.segments = [
            segment
            for index, group in enumerate(graph.groups)
            if group.prunable
            for segment in _segments(index, group, importance[index], round_to)
        ]
        self.forced = {  # groups that lose only the units a slice drops
            index: torch.nonzero(~group.dropped).flatten()
            for index, group in enumerate(graph.groups)
            if group.dropped.any() and not group.prunable
        }
        self.round_to = round_to
        profile = profile_model(model, slice_batch(example_input, 0, 1))
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
        return {m.slot.module for m in group.real_members if m.slot.kind != "in"}

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
        """Kept units of each group that loses some, sorted."""
        kept: dict[int, list[Tensor]] = {}
        for segment, count in zip(self.segments, counts, strict=True):
            kept.setdefault(segment.group, []).append(segment.kept(count))
        for index, units in self.forced.items():
            kept[index] = [units]
        return {group: torch.sort(torch.cat(parts)).values for group, parts in kept.items()}

    def macs(self, counts: list[int]) -> int:
        """Estimated MACs of the model pruned to ``counts``."""
        fractions: dict[str, dict[str, float]] = {}
        for index, units in self.keep(counts).items():
            group = self.graph.groups[index]
            mask = torch.zeros(group.width, dtype=torch.bool)
            mask[units] = True
            for member in group.members:
                kept = float(mask[member.units].float().mean())
                fractions.setdefault(member.slot.module, {})[member.slot.kind] = kept
        saved = sum(self._saved(name, kinds) for name, kinds in fractions.items())
        return round(self.total_macs - saved)

    def _saved(self, name: str, kept: dict[str, float]) -> float:
        """MACs layer ``name`` saves when its slots keep the fractions ``kept``."""
        macs = self.layer_macs.get(name, 0)
        terms = self.graph.costs.get(name)
        if not terms:
            return macs * (1.0 - math.prod(kept.values()))
        per_sample = [(term / self.graph.batch, kinds) for term, kinds in terms]
        covered = sum(term for term, _ in per_sample)
        scale = min(1.0, macs / covered) if covered else 0.0
        return sum(
            term * scale * (1.0 - math.prod(kept.get(kind, 1.0) for kind in kinds))
            for term, kinds in per_sample
        )

    def search(self, ratio: float, scope: str) -> list[int]:
        """Counts whose MACs are closest to ``ratio`` of the unpruned MACs."""

        def kept_ratio(counts: list[int]) -> float:
            return self.macs(counts) / self.total_macs

        low, high = 0.0, 1.0
        if kept_ratio(self.counts_at(high, scope)) > ratio:
            return self.counts_at(high, scope)  # out of reach: prune as far as allowed
        for _ in range(40):
            middle = (low + high) / 2
            if kept_ratio(self.counts_at(middle, scope)) > ratio:
                low = middle
            else:
                high = middle
        candidates = [self.counts_at(low, scope), self.counts_at(high, scope)]
        best = min(candidates, key=lambda c: abs(kept_ratio(c) - ratio))
        return self._refine(best, ratio)

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
                return counts  # out of reach: prune as far as allowed
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
        """Move one segment by one step at a time, the least importance per MAC first; where
        that stops outside the tolerance, search moves of several segments at once."""
        for _ in range(8 * len(self.segments)):
            error = self._error(counts, ratio)
            if abs(error) <= MACS_TOLERANCE * ratio:
                return counts
            move = self._best_move(counts, down=error > 0)
            if move is None or abs(self._error(move, ratio)) >= abs(error):
                break
            counts = move
        return self._search_moves(counts, ratio)

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

    def _error(self, counts: list[int], ratio: float) -> float:
        return self.macs(counts) / self.total_macs - ratio

    def _search_moves(self, counts: list[int], ratio: float) -> list[int]:
        """Beam search over one-step moves of any segment, either way, for counts within the
        tolerance (coarse steps may need several segments to move at once); among those,
        the counts that lose the least importance; else the closest found."""
        best, best_key = counts, self._key(counts, counts, ratio)
        beam, seen = [counts], {tuple(counts)}
        for _ in range(_BEAM_DEPTH):
            children = [child for state in beam for child in self._moves(state, seen)]
            if not children:
                break
            children.sort(key=lambda child: abs(self._error(child, ratio)))
            beam = children[:_BEAM_WIDTH]
            for child in beam:
                key = self._key(child, counts, ratio)
                if key < best_key:
                    best, best_key = child, key
            if best_key[0] <= MACS_TOLERANCE * ratio:
                break
        return best

    def _moves(self, counts: list[int], seen: set[tuple[int, ...]]) -> list[list[int]]:
        """Counts one step away (one free segment up or down) not seen before."""
        moves = []
        for index, segment in enumerate(self.segments):
            for down in (True, False):
                new = segment.neighbour(counts[index], down) if segment.fixed is None else None
                move = None if new is None else [*counts[:index], new, *counts[index + 1 :]]
                if move is not None and tuple(move) not in seen:
                    seen.add(tuple(move))
                    moves.append(move)
        return moves

    def _key(self, counts: list[int], start: list[int], ratio: float) -> tuple[float, float]:
        """Rank of a candidate: its MAC error (all within tolerance rank equal), then the
        importance it loses relative to ``start``."""
        error = max(abs(self._error(counts, ratio)), MACS_TOLERANCE * ratio)
        lost = sum(
            segment.lost(a, b) * (1 if b < a else -1)
            for segment, a, b in zip(self.segments, start, counts, strict=True)
            if a != b
        )
        return error, lost

    def shortfall(self, counts: list[int], ratio: float) -> str | None:
        """One line on how far ``counts`` miss ``ratio`` and why; ``None`` within tolerance."""
        achieved = self.macs(counts) / self.total_macs
        if abs(achieved - ratio) <= MACS_TOLERANCE * ratio:
            return None
        parts = [
            f"macs_ratio {ratio} not met: the pruned model keeps {achieved:.3f} of the MACs "
            f"({(achieved - ratio) / ratio:+.1%}; tolerance {MACS_TOLERANCE:.0%})"
        ]
        lowest = self.macs(self.counts_at(1.0, "layer")) / self.total_macs
        if achieved > ratio and lowest > ratio * (1 + MACS_TOLERANCE):
            parts.append(
                f"even the most pruning allowed keeps {lowest:.3f} (every group keeps at least "
                f"round_to={self.round_to} channels, and the channels below stay)"
            )
        else:
            parts.append(
                "the allowed kept counts are too coarse to land closer (multiples of "
                f"round_to={self.round_to} channels, whole groups and heads; a smaller "
                "round_to gives finer steps)"
            )
        coarse = self._coarse()
        if coarse:
            parts.append("coarse steps: " + ", ".join(coarse[:6]))
        if self.graph.held:
            parts.append("channels kept whole by " + "; ".join(self.graph.held[:6]))
        if self.graph.warnings:
            parts.append("unsupported: " + "; ".join(self.graph.warnings))
        return "; ".join(parts)

    def _coarse(self) -> list[str]:
        """Free segments with at most four allowed kept counts, named by their producer."""
        names = []
        for segment in self.segments:
            allowed = segment.counts()
            if segment.fixed is None and len(allowed) <= 4:
                layer, width = self._producer(segment)
                counts = [count * width for count in allowed]
                choices = ", ".join(map(str, counts[:-1])) + f" or {counts[-1]}"
                names.append(f"{layer} (keeps {choices} of {segment.size * width} channels)")
        return names

    def _producer(self, segment: _Segment) -> tuple[str, int]:
        """The first layer whose output (not input) holds the segment's units, and how many
        of its channels a unit has."""
        group = self.graph.groups[segment.group]
        units = torch.cat([segment.frozen, segment.removal])
        for member in group.real_members:
            inside = torch.isin(member.units, units)
            if member.slot.kind != "in" and inside.any():
                return member.slot.module, max(1, int(inside.sum()) // len(units))
        return group.layers[0], 1


def _segments(index: int, group: ChannelGroup, scores: Tensor, round_to: int) -> list[_Segment]:
    segments = []
    for all_units in group.segments():
        units = all_units[~group.dropped[all_units]]
        if not len(units):
            continue
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
    for member in group.real_members:
        counts = torch.bincount(member.units, minlength=group.width)[units]
        if counts.max() == 0:
            continue
        per_unit = int(counts[counts > 0].min())
        step = math.lcm(step, round_to // math.gcd(round_to, per_unit))
    return step


def _unprunable_reason(graph: DependencyGraph, name: str) -> str:
    if not graph.groups_of(name):
        return f"per_layer: no prunable layer '{name}' (no layer with a pruning rule)"
    reasons = "; ".join([*graph.warnings, *graph.held])
    return (
        f"per_layer: layer '{name}' cannot be pruned: its output channels are tied to the "
        "model's input or output, or to a pattern that keeps channels in place"
        + (f" ({reasons})" if reasons else "")
    )
