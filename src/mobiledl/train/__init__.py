"""Training: the trainer with knowledge distillation (logit, FitNets hints, attention
transfer); on-device training comes next."""

from mobiledl.train.distill import (
    FeatureDistiller,
    HintAdapter,
    attention_map,
    attention_transfer_loss,
    default_feature_layers,
    hint_loss,
    logit_distillation_loss,
)
from mobiledl.train.trainer import (
    ExtraLoss,
    TrainConfig,
    TrainResult,
    evaluate,
    predict,
    seed_everything,
    train,
)

__all__ = [
    "ExtraLoss",
    "FeatureDistiller",
    "HintAdapter",
    "TrainConfig",
    "TrainResult",
    "attention_map",
    "attention_transfer_loss",
    "default_feature_layers",
    "evaluate",
    "hint_loss",
    "logit_distillation_loss",
    "predict",
    "seed_everything",
    "train",
]
