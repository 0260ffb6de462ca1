"""Pruning (Cai et al. 2022, Sec. 2.1): module in, module out.

``prune(model, PruneConfig(...), task)`` zeroes weights at a granularity (element, vector,
kernel, filter, N:M) chosen by a criterion (magnitude, BatchNorm scale, Taylor, Hessian) on
a schedule (one-shot, iterative, AGP, lottery ticket) and returns the model with plain zero
weights; ``channel`` granularity physically removes channels (``channel.py``). Lower-level
pieces: ``weight_scores`` (criteria), ``compute_masks`` (granularity), ``apply_masks`` /
``remove_masks`` (masks that survive training), ``sensitivity_analysis`` and
``allocate_sparsity`` (per-layer sparsity from sensitivity).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from mobiledl.compress.prune.config import PruneConfig
from mobiledl.compress.prune.criteria import (
    CRITERIA,
    bn_l1_regularization,
    hessian_diagonal,
    train_slimming,
    weight_scores,
)
from mobiledl.compress.prune.granularity import Granularity, compute_masks
from mobiledl.compress.prune.masks import (
    apply_masks,
    current_masks,
    layer_sparsity,
    prunable_layers,
    remove_masks,
    sparsity_of,
)
from mobiledl.compress.prune.schedules import (
    SCHEDULES,
    agp,
    agp_sparsity,
    example_input,
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
from mobiledl.data.task import Task
from mobiledl.errors import UserError
from mobiledl.train import train

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "Granularity",
    "PruneConfig",
    "SensitivityResult",
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
    "remove_masks",
    "resolve_target",
    "rewind",
    "sensitivity_analysis",
    "sparsity_of",
    "train_slimming",
    "weight_scores",
]


def prune(model: nn.Module, config: PruneConfig, task: Task | None = None) -> nn.Module:
    """Prune ``model`` as ``config`` says and return it.

    Mask granularities change ``model`` in place and return it with pruned weights baked to
    plain zeros (``config.keep_masks`` keeps the masks for more masked training).
    ``channel`` returns a new, smaller dense model. ``task`` supplies data for fine-tuning,
    data-driven criteria and network-slimming training.
    """
    if config.slimming_epochs > 0:
        if task is None:
            raise UserError("network slimming (slimming_epochs > 0) needs a task")
        slimming = dataclasses.replace(config.finetune, epochs=config.slimming_epochs)
        train_slimming(model, task, slimming, config.bn_l1)
    if config.parsed_granularity.kind == "channel":
        return _prune_channels(model, config, task)
    model = SCHEDULES[config.schedule](model, task, config)
    return model if config.keep_masks else remove_masks(model)


def _prune_channels(model: nn.Module, config: PruneConfig, task: Task | None) -> nn.Module:
    """Physical channel removal through ``mobiledl.compress.prune.channel``, then fine-tuning."""
    try:
        from mobiledl.compress.prune.channel import prune_channels
    except ImportError as exc:
        raise UserError(f"channel granularity: channel pruning is not available ({exc})") from None
    pruned = prune_channels(
        model,
        example_input(model, task),
        criterion=config.criterion,
        sparsity=config.sparsity,
        macs_ratio=config.macs_ratio,
        round_to=config.round_to,
        task=task,
        scope=config.ranking_scope,
        num_batches=config.num_batches,
    )
    if config.finetune.epochs > 0:
        if task is None:
            raise UserError("fine-tuning after channel pruning needs a task")
        train(pruned, task, config.finetune)
    return pruned
