"""Registry of the compact model zoo: one constructor signature for every model (as in timm)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from mobiledl.errors import UserError
from mobiledl.resources import check_model_memory
from mobiledl.validate import check_image_size, check_int, check_model_name, check_number

ImageSize = int | tuple[int, int]
ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model before building it."""

    name: str
    description: str
    paper: str
    min_image_size: tuple[int, int]
    builder: ModelBuilder

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "paper": self.paper,
            "min_image_size": list(self.min_image_size),
        }


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, description: str, paper: str, min_image_size: ImageSize = 1
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding ``builder(num_classes, in_channels, image_size, width_mult)``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = ModelInfo(name, description, paper, as_hw(min_image_size), builder)
        return builder

    return add


def as_hw(image_size: ImageSize) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or a pair."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


def list_models() -> list[ModelInfo]:
    """Every registered model, sorted by name."""
    _load_zoo()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; a ``UserError`` listing the choices if unknown."""
    _load_zoo()
    if name not in _REGISTRY:
        choices = ", ".join(sorted(_REGISTRY))
        raise UserError(f"unknown model '{name}'; available: {choices}")
    return _REGISTRY[name]


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: ImageSize = 32,
    width_mult: float = 1.0,
) -> nn.Module:
    """Build a zoo model. Its constructor arguments are kept in ``model.mobiledl_arch``.

    Raises ``UserError`` for an unknown name, an image smaller than the model can take,
    or a non-positive class count, channel count or width multiplier.
    """
    info = model_info(check_model_name(name))
    height, width = as_hw(check_image_size(image_size, f"model '{name}': image_size"))
    min_h, min_w = info.min_image_size
    if height < min_h or width < min_w:
        raise UserError(
            f"model '{name}' needs inputs of at least {min_h}x{min_w} pixels; got {height}x{width}"
        )
    check_int(num_classes, "num_classes", 2)
    check_int(in_channels, "in_channels", 1)
    check_number(width_mult, "width_mult", 0.0, low_open=True)
    arguments = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": (height, width),
        "width_mult": width_mult,
    }
    check_model_memory(lambda: info.builder(**arguments), f"model '{name}'")
    model = info.builder(**arguments)
    model.mobiledl_arch = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": [height, width],
        "width_mult": width_mult,
    }
    return model


def _load_zoo() -> None:
    """Import the zoo modules so their ``@register_model`` decorators run."""
    from mobiledl.models import zoo  # noqa: F401
