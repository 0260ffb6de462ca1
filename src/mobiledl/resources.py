"""Memory: how much there is, and refusing up front what would not fit.

An input shape, an image size or a model width that needs more memory than the machine has
would otherwise end in an out-of-memory error (or the kernel killing the process) after minutes
of work. The checks here estimate first and refuse with the estimate:

- ``check_fits(nbytes, what)``: against the memory available now (``MemAvailable``, and the
  cgroup's limit where there is one), or a lower limit set with ``--max-memory-gb`` /
  ``memory_limit(gb)`` or the ``MOBILEDL_MAX_MEMORY_GB`` environment variable;
- ``check_activation_memory(model, example)``: the activations of a forward pass (or of a
  training step), estimated by running the model on PyTorch's ``meta`` device, which computes
  shapes and allocates nothing;
- ``check_model_memory(build, what)``: the parameters and buffers a model builder creates,
  counted on the ``meta`` device before the real build.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiledl.errors import UserError

logger = logging.getLogger(__name__)

ENV_LIMIT = "MOBILEDL_MAX_MEMORY_GB"
GB = 1 << 30
_LIMIT_GB: ContextVar[float | None] = ContextVar("mobiledl_memory_limit_gb", default=None)
Example = torch.Tensor | tuple[torch.Tensor, ...]
#: No zoo model's activations (even those a training step keeps) reach this multiple of its
#: input (MobileNetV2 training at 32x32: 520x).
MAX_ACTIVATION_RATIO = 4096


@contextlib.contextmanager
def memory_limit(gb: float | None) -> Iterator[None]:
    """Refuse work estimated to need more than ``gb`` GiB while active (``None``: no limit
    beyond the machine's)."""
    token = _LIMIT_GB.set(gb)
    try:
        yield
    finally:
        _LIMIT_GB.reset(token)


def available_bytes() -> tuple[int | None, str]:
    """The bytes work may use and where that number comes from (``None``: unknown)."""
    limits: list[tuple[int, str]] = []
    user_gb = _LIMIT_GB.get() if _LIMIT_GB.get() is not None else _env_limit()
    if user_gb is not None:
        limits.append((int(user_gb * GB), f"the limit of {user_gb:g} GiB"))
    system = _system_available()
    if system is not None:
        limits.append((system, "the memory available"))
    if not limits:
        return None, "unknown"
    return min(limits)


def check_fits(nbytes: int, what: str) -> None:
    """``UserError`` if ``nbytes`` exceed the memory available (see ``available_bytes``)."""
    available, source = available_bytes()
    if available is not None and nbytes > available:
        raise UserError(
            f"{what} needs about {format_bytes(nbytes)} of memory, more than {source} "
            f"({format_bytes(available)}); use a smaller size or set --max-memory-gb"
        )


def format_bytes(nbytes: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def tensor_bytes(shape: tuple[int, ...] | torch.Size, element_size: int = 4) -> int:
    """Bytes of a dense tensor of ``shape``."""
    return math.prod(int(d) for d in shape) * element_size


def check_model_memory(build: Callable[[], nn.Module], what: str) -> None:
    """Count what ``build()`` allocates by running it on the ``meta`` device; refuse if it
    would not fit."""
    with torch.device("meta"):
        model = build()
    tensors = [*model.parameters(), *model.buffers()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    count = sum(p.numel() for p in model.parameters())
    check_fits(nbytes, f"{what} ({count:,} parameters)")


def check_activation_memory(
    model: nn.Module, example: Example, what: str, training: bool = False
) -> None:
    """Refuse an input whose activations (inference peak, or everything a training step keeps
    for the backward pass when ``training``) would not fit in memory.

    An input below ``1 / MAX_ACTIVATION_RATIO`` of the available memory is not estimated (the
    estimate runs the model once on ``meta``, which takes a moment).
    """
    available, _ = available_bytes()
    inputs = example if isinstance(example, tuple) else (example,)
    small = sum(t.numel() * t.element_size() for t in inputs) * MAX_ACTIVATION_RATIO
    if available is not None and small < available:
        return
    check_fits(activation_bytes(model, example, training), what)


def meta_batch(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A ``meta`` tensor shaped like ``example`` with ``batch_size`` samples."""
    return torch.empty((batch_size, *example.shape[1:]), device="meta", dtype=example.dtype)


def activation_bytes(model: nn.Module, example: Example, training: bool = False) -> int:
    """Estimated activation bytes of ``model`` on ``example`` (real or ``meta`` tensors).

    Inference: the largest input + output of any leaf module (a lower bound of the peak).
    Training: the input plus every leaf module's output (what autograd keeps). If the model
    cannot run on the ``meta`` device (data-dependent code), only the input is counted.
    """
    inputs = example if isinstance(example, tuple) else (example,)
    input_bytes = sum(t.numel() * t.element_size() for t in inputs)
    outputs: list[tuple[int, int]] = []
    try:
        _run_on_meta(model, inputs, outputs, training)
    except Exception as exc:  # an estimate: any op without a meta kernel ends it
        logger.debug("activation estimate on meta failed (%s); counting the input only", exc)
        return input_bytes
    if training:
        return input_bytes + sum(out for _, out in outputs)
    return max([input_bytes, *(inp + out for inp, out in outputs)])


def _run_on_meta(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    outputs: list[tuple[int, int]],
    training: bool,
) -> None:
    meta = meta_copy(model).train(training)
    for module in meta.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(_recorder(outputs))
    args = tuple(t.to("meta") for t in inputs)
    with torch.set_grad_enabled(training):
        meta(*args)


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are ``meta`` tensors (the copy
    costs no memory for them)."""
    memo: dict[int, Any] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        if isinstance(tensor, nn.Parameter):
            meta = nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
    return copy.deepcopy(model, memo)


def _recorder(outputs: list[tuple[int, int]]) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, output: object) -> None:
        outputs.append((_nbytes(args), _nbytes(output)))

    return hook


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(_nbytes(v) for v in value)
    return 0


def _env_limit() -> float | None:
    text = os.environ.get(ENV_LIMIT)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{ENV_LIMIT} must be a number of GiB; got '{text[:20]}'") from None
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{ENV_LIMIT} must be a positive number of GiB; got '{text[:20]}'")
    return value


def _system_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's remaining limit."""
    found = [v for v in (_meminfo_available(), _cgroup_remaining()) if v is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _cgroup_remaining() -> int | None:
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        with contextlib.suppress(OSError, ValueError):
            limit = Path(limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            return int(limit) - int(Path(usage_file).read_text().strip())
    return None
