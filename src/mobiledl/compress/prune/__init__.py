"""Pruning (Cai et al. 2022, Sec. 2.1): module in, module out.

``apply(model, PruneConfig(...), task)`` zeroes weights at a granularity (element, vector,
kernel, filter, N:M) chosen by a criterion (magnitude, BatchNorm scale, Taylor, Hessian) on
a schedule (one-shot, iterative, AGP, lottery ticket) and returns a copy with plain zero
weights; ``apply(model, ChannelPruneConfig(...), task)`` physically removes channels
(``channel.py``). Lower-level
pieces: ``weight_scores`` (criteria), ``compute_masks`` (granularity), ``apply_masks`` /
``remove_masks`` (masks that survive training), ``sensitivity_analysis`` and
``allocate_sparsity`` (per-layer sparsity from sensitivity).

What each layer type does to channels during channel pruning is its pruning rule, kept in
one registry (``rules.py``); ``register_pruning_rule(MyLayer, rule)`` teaches channel
pruning a layer of your own (see ``docs/pruning.md``).
"""

from __future__ import annotations

import warnings

from torch import nn

from mobiledl.compress.prune.attention import PrunedMultiheadAttention
from mobiledl.compress.prune.config import ChannelPruneConfig, PruneConfig
from mobiledl.compress.prune.criteria import (
    CRITERIA,
    bn_l1_regularization,
    hessian_diagonal,
    train_slimming,
    weight_scores,
)
from mobiledl.compress.prune.granularity import Granularity, compute_masks
from mobiledl.compress.prune.layer_rules import ChannelwiseRule, ElementwiseRule
from mobiledl.compress.prune.masks import (
    apply_masks,
    current_masks,
    layer_sparsity,
    prunable_layers,
    remove_masks,
    sparsity_of,
)
from mobiledl.compress.prune.rules import (
    ChannelLabels,
    LayerCall,
    ParamSlice,
    PruningRule,
    UnsupportedPattern,
    register_pruning_rule,
    rule_for,
)
from mobiledl.compress.prune.schedules import (
    SCHEDULES,
    agp,
    agp_sparsity,
    iterative,
    lottery,
    oneshot,
    prune_step,
    resolve_target,
    rewind,
)
from mobiledl.compress.prune.sensitivity import (
    SensitivityResult,
    allocate_sparsity,
    plot_sensitivity,
    sensitivity_analysis,
)
from mobiledl.core.methods import apply
from mobiledl.core.task import TensorTask

__all__ = [
    "CRITERIA",
    "ChannelLabels",
    "ChannelPruneConfig",
    "ChannelwiseRule",
    "ElementwiseRule",
    "SCHEDULES",
    "Granularity",
    "LayerCall",
    "ParamSlice",
    "PruneConfig",
    "PrunedMultiheadAttention",
    "PruningRule",
    "SensitivityResult",
    "UnsupportedPattern",
    "agp",
    "agp_sparsity",
    "allocate_sparsity",
    "apply_masks",
    "bn_l1_regularization",
    "compute_masks",
    "current_masks",
    "hessian_diagonal",
    "iterative",
    "layer_sparsity",
    "lottery",
    "oneshot",
    "plot_sensitivity",
    "prunable_layers",
    "prune",
    "prune_step",
    "register_pruning_rule",
    "remove_masks",
    "resolve_target",
    "rewind",
    "rule_for",
    "sensitivity_analysis",
    "sparsity_of",
    "train_slimming",
    "weight_scores",
]


def prune(
    model: nn.Module, config: PruneConfig | ChannelPruneConfig, task: TensorTask | None = None
):
    """Deprecated: use ``mobiledl.apply(model, config, task)`` (returns a new module)."""
    warnings.warn("prune() is deprecated; use mobiledl.apply", DeprecationWarning, stacklevel=2)
    return apply(model, config, task)
