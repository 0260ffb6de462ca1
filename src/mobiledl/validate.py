"""One place for the checks on what users hand to mobiledl: numbers, arguments and data.

- Numbers (``check_number``, ``check_int``): finite, in range, of the right type; used by the
  method configs (``MethodConfig.__post_init__``), the registry and the command line (argparse
  types ``seed_arg``, ``threads_arg``...), so ``nan``, ``inf`` or ``-1`` is refused with a line
  naming the option, however it arrives.
- Arguments of the Python API (``expect_module``, ``expect_task``, ``expect_tensor``,
  ``expect_path``, ``expect_config``): a wrong type is a ``UserError`` naming the function and
  the argument, not an ``AttributeError`` deep inside.
- Data (``check_finite_data``): NaN or infinite values in user data are refused with the file,
  how many there are and the index of the first.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiledl.errors import UserError

#: Seeds go to NumPy and PyTorch generators, which take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Engine threads beyond this are a typo, and each costs an OS thread.
MAX_THREADS = 1024


# ---------------------------------------------------------------- numbers


def check_number(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` if it is a finite real number in the interval; else a ``UserError``.

    ``low_open`` / ``high_open`` exclude the bounds (``(0, 1]``: ``low=0, low_open=True``).
    """
    ok = _is_real(value) and math.isfinite(value)
    ok = ok and (low is None or value > low or (not low_open and value == low))
    ok = ok and (high is None or value < high or (not high_open and value == high))
    if not ok:
        raise UserError(
            f"{name} must be {_interval(low, high, low_open, high_open)}; got {_show(value)}"
        )
    return value


def check_int(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[low, high]``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = _int_bounds(low, high)
        raise UserError(f"{name} must be an integer{bounds}; got {_show(value)}")
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed NumPy and PyTorch accept: an integer in ``[0, 2**32 - 1]``."""
    return check_int(value, name, 0, MAX_SEED)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"a number in {left}{low:g}, {high:g}{right}"


def _int_bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- command-line types


def arg_type(check: Callable[[Any], Any], parse: Callable[[str], Any], what: str) -> Any:
    """An argparse ``type=`` that parses, then checks (one-line errors, exit code 2)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}; got '{text[:40]}'") from None
        try:
            return check(value)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what  # argparse names the type in some messages
    return convert


seed_arg = arg_type(lambda v: check_seed(v, "the seed"), int, "an integer seed")
threads_arg = arg_type(
    lambda v: check_int(v, "threads", 1, MAX_THREADS), int, "a number of threads"
)
positive_number_arg = arg_type(
    lambda v: check_number(v, "the value", 0, low_open=True), float, "a positive number"
)
positive_int_arg = arg_type(lambda v: check_int(v, "the value", 1), int, "an integer >= 1")
non_negative_int_arg = arg_type(lambda v: check_int(v, "the value", 0), int, "an integer >= 0")


# ---------------------------------------------------------------- API arguments


def expect_module(value: Any, where: str, argument: str = "model") -> nn.Module:
    """``value`` if it is an ``nn.Module``."""
    if not isinstance(value, nn.Module):
        raise UserError(f"{where}: {argument} must be an nn.Module; got {type(value).__name__}")
    return value


def expect_task(value: Any, where: str, argument: str = "task") -> Any:
    """``value`` if it has the ``Task`` interface (build one with ``mobiledl.data.build_task``)."""
    if not all(callable(getattr(value, name, None)) for name in ("loader", "example_input")):
        raise UserError(
            f"{where}: {argument} must be a Task (mobiledl.data.build_task); "
            f"got {type(value).__name__}"
        )
    return value


def expect_tensor(value: Any, where: str, argument: str) -> torch.Tensor:
    """``value`` if it is a ``torch.Tensor``."""
    if not isinstance(value, torch.Tensor):
        raise UserError(f"{where}: {argument} must be a torch.Tensor; got {type(value).__name__}")
    return value


def expect_path(value: Any, what: str) -> Path:
    """``value`` as a ``Path`` if it is a string or path-like object."""
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise UserError(f"{what} must be a path (str or Path); got {type(value).__name__}")
    return Path(value)


def expect_config(value: Any, kind: type, where: str) -> Any:
    """``value`` if it is a ``kind`` (a method config class)."""
    if not isinstance(value, kind):
        raise UserError(
            f"{where}: config must be a {kind.__name__} (e.g. {kind.__name__}(epochs=5)); "
            f"got {type(value).__name__}"
        )
    return value


# ---------------------------------------------------------------- data


def check_finite_data(values: torch.Tensor, source: str, what: str = "inputs") -> torch.Tensor:
    """``values`` if all are finite; else a ``UserError`` naming ``source``, how many are not
    and the index of the first."""
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return values
    bad = ~finite
    first = np.unravel_index(int(bad.flatten().byte().argmax()), tuple(bad.shape))
    where = [int(i) for i in first]
    raise UserError(
        f"{source}: {int(bad.sum()):,} non-finite values (NaN, inf or beyond float32) in the "
        f"{what}; the first in sample {where[0]} at {where[1:]}"
    )


# ---------------------------------------------------------------- method configs


def check_config_numbers(config: Any) -> None:
    """What holds for every method config: each float (also inside tuples and mappings) is
    finite, and each ``seed`` is one the random generators accept."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        where = f"{type(config).__name__}.{f.name}"
        if f.name == "seed":
            check_seed(value, where)
        for number in _floats(value):
            check_number(number, where)


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, tuple | list):
        return [v for v in value if isinstance(v, float)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, float)]
    return []


def check_model_name(value: Any) -> str:
    """A zoo model name must be a string (``mobiledl.models.list_models``)."""
    if not isinstance(value, str):
        raise UserError(f"model name must be a string; got {type(value).__name__} {_show(value)}")
    return value


def check_image_size(value: Any, name: str = "image_size") -> int | tuple[int, int]:
    """An image size: a positive int, or two of them (``(H, W)``)."""
    pair = isinstance(value, tuple | list) and len(value) == 2
    values = list(value) if pair else [value]
    if not (pair or not isinstance(value, tuple | list)):
        raise UserError(f"{name} must be an int or (H, W); got {_show(value)}")
    checked = [check_int(v, name, 1) for v in values]
    return (checked[0], checked[1]) if pair else checked[0]
