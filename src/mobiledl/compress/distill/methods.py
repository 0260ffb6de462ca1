"""The ``distill`` method behind ``apply``: training a model to match a teacher."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from mobiledl.compress.distill.features import FeatureDistiller
from mobiledl.compress.distill.kd import LogitDistillation
from mobiledl.core.clone import clone_module
from mobiledl.core.config import MethodConfig
from mobiledl.core.inputs import IMAGE, kind_label
from mobiledl.core.methods import register_method
from mobiledl.core.task import Task
from mobiledl.errors import UserError
from mobiledl.models import load_model
from mobiledl.train.trainer import ExtraLoss, TrainConfig, train
from mobiledl.validate import check_number

Result = tuple[nn.Module, dict[str, Any]]


def _distill_training() -> TrainConfig:
    return TrainConfig(epochs=5, lr=0.01, warmup_epochs=0.0, progress=False)


@dataclass(frozen=True, kw_only=True)
class DistillConfig(MethodConfig):
    """Train the model to match a teacher: Hinton et al. 2015 logit KD, optionally with
    FitNets hints (Romero et al. 2015) or attention transfer (Zagoruyko & Komodakis 2017).

    - ``teacher``: a model (``nn.Module``) or a mobiledl model file; ``None`` distills from a
      copy of the model itself (born-again networks, Furlanello et al. 2018), e.g. to
      fine-tune it after another method changed it.
    - ``alpha`` / ``temperature``: weight of the KD term and softening of the logits
      (``alpha = 0``: no logit KD).
    - ``feature``: ``none``, ``hint`` or ``attention`` feature distillation.
    - ``feature_weight``: weight of the feature term (default 1 for hints, 1000 for AT).
    - ``layers``: student module names whose features are matched (default: chosen by shape).
    - ``train``: the training run.
    """

    method: ClassVar[str] = "distill"

    teacher: str | nn.Module | None = None
    alpha: float = 0.9
    temperature: float = 4.0
    feature: Literal["none", "hint", "attention"] = "none"
    feature_weight: float | None = None
    layers: tuple[str, ...] | None = None
    train: TrainConfig = field(default_factory=_distill_training)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"alpha must lie in [0, 1]; got {self.alpha}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0; got {self.temperature}")
        if self.feature_weight is not None:
            check_number(self.feature_weight, "feature_weight", 0.0)
        if self.alpha == 0 and self.feature == "none":
            raise UserError("distill with alpha 0 and no feature distillation learns nothing")


@register_method(DistillConfig)
def distill_method(model: nn.Module, config: DistillConfig, task: Task) -> Result:
    """Knowledge distillation from ``config.teacher`` into ``model``: the distillation terms
    are added to the trainer's loss (``train(..., extra_loss=...)``)."""
    if config.feature != "none" and task.input_kind != IMAGE:
        raise UserError(
            f"feature distillation ('{config.feature}') matches image feature maps; task "
            f"'{task.name}' gives {kind_label(task.input_kind)} (use feature 'none')"
        )
    teacher = _teacher(model, config.teacher).eval()
    terms: list[ExtraLoss] = []
    if config.alpha > 0:
        terms.append(LogitDistillation(teacher, config.alpha, config.temperature))
    if config.feature == "none":
        result = train(model, task, config.train, extra_loss=terms)
        return model, {"best_val_accuracy": result.best_val_accuracy}
    with FeatureDistiller(
        model,
        teacher,
        task.example_input(1),
        config.feature,
        config.layers,
        config.feature_weight,
    ) as distiller:
        result = train(model, task, config.train, extra_loss=[*terms, distiller])
        pairs = dict(distiller.pairs)
    return model, {"best_val_accuracy": result.best_val_accuracy, "feature_layers": pairs}


def _teacher(model: nn.Module, teacher: str | nn.Module | None) -> nn.Module:
    if teacher is None:
        return clone_module(model)
    if isinstance(teacher, nn.Module):
        return teacher
    return load_model(teacher).model
