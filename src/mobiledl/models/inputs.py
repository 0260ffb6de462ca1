"""What each kind of input means to a zoo model's constructor and to an engine.

A zoo model declares the kind of input it takes (``register_model(..., inputs=...)``). The
kind decides which constructor arguments describe the input, their defaults and checks, the
``InputSpec`` an architecture record implies (so ``export`` and ``profile`` of a model file
need no task), and how a task's specs translate into those arguments:

- ``image``: ``in_channels`` and ``image_size`` ``(H, W)``; one float32 input ``input``
  shaped ``(batch, C, H, W)``;
- ``tokens``: ``vocab_size`` and ``seq_len``; one int64 input ``tokens`` shaped
  ``(batch, L)`` with ids in ``[0, vocab_size)``;
- ``clip``: ``in_channels``, ``image_size`` ``(H, W)`` and ``n_segments`` (frames ``T``); one
  float32 input ``clip`` shaped ``(batch, T, C, H, W)``;
- ``points``: ``num_points`` (points per cloud ``P``); one float32 input ``points`` shaped
  ``(batch, P, 3)`` of ``(x, y, z)`` coordinates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from mobiledl.core.inputs import CLIP, IMAGE, POINTS, TOKENS, InputSpec, kind_label
from mobiledl.errors import UserError

Args = dict[str, Any]


class InputArgs(ABC):
    """The constructor arguments of one kind of input (see the module docstring)."""

    kind: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]]
    #: An input batch shape (``--input-shape``) and how its dimensions read.
    default_shape: ClassVar[tuple[int, ...]]
    shape_help: ClassVar[str]

    def resolve(self, given: Mapping[str, Any], model: str, min_size: tuple[int, int]) -> Args:
        """``given`` with defaults filled in, normalized and checked (``UserError``)."""
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            expected = ", ".join(self.defaults)
            raise UserError(
                f"model '{model}' takes {kind_label(self.kind)} ({expected}); "
                f"{unknown[0]} does not apply"
            )
        return self.check({**self.defaults, **given}, model, min_size)

    @abstractmethod
    def check(self, args: Args, model: str, min_size: tuple[int, int]) -> Args:
        """The arguments normalized (e.g. an int size to ``(H, W)``), or ``UserError``."""

    @abstractmethod
    def specs(self, args: Mapping[str, Any]) -> tuple[InputSpec, ...]:
        """The inputs a model built with ``args`` takes."""

    @abstractmethod
    def from_specs(self, specs: Sequence[InputSpec], source: str) -> Args:
        """The arguments of a model for inputs ``specs`` (a task's), or ``UserError``."""

    @abstractmethod
    def from_shape(self, shape: tuple[int, ...]) -> Args:
        """The arguments of a model for an input batch of ``shape`` (``default_shape``'s rank)."""

    def _single(
        self, specs: Sequence[InputSpec], source: str, rank: int, integer: bool
    ) -> InputSpec:
        """The one spec of ``specs`` if it has ``rank`` dimensions and the right dtype class."""
        ok = (
            len(specs) == 1
            and len(specs[0].shape) == rank
            and specs[0].is_integer == integer
            and all(d is not None for d in specs[0].shape[1:])
        )
        if not ok:
            given = "; ".join(spec.describe() for spec in specs)
            raise UserError(f"{source} gives inputs [{given}], not {kind_label(self.kind)}")
        return specs[0]


def _as_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = image_size
    return (int(height), int(width))


class ImageArgs(InputArgs):
    """Images: ``in_channels`` and ``image_size``; one float32 input ``(batch, C, H, W)``."""

    kind = IMAGE
    defaults = {"in_channels": 1, "image_size": 32}
    default_shape = (1, 3, 32, 32)
    shape_help = "N,C,H,W"

    def check(self, args: Args, model: str, min_size: tuple[int, int]) -> Args:
        height, width = _as_hw(args["image_size"])
        if height < min_size[0] or width < min_size[1]:
            raise UserError(
                f"model '{model}' needs inputs of at least {min_size[0]}x{min_size[1]} pixels; "
                f"got {height}x{width}"
            )
        if args["in_channels"] < 1:
            raise UserError(f"in_channels must be >= 1; got {args['in_channels']}")
        return {"in_channels": args["in_channels"], "image_size": (height, width)}

    def specs(self, args: Mapping[str, Any]) -> tuple[InputSpec, ...]:
        shape = (None, int(args["in_channels"]), *_as_hw(args["image_size"]))
        return (InputSpec("input", shape, torch.float32),)

    def from_specs(self, specs: Sequence[InputSpec], source: str) -> Args:
        spec = self._single(specs, source, rank=4, integer=False)
        return {"in_channels": spec.shape[1], "image_size": tuple(spec.shape[2:])}

    def from_shape(self, shape: tuple[int, ...]) -> Args:
        return {"in_channels": shape[1], "image_size": tuple(shape[2:])}


class TokenArgs(InputArgs):
    """Token ids: ``vocab_size`` and ``seq_len``; one int64 input ``(batch, L)``."""

    kind = TOKENS
    defaults = {"vocab_size": 32, "seq_len": 40}
    default_shape = (1, 40)
    shape_help = "N,L"

    def check(self, args: Args, model: str, min_size: tuple[int, int]) -> Args:
        for name in self.defaults:
            value = args[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} of model '{model}' must be an integer >= 1; got {value!r}")
        return {name: args[name] for name in self.defaults}

    def specs(self, args: Mapping[str, Any]) -> tuple[InputSpec, ...]:
        shape = (None, int(args["seq_len"]))
        return (InputSpec("tokens", shape, torch.int64, high=int(args["vocab_size"])),)

    def from_specs(self, specs: Sequence[InputSpec], source: str) -> Args:
        spec = self._single(specs, source, rank=2, integer=True)
        if spec.high is None:
            raise UserError(f"{source} does not say how many token ids there are (no vocab size)")
        return {"vocab_size": spec.high, "seq_len": spec.shape[1]}

    def from_shape(self, shape: tuple[int, ...]) -> Args:
        return {"seq_len": shape[1]}


class ClipArgs(InputArgs):
    """Video clips: ``in_channels``, ``image_size`` and ``n_segments`` (frames per clip); one
    float32 input ``(batch, T, C, H, W)``."""

    kind = CLIP
    defaults = {"in_channels": 1, "image_size": 32, "n_segments": 8}
    default_shape = (1, 8, 1, 32, 32)
    shape_help = "N,T,C,H,W"

    def check(self, args: Args, model: str, min_size: tuple[int, int]) -> Args:
        image = ImageArgs().check(args, model, min_size)
        segments = args["n_segments"]
        if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
            raise UserError(
                f"n_segments of model '{model}' must be an integer >= 1; got {segments!r}"
            )
        return {**image, "n_segments": segments}

    def specs(self, args: Mapping[str, Any]) -> tuple[InputSpec, ...]:
        frame = (int(args["in_channels"]), *_as_hw(args["image_size"]))
        return (InputSpec("clip", (None, int(args["n_segments"]), *frame), torch.float32),)

    def from_specs(self, specs: Sequence[InputSpec], source: str) -> Args:
        spec = self._single(specs, source, rank=5, integer=False)
        shape = spec.shape
        return {"n_segments": shape[1], "in_channels": shape[2], "image_size": tuple(shape[3:])}

    def from_shape(self, shape: tuple[int, ...]) -> Args:
        return {"n_segments": shape[1], "in_channels": shape[2], "image_size": tuple(shape[3:])}


class PointArgs(InputArgs):
    """Point clouds: ``num_points`` per cloud; one float32 input ``(batch, P, 3)``."""

    kind = POINTS
    defaults = {"num_points": 512}
    default_shape = (1, 512, 3)
    shape_help = "N,P,3"

    def check(self, args: Args, model: str, min_size: tuple[int, int]) -> Args:
        points = args["num_points"]
        if not isinstance(points, int) or isinstance(points, bool) or points < 1:
            raise UserError(
                f"num_points of model '{model}' must be an integer >= 1; got {points!r}"
            )
        return {"num_points": points}

    def specs(self, args: Mapping[str, Any]) -> tuple[InputSpec, ...]:
        return (InputSpec("points", (None, int(args["num_points"]), 3), torch.float32),)

    def from_specs(self, specs: Sequence[InputSpec], source: str) -> Args:
        spec = self._single(specs, source, rank=3, integer=False)
        if spec.shape[2] != 3:
            raise UserError(f"{source} gives inputs [{spec.describe()}], not (x, y, z) points")
        return {"num_points": spec.shape[1]}

    def from_shape(self, shape: tuple[int, ...]) -> Args:
        if len(shape) != 3 or shape[2] != 3:
            raise UserError(f"a point-cloud input shape is N,P,3; got {','.join(map(str, shape))}")
        return {"num_points": shape[1]}


INPUT_ARGS: dict[str, InputArgs] = {
    args.kind: args for args in (ImageArgs(), TokenArgs(), ClipArgs(), PointArgs())
}


def input_args(kind: str) -> InputArgs:
    """The constructor arguments of input ``kind``; ``UserError`` if no zoo model takes it."""
    if kind not in INPUT_ARGS:
        raise UserError(f"no zoo model takes {kind_label(kind)}; kinds: {', '.join(INPUT_ARGS)}")
    return INPUT_ARGS[kind]
