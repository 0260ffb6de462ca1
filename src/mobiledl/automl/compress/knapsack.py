"""Bit allocation under a size budget as a multiple-choice knapsack, solved exactly.

HAWQ-V2/V3 (Dong et al. 2020; Yao et al. 2021) choose one bit width per layer to minimise
the summed sensitivity under a model-size budget, an integer program. With one choice per
layer and additive costs it is a multiple-choice knapsack, which dynamic programming over
the budget solves exactly (Kellerer et al. 2004, ch. 11): ``best[c]`` = the least total cost
of the layers so far within ``c`` size units, extended layer by layer. Sizes are counted in
units of ``ceil(capacity / resolution)`` bytes, each option's size rounded *up*, so the
answer never exceeds the budget and is optimal among allocations whose rounded sizes fit
(exactly optimal when the unit is one byte, i.e. a capacity below ``resolution`` bytes).
Among equal costs the later option wins (with options by increasing width: the wider).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from mobiledl.compress.quantize.mixed import layer_bytes
from mobiledl.errors import UserError

#: Size units of the dynamic program: the budget is cut into at most this many.
RESOLUTION = 1 << 16


def choose_options(
    costs: Sequence[Sequence[float]],
    sizes: Sequence[Sequence[int]],
    capacity: int,
    resolution: int = RESOLUTION,
) -> list[int]:
    """One option index per item minimising ``sum(costs[i][k_i])`` with
    ``sum(sizes[i][k_i]) <= capacity`` (module docstring); ``UserError`` if nothing fits."""
    smallest = sum(min(options) for options in sizes)
    if smallest > capacity:
        raise UserError(f"no choice fits {capacity:,} bytes: the smallest takes {smallest:,}")
    unit = max(1, math.ceil(capacity / resolution))
    slots = capacity // unit
    best = np.zeros(slots + 1)
    picks = np.zeros((len(costs), slots + 1), np.int16)
    for item, (item_costs, item_sizes) in enumerate(zip(costs, sizes, strict=True)):
        extended = np.full((len(item_costs), slots + 1), np.inf)
        for option, (cost, size) in enumerate(zip(item_costs, item_sizes, strict=True)):
            need = math.ceil(size / unit)
            if need <= slots:
                extended[option, need:] = best[: slots + 1 - need] + cost
        picks[item] = len(item_costs) - 1 - extended[::-1].argmin(0)  # ties: the later option
        best = extended.min(0)
    if not np.isfinite(best[slots]):
        raise UserError(
            f"no choice fits {capacity:,} bytes in units of {unit} bytes; raise the budget a little"
        )
    chosen, room = [], slots
    for item in range(len(costs) - 1, -1, -1):
        option = int(picks[item, room])
        chosen.append(option)
        room -= math.ceil(sizes[item][option] / unit)
    return chosen[::-1]


def allocate_bits(
    costs: Mapping[str, Sequence[float]],
    bits: Sequence[int],
    weights: Mapping[str, int],
    channels: Mapping[str, int],
    other_bytes: int,
    budget_bytes: int,
) -> dict[str, int]:
    """Weight bits per layer (from ``bits``; ``costs[name][k]`` belongs to ``bits[k]``) of the
    least total cost whose model fits ``budget_bytes``: each layer's packed codes and fp32
    per-channel scales (``layer_bytes``) plus ``other_bytes`` that stay as they are."""
    names = list(costs)
    sizes = [[layer_bytes(weights[n], channels[n], b) for b in bits] for n in names]
    smallest = other_bytes + sum(min(options) for options in sizes)
    if budget_bytes < smallest:
        raise UserError(
            f"size budget {budget_bytes / 1024:.1f} kB is below the smallest reachable "
            f"{smallest / 1024:.1f} kB (every layer at {min(bits)} bits)"
        )
    chosen = choose_options([costs[n] for n in names], sizes, budget_bytes - other_bytes)
    return {name: bits[k] for name, k in zip(names, chosen, strict=True)}
