"""Knowledge distillation (Cai et al. 2022, Sec. 2.4): a student trained to match a teacher.

Hinton logit KD (``kd``), FitNets hints and attention transfer (``features``); each is a loss
term the trainer adds (``train(..., extra_loss=[...])``). The ``distill`` method wires them::

    from mobiledl import apply
    from mobiledl.compress.distill import DistillConfig

    student = apply(student, DistillConfig(teacher=teacher, feature="attention"), task)
"""

from mobiledl.compress.distill.features import (
    FeatureDistiller,
    HintAdapter,
    attention_map,
    attention_transfer_loss,
    default_feature_layers,
    hint_loss,
)
from mobiledl.compress.distill.kd import LogitDistillation, logit_distillation_loss
from mobiledl.compress.distill.methods import DistillConfig

__all__ = [
    "DistillConfig",
    "FeatureDistiller",
    "HintAdapter",
    "LogitDistillation",
    "attention_map",
    "attention_transfer_loss",
    "default_feature_layers",
    "hint_loss",
    "logit_distillation_loss",
]
