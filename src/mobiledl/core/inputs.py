"""Model inputs of any structure: one tensor, a tuple of tensors, or a dict of named tensors.

A ``Task`` yields batches whose inputs have one of these three forms, and everything that
runs a model (trainer, evaluation, profiler, engines) goes through ``call_model`` instead of
assuming a single image tensor:

- a tensor ``x`` is passed as ``model(x)``;
- a tuple ``(a, b)`` as ``model(a, b)``;
- a dict ``{"tokens": t, "mask": m}`` as ``model(tokens=t, mask=m)``.

The batch is the first dimension of every tensor. The helpers that only look at the
structure (``map_inputs``, ``input_tensors``, ``slice_batch``, ``batch_size_of``) work the
same on numpy arrays, which is how engines use them. ``InputSpec`` describes one input tensor
without data (name, shape with ``None`` for dynamic dimensions, dtype, and for integer
inputs such as token ids the exclusive upper bound of their values); engines take input
names and dynamic axes from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mobiledl.errors import UserError

#: One batch of model inputs: a tensor, a tuple of tensors or a dict of named tensors.
Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]

#: Input kinds of the built-in tasks and models (a user's task may name its own).
IMAGE = "image"
TOKENS = "tokens"
CLIP = "clip"
POINTS = "points"
_KIND_LABELS = {IMAGE: "images", TOKENS: "token ids", CLIP: "video clips", POINTS: "point clouds"}


def kind_label(kind: str) -> str:
    """How messages name a kind of input: ``images``, ``token ids``, ``'clip' inputs``."""
    return _KIND_LABELS.get(kind, f"'{kind}' inputs")


@dataclass(frozen=True)
class InputSpec:
    """One input tensor of a model or task, described without data.

    ``shape`` includes the batch; ``None`` marks a dynamic dimension (normally only the
    batch). ``high``: integer inputs (token ids, indices) lie in ``[0, high)``.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: torch.dtype = torch.float32
    high: int | None = None

    @property
    def is_integer(self) -> bool:
        """Whether the input holds integers (ids, indices) rather than real values."""
        return not (self.dtype.is_floating_point or self.dtype.is_complex)

    def describe(self) -> str:
        """``tokens: int64 [batch, 40]``, for messages."""
        dims = ", ".join(
            "batch" if i == 0 and d is None else str(d) for i, d in enumerate(self.shape)
        )
        return f"{self.name}: {str(self.dtype).removeprefix('torch.')} [{dims}]"


def specs_match(given: Sequence[InputSpec], wanted: Sequence[InputSpec]) -> bool:
    """Whether inputs ``given`` (a task's) fit a model that takes ``wanted``.

    Shapes must agree outside the batch (a ``None`` in ``wanted`` takes any size), and so
    must integer versus real dtypes; names only matter for several inputs.
    """
    if len(given) != len(wanted):
        return False
    return all(_spec_fits(g, w, len(wanted) > 1) for g, w in zip(given, wanted, strict=True))


def _spec_fits(given: InputSpec, wanted: InputSpec, named: bool) -> bool:
    if len(given.shape) != len(wanted.shape) or given.is_integer != wanted.is_integer:
        return False
    if named and given.name != wanted.name:
        return False
    return all(w is None or g == w for g, w in zip(given.shape[1:], wanted.shape[1:], strict=True))


def describe_specs(specs: Sequence[InputSpec]) -> str:
    """``shaped [1, 8, 8] float32`` for one input (no batch), else every spec's ``describe``."""
    if len(specs) == 1:
        dtype = str(specs[0].dtype).removeprefix("torch.")
        return f"shaped {list(specs[0].shape[1:])} {dtype}"
    return "[" + "; ".join(spec.describe() for spec in specs) + "]"


def call_model(model: nn.Module | Callable[..., Any], inputs: Inputs) -> Any:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)`` for the three input forms."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def map_inputs(fn: Callable[[torch.Tensor], Any], inputs: Inputs) -> Any:
    """``inputs`` with ``fn`` applied to every tensor, keeping the structure."""
    if isinstance(inputs, dict):
        return {name: fn(tensor) for name, tensor in inputs.items()}
    if isinstance(inputs, tuple | list):
        return tuple(fn(tensor) for tensor in inputs)
    return fn(inputs)


def input_tensors(inputs: Inputs) -> list[torch.Tensor]:
    """The tensors of ``inputs`` in order (dict values in insertion order)."""
    if isinstance(inputs, dict):
        return list(inputs.values())
    if isinstance(inputs, tuple | list):
        return list(inputs)
    return [inputs]


def check_inputs(inputs: Any, what: str = "model input") -> None:
    """``UserError`` unless ``inputs`` is a tensor or a non-empty tuple/dict of tensors."""
    tensors = input_tensors(inputs) if isinstance(inputs, dict | tuple | list) else [inputs]
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise UserError(
            f"{what} must be a tensor or a tuple or dict of tensors; got {type(inputs).__name__}"
        )


def batch_size_of(inputs: Inputs) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    return len(input_tensors(inputs)[0])


def slice_batch(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` of every tensor."""
    return map_inputs(lambda tensor: tensor[start:stop], inputs)


def repeat_batch(inputs: Inputs, batch_size: int) -> Inputs:
    """A batch of ``batch_size`` copies of the first sample (contiguous)."""
    return map_inputs(lambda t: t[:1].expand(batch_size, *t.shape[1:]).contiguous(), inputs)


def specs_of(inputs: Inputs) -> tuple[InputSpec, ...]:
    """Specs of an example batch: a dynamic batch, the other dimensions as given.

    Names are the dict keys, ``input`` for a single tensor and ``input_0, input_1, ...`` for
    a tuple. Integer inputs get no ``high`` (it is not knowable from one example).
    """
    check_inputs(inputs)
    if isinstance(inputs, dict):
        names = list(inputs)
    elif isinstance(inputs, tuple | list):
        names = [f"input_{i}" for i in range(len(inputs))]
    else:
        names = ["input"]
    return tuple(
        InputSpec(name, (None, *tensor.shape[1:]), tensor.dtype)
        for name, tensor in zip(names, input_tensors(inputs), strict=True)
    )


def example_from_specs(
    specs: Sequence[InputSpec], batch_size: int = 1, zeros: bool = False
) -> Inputs:
    """A batch matching ``specs``, or all zeros: standard-normal reals, uniform integers in
    ``[0, high)`` (from the global RNG) and all-true masks. One spec gives a tensor, several
    a tuple in their order."""
    tensors = tuple(_example_tensor(spec, batch_size, zeros) for spec in specs)
    return tensors[0] if len(tensors) == 1 else tensors


def _example_tensor(spec: InputSpec, batch_size: int, zeros: bool) -> torch.Tensor:
    if any(d is None for d in spec.shape[1:]):
        raise UserError(f"input {spec.describe()} has a dynamic size; give an example input")
    shape = (batch_size, *spec.shape[1:])
    if zeros:
        return torch.zeros(shape, dtype=spec.dtype)
    if spec.dtype == torch.bool:  # masks: every position valid
        return torch.ones(shape, dtype=torch.bool)
    if spec.is_integer:
        return torch.randint(0, spec.high or 1, shape, dtype=spec.dtype)
    return torch.randn(shape, dtype=spec.dtype)
