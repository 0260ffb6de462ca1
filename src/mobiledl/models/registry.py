"""Registry of the compact model zoo: one constructor signature per kind of input (as in timm)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from mobiledl.core.inputs import IMAGE, Inputs, InputSpec, example_from_specs, kind_label
from mobiledl.core.task import Task
from mobiledl.errors import UserError
from mobiledl.models.inputs import input_args
from mobiledl.resources import check_model_memory
from mobiledl.validate import check_image_size, check_int, check_model_name, check_number

ImageSize = int | tuple[int, int]
ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model before building it.

    ``inputs`` is the kind of input it takes (``image`` or ``tokens``, see
    ``mobiledl.models.inputs``); ``min_image_size`` matters for image models only.
    """

    name: str
    description: str
    paper: str
    min_image_size: tuple[int, int]
    builder: ModelBuilder
    inputs: str = IMAGE

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "description": self.description,
            "paper": self.paper,
            "inputs": self.inputs,
            "min_image_size": list(self.min_image_size),
        }


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, description: str, paper: str, min_image_size: ImageSize = 1, inputs: str = IMAGE
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding ``builder(num_classes, <input arguments>, width_mult)``.

    The input arguments are those of the ``inputs`` kind: ``in_channels, image_size`` for
    images, ``vocab_size, seq_len`` for tokens (``mobiledl.models.inputs``).
    """
    input_args(inputs)

    def add(builder: ModelBuilder) -> ModelBuilder:
        info = ModelInfo(name, description, paper, as_hw(min_image_size), builder, inputs)
        _REGISTRY[name] = info
        return builder

    return add


def as_hw(image_size: ImageSize) -> tuple[int, int]:
    """``(H, W)`` from an int (square) or a pair."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


def list_models(inputs: str | None = None) -> list[ModelInfo]:
    """Every registered model (of one kind of ``inputs`` if given), sorted by name."""
    _load_zoo()
    infos = [_REGISTRY[name] for name in sorted(_REGISTRY)]
    return [info for info in infos if inputs is None or info.inputs == inputs]


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
    in_channels: int | None = None,
    image_size: ImageSize | None = None,
    width_mult: float = 1.0,
    **input_arguments: Any,
) -> nn.Module:
    """Build a zoo model. Its constructor arguments are kept in ``model.mobiledl_arch``.

    ``in_channels`` (default 1) and ``image_size`` (default 32) describe an image model's
    input; a token model takes ``vocab_size`` (default 32) and ``seq_len`` (default 40) as
    keywords instead. Raises ``UserError`` for an unknown name, an argument the model's kind
    of input does not take, an image smaller than the model can take, or a non-positive
    class count, channel count or width multiplier.
    """
    info = model_info(check_model_name(name))
    check_int(num_classes, "num_classes", 2)
    check_number(width_mult, "width_mult", 0.0, low_open=True)
    if image_size is not None:
        check_image_size(image_size, f"model '{name}': image_size")
    given = {"in_channels": in_channels, "image_size": image_size, **input_arguments}
    given = {key: value for key, value in given.items() if value is not None}
    arguments = input_args(info.inputs).resolve(given, name, info.min_image_size)
    build = functools.partial(
        info.builder, num_classes=num_classes, width_mult=width_mult, **arguments
    )
    check_model_memory(build, f"model '{name}'")
    model = build()
    recorded = {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}
    model.mobiledl_arch = {
        "name": name,
        "num_classes": num_classes,
        **recorded,
        "width_mult": width_mult,
    }
    return model


def create_model_for_task(name: str, task: Task, width_mult: float = 1.0) -> nn.Module:
    """Build zoo model ``name`` for ``task``'s inputs and classes.

    ``UserError`` if the model takes another kind of input than the task gives.
    """
    info = model_info(name)
    if task.input_kind != info.inputs:
        raise UserError(
            f"model '{name}' takes {kind_label(info.inputs)} but task '{task.name}' gives "
            f"{kind_label(task.input_kind)}"
        )
    arguments = input_args(info.inputs).from_specs(task.input_specs(), f"task '{task.name}'")
    return create_model(name, task.num_classes, width_mult=width_mult, **arguments)


def input_specs(arch: Mapping[str, Any]) -> tuple[InputSpec, ...]:
    """The inputs of the model an architecture record (``model.mobiledl_arch``) describes."""
    kind = _record_kind(arch)
    if kind is None:
        raise UserError(
            f"the model record {sorted(arch)} names no zoo model and no image input; "
            "pass an example input"
        )
    return input_args(kind).specs(arch)


def example_input_for(arch: Mapping[str, Any], batch_size: int = 1, zeros: bool = False) -> Inputs:
    """A random (or all-zero) input batch for the model ``arch`` describes."""
    return example_from_specs(input_specs(arch), batch_size, zeros)


def model_input_kind(model: nn.Module) -> str | None:
    """The kind of input a zoo model takes; ``None`` if its record does not say."""
    arch = getattr(model, "mobiledl_arch", None)
    return _record_kind(arch) if arch else None


def model_input_specs(model: nn.Module) -> tuple[InputSpec, ...] | None:
    """The inputs of a zoo model from its record; ``None`` if its record does not say."""
    arch = getattr(model, "mobiledl_arch", None)
    return input_specs(arch) if arch and _record_kind(arch) else None


def _record_kind(arch: Mapping[str, Any]) -> str | None:
    """The input kind of a record's zoo model; ``image`` for a record that only gives
    ``in_channels`` and ``image_size``; ``None`` if the record says neither."""
    _load_zoo()
    info = _REGISTRY.get(arch.get("name", ""))
    if info is not None:
        return info.inputs
    return IMAGE if {"in_channels", "image_size"} <= set(arch) else None


def _load_zoo() -> None:
    """Import the zoo modules so their ``@register_model`` decorators run."""
    from mobiledl.models import zoo  # noqa: F401
