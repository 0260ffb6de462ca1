"""Training: the trainer (with knowledge distillation) and, later, on-device training."""

from mobiledl.train.distill import logit_distillation_loss
from mobiledl.train.trainer import (
    TrainConfig,
    TrainResult,
    evaluate,
    predict,
    seed_everything,
    train,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "logit_distillation_loss",
    "predict",
    "seed_everything",
    "train",
]
