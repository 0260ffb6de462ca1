"""The pruning methods behind ``apply``: ``prune`` (weight masks) and ``channel_prune``."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from mobiledl.compress.encode import model_storage
from mobiledl.compress.prune.config import ChannelPruneConfig, PruneConfig
from mobiledl.compress.prune.criteria import train_slimming
from mobiledl.compress.prune.masks import layer_sparsity, prunable_layers, remove_masks, sparsity_of
from mobiledl.compress.prune.schedules import SCHEDULES, example_input
from mobiledl.core.inputs import CLIP, IMAGE
from mobiledl.core.methods import register_method
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.profile import count_macs, count_params
from mobiledl.train import train

#: What a mask-pruning report's sizes mean (the exported file stores the zeros densely).
MASK_NOTE = (
    "zeros are stored densely: params, MACs and the exported file (bytes) do not shrink; "
    "dense_bytes and sparse_format_bytes (= storage_bytes) are the weights' size dense and "
    "in the relative-index sparse format"
)


@register_method(PruneConfig, needs_task=False, inputs=(IMAGE,))
def prune_masks(
    model: nn.Module, config: PruneConfig, task: TensorTask | None
) -> tuple[nn.Module, dict[str, Any]]:
    """Zero weights as ``config`` says (Han et al. 2015; Mao et al. 2017; Zhu & Gupta 2018;
    Frankle & Carbin 2019, by schedule); the result holds plain zeros unless ``keep_masks``."""
    config = _masks_with_overrides(model, config)
    _slimming(model, config.slimming_epochs, config.bn_l1, config.finetune, task)
    model = SCHEDULES[config.schedule](model, task, config)
    if not config.keep_masks:
        model = remove_masks(model)
    storage = model_storage(model)
    return model, {
        "sparsity": sparsity_of(model, config.exclude),
        "layer_sparsity": layer_sparsity(model, config.exclude),
        "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters()),
        "dense_bytes": storage.dense_bytes,
        "sparse_format_bytes": storage.sparse_bytes,
        "storage_bytes": storage.sparse_bytes,
        "compression": storage.compression,
        "note": MASK_NOTE,
    }


@register_method(ChannelPruneConfig, needs_task=False, inputs=(IMAGE, CLIP))
def prune_channels_method(
    model: nn.Module, config: ChannelPruneConfig, task: TensorTask | None
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove channels physically (Li et al. 2017; He et al. 2017; Luo et al. 2017), then
    fine-tune; the report gives the MAC and parameter ratios reached."""
    from mobiledl.compress.prune.channel import prune_channels

    x = example_input(model, task)
    dense_macs, dense_params = count_macs(model, x), count_params(model)
    _slimming(model, config.slimming_epochs, config.bn_l1, config.finetune, task)
    sparsity, per_layer = _channel_amounts(model, config)
    pruned = prune_channels(
        model,
        x,
        criterion=config.criterion,
        sparsity=sparsity,
        macs_ratio=config.macs_ratio,
        round_to=config.round_to,
        task=task,
        per_layer=per_layer or None,
        scope=config.scope,
        num_batches=config.num_batches,
        strict=config.strict,
    )
    if config.finetune.epochs > 0:
        if task is None:
            raise UserError("fine-tuning after channel pruning needs a task")
        train(pruned, task, config.finetune)
    macs, params = count_macs(pruned, x), count_params(pruned)
    return pruned, {
        "macs_ratio": macs / dense_macs if dense_macs else 1.0,
        "params_ratio": params / dense_params if dense_params else 1.0,
        "macs_target": config.macs_ratio,
        "dense_macs": dense_macs,
        "dense_params": dense_params,
    }


def _slimming(
    model: nn.Module, epochs: int, strength: float, finetune: Any, task: TensorTask | None
) -> None:
    """Network slimming (Liu et al. 2017): train with an L1 penalty on BatchNorm scales."""
    if epochs <= 0:
        return
    if task is None:
        raise UserError("network slimming (slimming_epochs > 0) needs a task")
    train_slimming(model, task, dataclasses.replace(finetune, epochs=epochs), strength)


def _masks_with_overrides(model: nn.Module, config: PruneConfig) -> PruneConfig:
    """``config`` with its layer rules turned into per-weight sparsities and exclusions."""
    if not config.overrides:
        return config
    if config.macs_ratio is not None:
        raise UserError(
            "per-layer overrides set sparsities; use them with sparsity, not macs_ratio"
        )
    sparsity: dict[str, float] = {}
    exclude = list(config.exclude)
    for weight_name, module in prunable_layers(model, config.exclude).items():
        name = weight_name.removesuffix(".weight")
        layer = config.for_layer(name, module)
        if layer is None:
            exclude.append(name)
        elif isinstance(layer.sparsity, dict):
            sparsity[weight_name] = layer.sparsity.get(weight_name, 0.0)
        else:
            sparsity[weight_name] = float(layer.sparsity or 0.0)
    return dataclasses.replace(config, sparsity=sparsity, exclude=tuple(exclude), overrides=())


def _channel_amounts(
    model: nn.Module, config: ChannelPruneConfig
) -> tuple[float | None, dict[str, float]]:
    """The uniform sparsity (or ``None``) and the per-layer sparsities ``prune_channels`` takes:
    excluded layers and ``skip`` rules keep every channel; rules with a sparsity set theirs."""
    per_layer: dict[str, float] = {name: 0.0 for name in config.exclude}
    sparsity = config.sparsity
    if isinstance(sparsity, dict):
        per_layer.update({k.removesuffix(".weight"): v for k, v in sparsity.items()})
        sparsity = None
    for weight_name, module in prunable_layers(model).items() if config.overrides else ():
        name = weight_name.removesuffix(".weight")
        layer = config.for_layer(name, module)
        if layer is None:
            per_layer[name] = 0.0
        elif layer is not config and isinstance(layer.sparsity, float):
            per_layer[name] = layer.sparsity
    return sparsity, per_layer
