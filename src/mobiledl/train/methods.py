"""The training methods behind ``apply``: ``train`` and ``adapt`` (``distill`` is in
``mobiledl.compress.distill``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from mobiledl.core.inputs import IMAGE
from mobiledl.core.methods import register_method
from mobiledl.core.task import Task, TensorTask
from mobiledl.train.ondevice.adapt import AdaptConfig, adapt_model
from mobiledl.train.trainer import TrainConfig, train

Result = tuple[nn.Module, dict[str, Any]]


@register_method(TrainConfig)
def train_method(model: nn.Module, config: TrainConfig, task: Task) -> Result:
    """Train with the project's trainer; keep the best epoch on validation."""
    result = train(model, task, config)
    return model, {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch}


@register_method(AdaptConfig, inputs=(IMAGE,))
def adapt_method(model: nn.Module, config: AdaptConfig, task: TensorTask) -> Result:
    """On-device transfer learning: full, last layer, biases, TinyTL or sparse update."""
    result = adapt_model(model, task, config)
    return result.model, {
        "strategy": config.strategy,
        "accuracy": result.accuracy,
        "training_peak_bytes": result.predicted.peak_bytes,
        "measured_peak_memory_bytes": result.measured.peak_bytes,
        "trainable_params": result.predicted.trainable_params,
        "plan": result.plan,
    }
