"""Automated compression (Cai et al. 2022, Sec. 3.2): policies searched rather than set by hand.

- :mod:`~mobiledl.automl.compress.hawq`: per-layer Hessian traces by Hutchinson's estimator
  and HAWQ-V2's bit sensitivity (Dong et al. 2019, 2020).
- :mod:`~mobiledl.automl.compress.knapsack`: the bit allocation under a model-size budget as
  an exact multiple-choice knapsack (beside the greedy ``compress.quantize.propose_bits``).
- :mod:`~mobiledl.automl.compress.autoquant`: both put together, ``mobiledl autoquant``.
"""

from mobiledl.automl.compress.autoquant import (
    AutoQuantResult,
    LayerSizes,
    autoquant,
    measured_costs,
    quantize_with_policy,
)
from mobiledl.automl.compress.hawq import HessianTraces, hawq_costs, hessian_traces
from mobiledl.automl.compress.knapsack import allocate_bits, choose_options

__all__ = [
    "AutoQuantResult",
    "HessianTraces",
    "LayerSizes",
    "allocate_bits",
    "autoquant",
    "choose_options",
    "hawq_costs",
    "hessian_traces",
    "measured_costs",
    "quantize_with_policy",
]
