"""Rank selection: by retained energy, by EVBMF, or greedily for a MAC target.

Every factorizable layer becomes a :class:`Candidate` holding the spectra of what its method
decomposes and the ranks it may take: multiples of ``round_to`` below the full rank, plus the
full rank itself, which means "not factorized" (for a Tucker-2 mode: that 1x1 factor is left
out). Data-free, the spectra are the squared singular values of the weight matrix (``svd``),
its ``(C_in kh) x (C_out kw)`` rearrangement (``spatial``) or its two channel unfoldings
(``tucker2``, ``cp``). Data-aware (``svd`` and ``tucker2``), they are the eigenvalues of the
output (and input) channel second moments, whose eigenvectors are then the factors
(``statistics.py``, Zhang et al. 2016).

- **energy**: per decomposed mode, the smallest rank keeping at least that fraction of the
  spectrum (for CP: of both channel unfoldings at rank R).
- **vbmf**: the EVBMF rank of each matrix (Kim et al. 2016), rounded up to ``round_to``.
- **macs_ratio**: start from the unfactorized model and repeatedly take the rank cut that
  loses the least energy per MAC saved, until the model's MACs reach the target. This is
  the greedy solution of Zhang et al. 2016 ("Accelerating Very Deep Convolutional Networks
  for Classification and Detection", Sec. 3.4): maximize the product of the layers'
  retained energies subject to a complexity budget.

A layer is factorized only if that saves at least ``min_saving`` of its MACs (and at least
one MAC): every factorized layer adds layers to run, whose fixed costs a small saving does
not repay in a real engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from mobiledl.compress.factorize.layers import (
    LayerSpec,
    Pair,
    factorized_macs,
    original_macs,
)
from mobiledl.compress.factorize.statistics import principal_directions
from mobiledl.compress.factorize.vbmf import evbmf_rank
from mobiledl.errors import UserError

Ranks = tuple[int, ...]


@dataclass
class Candidate:
    """One layer that can be factorized, with its spectra, geometry and allowed ranks."""

    name: str
    layer: nn.Conv2d | nn.Linear
    method: str
    in_hw: Pair
    out_hw: Pair
    matrices: list[Tensor]
    choices: list[list[int]]
    spectra: list[Tensor]
    bases: list[Tensor] | None = None
    energies: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.energies = [s.cumsum(0) / s.sum().clamp(min=1e-300) for s in self.spectra]

    @property
    def full(self) -> Ranks:
        """The ranks meaning "not factorized"."""
        return tuple(choice[-1] for choice in self.choices)

    def spec(self, ranks: Ranks) -> LayerSpec:
        return LayerSpec.of(self.name, self.layer, self.method, ranks)

    @property
    def original_macs(self) -> int:
        return original_macs(self.spec(self.full), self.out_hw)

    def macs(self, ranks: Ranks) -> int:
        """MACs per sample at ``ranks`` (the original layer's at the full ranks)."""
        if ranks == self.full:
            return self.original_macs
        return factorized_macs(self.spec(ranks), self.in_hw, self.out_hw)

    def energy(self, ranks: Ranks) -> float:
        """Fraction of spectral energy kept (a product over the decomposed matrices)."""
        if ranks == self.full:
            return 1.0
        if self.method == "cp":
            return math.prod(_kept(e, ranks[0]) for e in self.energies)
        return math.prod(_kept(e, r) for e, r in zip(self.energies, ranks, strict=True))

    def loss(self, ranks: Ranks) -> float:
        return -math.log(max(self.energy(ranks), 1e-12))


#: A layer's decision: the candidate (its method) and the ranks.
Choice = tuple[Candidate, Ranks]


def _squared_singular_values(matrix: Tensor) -> Tensor:
    """Descending squared singular values (NumPy, one BLAS thread: see ``decompose``)."""
    with threadpool_limits(1, user_api="blas"):
        singular = np.linalg.svd(matrix.double().numpy(), compute_uv=False)
    return torch.from_numpy(singular**2)


def _kept(cumulative: Tensor, rank: int) -> float:
    return 1.0 if rank >= len(cumulative) else float(cumulative[rank - 1])


def candidate(
    name: str,
    layer: nn.Conv2d | nn.Linear,
    method: str,
    shapes: tuple[Pair, Pair],
    round_to: int,
    moments: tuple[Tensor, Tensor] | None = None,
) -> Candidate:
    """The :class:`Candidate` of ``layer`` (``method`` already resolved for its shape).

    ``moments`` (input, output channel second moments) make ``svd`` and ``tucker2``
    data-aware.
    """
    weight = layer.weight.detach().cpu()
    matrices = _matrices(weight, method)
    if method == "tucker2":
        choices = [_grid(weight.shape[0], round_to), _grid(weight.shape[1], round_to)]
    elif method == "cp":
        choices = [_cp_grid(name, layer, shapes, round_to)]
    else:
        choices = [_grid(min(matrices[0].shape), round_to)]
    if moments is not None and method in ("svd", "tucker2"):
        modes = [moments[1]] if method == "svd" else [moments[1], moments[0]]
        spectra, bases = zip(*(principal_directions(m) for m in modes), strict=True)
        return Candidate(
            name, layer, method, *shapes, matrices, choices, list(spectra), list(bases)
        )
    spectra = [_squared_singular_values(m) for m in matrices]
    return Candidate(name, layer, method, *shapes, matrices, choices, spectra)


def _matrices(weight: Tensor, method: str) -> list[Tensor]:
    if method == "svd":
        return [weight.flatten(1)]
    if method == "spatial":
        c_out, c_in, kh, kw = weight.shape
        return [weight.permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)]
    return [weight.flatten(1), weight.transpose(0, 1).flatten(1)]


def _grid(full: int, step: int) -> list[int]:
    """Multiples of ``step`` below ``full``, then ``full`` (at least one multiple)."""
    return [*range(step, full, step), full] if step < full else [full]


def _cp_grid(name: str, layer: nn.Conv2d, shapes: tuple[Pair, Pair], step: int) -> list[int]:
    """CP ranks that save MACs, then the first that does not (meaning "not factorized")."""
    base = original_macs(LayerSpec.of(name, layer, "cp", (1,)), shapes[1])
    ranks = [step]
    while factorized_macs(LayerSpec.of(name, layer, "cp", (ranks[-1],)), *shapes) < base:
        ranks.append(ranks[-1] + step)
    return ranks


# ---------------------------------------------------------------- rank rules


def by_energy(layer: Candidate, energy: float, min_saving: float = 0.0) -> Ranks:
    """Smallest allowed ranks keeping ``energy`` of every decomposed matrix."""
    if layer.method == "cp":
        ranks = next(
            (r,) for r in layer.choices[0] if r == layer.full[0] or layer.energy((r,)) >= energy
        )
    else:
        ranks = tuple(
            next(r for r in choice if r == choice[-1] or _kept(cum, r) >= energy)
            for choice, cum in zip(layer.choices, layer.energies, strict=True)
        )
    return _worthwhile(layer, ranks, min_saving)


def by_vbmf(layer: Candidate, min_saving: float = 0.0) -> Ranks:
    """EVBMF ranks of the decomposed matrices (CP: the larger), rounded up to allowed ranks."""
    estimates = [max(evbmf_rank(m), 1) for m in layer.matrices]
    if layer.method == "cp":
        estimates = [max(estimates)]
    ranks = tuple(
        next((r for r in choice if r >= estimate), choice[-1])
        for choice, estimate in zip(layer.choices, estimates, strict=True)
    )
    return _worthwhile(layer, ranks, min_saving)


def _worthwhile(layer: Candidate, ranks: Ranks, min_saving: float) -> Ranks:
    """``ranks``, or the full ranks if factorizing at ``ranks`` saves too few MACs."""
    return ranks if _saves_enough(layer, layer.macs(ranks), min_saving) else layer.full


def _saves_enough(layer: Candidate, macs: int, min_saving: float) -> bool:
    original = layer.original_macs
    return macs < original and macs <= (1.0 - min_saving) * original


def check_explicit(layer: Candidate, ranks: int | list[int]) -> Ranks:
    """User-given ranks for one layer, validated."""
    given = tuple(ranks) if isinstance(ranks, list | tuple) else (ranks,)
    expected = len(layer.choices)
    if len(given) != expected or not all(isinstance(r, int) and r >= 1 for r in given):
        shape = "[r_out, r_in]" if expected == 2 else "one positive integer"
        raise UserError(f"ranks for layer '{layer.name}' ({layer.method}) must be {shape}")
    limits = [choice[-1] for choice in layer.choices]
    if layer.method != "cp" and any(r > m for r, m in zip(given, limits, strict=True)):
        raise UserError(f"ranks {list(given)} for layer '{layer.name}' exceed its full ranks")
    return given


def for_macs(
    options: list[list[Candidate]], budget: int, min_saving: float = 0.0, slack: int = 0
) -> dict[str, Choice | None]:
    """Per layer, a method and ranks whose total MACs fit ``budget`` (the MACs allowed for
    these layers), chosen greedily by least energy lost per MAC saved (Zhang et al. 2016).

    ``options`` holds, per layer, one candidate per method it may use; a layer keeps the
    method of its first cut. ``None`` means "not factorized". A cut that would land more
    than ``slack`` MACs below ``budget`` is taken only when no smaller cut is left, so the
    result lands within ``slack`` of the budget wherever the allowed ranks permit. When no
    cut is left before the budget is met, the result is the most the layers can be cut
    (best effort: the caller reports the shortfall).
    """
    state: dict[str, Choice | None] = {layer[0].name: None for layer in options}
    total = sum(layer[0].original_macs for layer in options)
    while total > budget:
        step = _best_cut(options, state, min_saving, total - budget + slack)
        if step is None:
            break
        layer, ranks = step
        total -= macs_of(layer, state[layer.name]) - layer.macs(ranks)
        state[layer.name] = (layer, ranks)
    return state


def at_minimum(
    options: list[list[Candidate]], state: dict[str, Choice | None], min_saving: float = 0.0
) -> list[str]:
    """Names of the layers no further cut can shrink (in ``state``)."""
    return [
        layers[0].name
        for layers in options
        if not _layer_cuts(layers, state[layers[0].name], min_saving)
    ]


def can_save(layers: list[Candidate], min_saving: float = 0.0) -> bool:
    """Whether some rank of some method saves ``min_saving`` of the layer's MACs."""
    return bool(_layer_cuts(layers, None, min_saving))


def macs_of(layer: Candidate, choice: Choice | None) -> int:
    """MACs of ``layer`` as ``choice`` leaves it (``None``: not factorized)."""
    return layer.original_macs if choice is None else choice[0].macs(choice[1])


def _layer_cuts(
    layers: list[Candidate], choice: Choice | None, min_saving: float
) -> list[tuple[Candidate, Ranks, Ranks]]:
    """Every next cut of one layer: (candidate, current ranks, cut ranks)."""
    starts = [(layer, layer.full) for layer in layers] if choice is None else [choice]
    return [
        (layer, current, cut)
        for layer, current in starts
        for cut in _cuts(layer, current, min_saving)
    ]


def _best_cut(
    options: list[list[Candidate]],
    state: dict[str, Choice | None],
    min_saving: float,
    most: int,
) -> Choice | None:
    """The next cut: one mode, one allowed rank down (skipping cuts that save nothing),
    the cheapest saving at most ``most`` MACs if there is one, else the cheapest."""
    ranked: list[tuple[bool, float, Candidate, Ranks]] = []
    for layers in options:
        for layer, current, cut in _layer_cuts(layers, state[layers[0].name], min_saving):
            saved = layer.macs(current) - layer.macs(cut)
            cost = max(layer.loss(cut) - layer.loss(current), 0.0) / saved
            ranked.append((saved > most, cost, layer, cut))
    if not ranked:
        return None
    best = min(ranked, key=lambda item: item[:2])
    return best[2], best[3]


def _cuts(layer: Candidate, current: Ranks, min_saving: float) -> list[Ranks]:
    """Per mode, the largest lower rank that saves MACs against ``current`` (the first cut
    of a layer must save ``min_saving`` of its MACs)."""
    cuts = []
    now = layer.macs(current)
    for mode, choice in enumerate(layer.choices):
        lower = [r for r in choice if r < current[mode]]
        for rank in reversed(lower):
            cut = (*current[:mode], rank, *current[mode + 1 :])
            macs = layer.macs(cut)
            if macs < now and (current != layer.full or _saves_enough(layer, macs, min_saving)):
                cuts.append(cut)
                break
    return cuts
