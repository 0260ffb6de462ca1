"""The ``nas_subnet`` method behind ``apply``: extract one sub-network of a supernet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.evaluate import EvalSpec
from mobiledl.automl.nas.extract import calibration_indices, extract_subnet, recalibrate_bn
from mobiledl.core.config import MethodConfig
from mobiledl.core.inputs import IMAGE
from mobiledl.core.methods import register_method
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError


@dataclass(frozen=True, kw_only=True)
class SubnetConfig(MethodConfig):
    """Extract one sub-network of a once-for-all supernet as a plain model (Cai et al. 2020).

    - ``kernels`` / ``expands``: per block slot (``None``: the largest choice everywhere).
    - ``depths``: per stage (``None``: the deepest).
    - ``resolution``: input ``(H, W)`` (``None``: the largest in the space).
    - ``calibration_samples``: training samples that re-estimate the BatchNorm statistics
      (0: keep the supernet's).
    - ``seed``: picks the calibration samples.
    """

    method: ClassVar[str] = "nas_subnet"

    kernels: tuple[int, ...] | None = None
    expands: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    resolution: tuple[int, int] | None = None
    calibration_samples: int = EvalSpec(0).calibration_size
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration_samples < 0:
            raise UserError(f"calibration_samples must be >= 0; got {self.calibration_samples}")


@register_method(SubnetConfig, needs_task=False, inputs=(IMAGE,))
def subnet_method(
    model: nn.Module, config: SubnetConfig, task: TensorTask | None
) -> tuple[nn.Module, dict[str, Any]]:
    """Copy the chosen architecture's weights out of the supernet and recalibrate its BN."""
    if not isinstance(model, OFASupernet):
        raise UserError(
            f"nas_subnet extracts from a once-for-all supernet; got {type(model).__name__}"
        )
    space = model.space
    largest = space.largest()
    arch = space.make(
        config.kernels or largest.kernels_full(space),
        config.expands or largest.expands_full(space),
        config.depths or largest.depths,
        config.resolution or largest.resolution,
    )
    subnet = extract_subnet(model, arch)
    if task is not None and config.calibration_samples:
        x, _ = task.split("train")
        subnet = recalibrate_bn(
            subnet, x[calibration_indices(len(x), config.calibration_samples, config.seed)]
        )
    return subnet, {"arch": arch.to_dict(), "label": arch.label()}
