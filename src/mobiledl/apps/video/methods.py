"""The ``temporal_shift`` method behind ``apply``: TSN in, TSM out (Lin et al. 2019).

``apply(tsn_model, TemporalShiftConfig(), task=None)`` returns a copy of a clip classifier with
temporal shifts in its residual blocks, the same weights and the same MACs; the model record
keeps the transform, so ``load_model`` rebuilds the shifted model from its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from mobiledl.apps.video.models import VideoClassifier
from mobiledl.apps.video.shift import FOLD_DIV, add_temporal_shift, shifts_of
from mobiledl.core.config import MethodConfig
from mobiledl.core.inputs import CLIP
from mobiledl.core.methods import register_method
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_transform

TRANSFORM = "temporal_shift"


@dataclass(frozen=True, kw_only=True)
class TemporalShiftConfig(MethodConfig):
    """Add temporal shifts to a clip classifier's residual blocks (TSM, Lin et al. 2019).

    - ``fold_div``: 1/fold_div of the channels moves each way (the paper: 8).
    - ``bidirectional``: shift from the past and the future (offline); false: the past only
      (online, streamable with ``OnlineTSM``).
    - ``placement``: ``residual`` (inside each residual branch, the paper's choice) or
      ``inplace`` (the whole block input).
    """

    method: ClassVar[str] = "temporal_shift"

    fold_div: int = FOLD_DIV
    bidirectional: bool = True
    placement: Literal["residual", "inplace"] = "residual"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fold_div < 2:
            raise UserError(f"fold_div must be >= 2; got {self.fold_div}")


def shift_model(model: nn.Module, fields: dict[str, Any]) -> nn.Module:
    """``model`` (a ``VideoClassifier`` without shifts) shifted in place as ``fields`` say."""
    if not isinstance(model, VideoClassifier):
        raise UserError(
            f"temporal shift needs a clip classifier (e.g. tsn_resnet8); got {type(model).__name__}"
        )
    if shifts_of(model):
        raise UserError("the model is shifted already")
    add_temporal_shift(model, model.n_segments, **fields)
    return model


@register_method(TemporalShiftConfig, needs_task=False, inputs=(CLIP,))
def temporal_shift_method(
    model: nn.Module, config: TemporalShiftConfig, task: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Shift 1/fold_div of the channels along time in every residual block."""
    fields = {
        "fold_div": config.fold_div,
        "bidirectional": config.bidirectional,
        "placement": config.placement,
    }
    shifted = shift_model(model, fields)
    if getattr(shifted, "mobiledl_arch", None):
        record_transform(shifted, TRANSFORM, fields)
    return shifted, {"shifted_blocks": len(shifts_of(shifted))}


@register_transform(TRANSFORM)
def _rebuild(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Re-insert the shifts when ``load_model`` rebuilds a model."""
    return shift_model(model, dict(config))
