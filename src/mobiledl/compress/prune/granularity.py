"""Pruning granularity: which weights are removed together (Mao et al. 2017, "Exploring the
Granularity of Sparsity in Convolutional Neural Networks"; Cai et al. 2022, Sec. 2.1).

A weight of shape ``(out, in, *kernel)`` is cut into equal-sized groups:

- ``element``: single weights (fine-grained, Han et al. 2015).
- ``vector``: one row of a kernel, ``w[o, i, ..., :]`` (1-D, Mao et al. 2017).
- ``kernel``: a whole ``k x k`` kernel, ``w[o, i]`` (2-D, Mao et al. 2017).
- ``filter``: a whole output filter ``w[o]``, as a mask only: the layer keeps its shape.
  (``channel`` granularity, handled by ``mobiledl.compress.prune.channel``, removes it.)
- ``N:M``: at most ``N`` non-zeros in every ``M`` consecutive weights along the input-channel
  dimension, e.g. ``2:4`` (Mishra et al. 2021, NVIDIA Ampere sparse tensor cores; Zhou et al.
  2021). Layers whose input dimension is not a multiple of ``M`` are left dense.

A linear layer is a 1x1 convolution, so its vector and kernel groups are single weights.
Groups are ranked by their mean element score (scores from ``criteria.weight_scores``);
positions already pruned score ``-inf`` so a mask only grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mobiledl.errors import UserError

KINDS = ("element", "vector", "kernel", "filter", "N:M", "channel")
Target = float | dict[str, float]


@dataclass(frozen=True)
class Granularity:
    """A parsed granularity; ``n`` and ``m`` are set for ``N:M`` patterns."""

    kind: str
    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, text: str) -> Granularity:
        """``element``, ``vector``, ``kernel``, ``filter``, ``channel`` or ``N:M`` like ``2:4``."""
        if text in KINDS and text != "N:M":
            return cls(text)
        n_text, sep, m_text = text.partition(":")
        if sep and n_text.isdigit() and m_text.isdigit() and 0 < int(n_text) < int(m_text):
            return cls("nm", int(n_text), int(m_text))
        raise UserError(
            f"unknown granularity '{text}'; choose element, vector, kernel, filter, channel "
            "or N:M with 0 < N < M (e.g. 2:4)"
        )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind

    @property
    def pattern_sparsity(self) -> float:
        """Sparsity an ``N:M`` pattern fixes, ``(M - N) / M``."""
        return (self.m - self.n) / self.m

    def fits(self, weight: Tensor) -> bool:
        """Whether the layer can take this pattern (``N:M`` needs ``in % M == 0``)."""
        return self.kind != "nm" or weight.shape[1] % self.m == 0

    def to_groups(self, t: Tensor) -> Tensor:
        """View of ``t`` (shaped like a weight) as ``(groups, group_size)``."""
        if self.kind == "filter":
            return t.reshape(t.shape[0], -1)
        if self.kind == "kernel" and t.dim() > 2:
            return t.reshape(t.shape[0] * t.shape[1], -1)
        if self.kind == "vector" and t.dim() > 2:
            return t.reshape(-1, t.shape[-1])
        if self.kind == "nm":
            return t.movedim(1, -1).reshape(-1, self.m)
        return t.reshape(-1, 1)

    def from_groups(self, groups: Tensor, shape: torch.Size) -> Tensor:
        """Inverse of ``to_groups`` for a weight of ``shape``."""
        if self.kind == "nm":
            moved = (shape[0], *shape[2:], shape[1])
            return groups.reshape(moved).movedim(-1, 1).contiguous()
        return groups.reshape(shape)


def compute_masks(
    scores: dict[str, Tensor],
    granularity: Granularity,
    sparsity: Target,
    scope: str = "global",
    current: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """0/1 masks that prune the lowest-scoring groups to reach ``sparsity``.

    ``sparsity`` is the fraction of weights to zero: one number for all layers, or a dict
    from weight name to that layer's sparsity (layers missing from it are not pruned).
    With one number, ``scope="global"`` ranks groups of all layers together (the fraction
    holds over all weights) and ``scope="layer"`` prunes each layer to the same fraction.
    For ``N:M`` only each group's ``M - N`` lowest weights are candidates, so a sparsity of
    ``(M - N) / M`` gives exactly the pattern and a lower one a part of it.
    """
    _check(granularity, sparsity)
    if isinstance(sparsity, dict) and set(sparsity) - set(scores):
        unknown = sorted(set(sparsity) - set(scores))[0]
        raise UserError(f"sparsity names '{unknown}', which is not a prunable, scored weight")
    current = current or {}
    ranked = {
        name: _group_scores(score, granularity, current.get(name))
        for name, score in scores.items()
        if granularity.fits(score)
    }
    if isinstance(sparsity, dict):
        keep = {n: _layer_keep(ranked[n], sparsity[n]) for n in ranked if n in sparsity}
    elif scope == "layer":
        keep = {name: _layer_keep(groups, sparsity) for name, groups in ranked.items()}
    else:
        sizes = {name: scores[name].numel() / groups.numel() for name, groups in ranked.items()}
        keep = _global_keep(ranked, sizes, sparsity)
    masks = {}
    for name, keep_groups in keep.items():
        groups = granularity.to_groups(scores[name])
        expanded = keep_groups.reshape(len(groups), -1).expand_as(groups)
        masks[name] = granularity.from_groups(expanded.to(scores[name].dtype), scores[name].shape)
    return masks


def _check(granularity: Granularity, sparsity: Target) -> None:
    if granularity.kind == "channel":
        raise UserError("channel granularity removes channels; for masks use 'filter'")
    if granularity.kind != "nm":
        return
    values = sparsity.values() if isinstance(sparsity, dict) else [sparsity]
    if max(values, default=0.0) > granularity.pattern_sparsity + 1e-9:
        raise UserError(
            f"granularity {granularity} allows at most {granularity.pattern_sparsity:g} sparsity; "
            f"got {max(values)}"
        )


def _group_scores(score: Tensor, granularity: Granularity, mask: Tensor | None) -> Tensor:
    """Mean element score per group; pruned positions ``-inf``, N:M keepers ``+inf``."""
    score = score.detach().float().clone()
    if mask is not None:
        score[mask == 0] = -torch.inf
    if granularity.kind == "nm":
        groups = granularity.to_groups(score)
        top = groups.topk(granularity.n, dim=1).indices
        groups = groups.scatter(1, top, torch.inf)
        return groups.reshape(-1)
    return granularity.to_groups(score).mean(dim=1)


def _layer_keep(group_scores: Tensor, sparsity: float) -> Tensor:
    """Keep all but the ``round(sparsity * groups)`` lowest-scoring groups."""
    count = min(round(sparsity * group_scores.numel()), group_scores.numel())
    keep = torch.ones(group_scores.numel(), dtype=torch.bool)
    keep[_lowest(group_scores, count)] = False
    return keep


def _global_keep(
    ranked: dict[str, Tensor], group_sizes: dict[str, float], sparsity: float
) -> dict[str, Tensor]:
    """Prune the lowest groups over all layers until ``sparsity`` of all weights is reached."""
    if not ranked:
        return {}
    names = list(ranked)
    scores = torch.cat([ranked[n] for n in names])
    sizes = torch.cat([torch.full((ranked[n].numel(),), group_sizes[n]) for n in names])
    owners = torch.cat([torch.full((ranked[n].numel(),), i) for i, n in enumerate(names)])
    order = _lowest(scores, scores.numel())
    budget = sparsity * float(sizes.sum())
    chosen = order[torch.cumsum(sizes[order], 0) <= budget + 0.5]
    pruned = torch.zeros(scores.numel(), dtype=torch.bool)
    pruned[chosen] = True
    return {n: ~pruned[owners == i] for i, n in enumerate(names)}


def _lowest(scores: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` lowest scores, ties broken by position (stable)."""
    return torch.sort(scores, stable=True).indices[:count]
