"""Checks on what a model file asks for, before anything is built from it.

A model file is data someone else may have written. ``torch.load(weights_only=True)`` keeps
it from running code; these checks keep it from asking for more than it holds:

- ``check_archive``: the file's zip records may not unpack to much more than the file's size
  (no compression bomb);
- ``check_payload``: every field of the record has its type and range (``arch`` a mapping,
  ``num_classes`` an int >= 2, ``image_size`` two positive ints, ``transforms`` a list of
  ``{kind, config}`` mappings, ...) and the weights are plain dense tensors that own their
  data (no tensor whose shape claims more elements than its storage holds);
- ``check_rebuild_size``: the model is first rebuilt on PyTorch's ``meta`` device (shapes only,
  no memory); a record whose model needs more values than the file's weights hold, or whose
  rebuild would allocate more than ``MAX_BUILD_RATIO`` times them, is refused.

Each failure is a one-line ``UserError`` naming the file and the field.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiledl.errors import UserError

#: The fields a model record (``arch``) may have.
ARCH_FIELDS = (
    "name",
    "num_classes",
    "in_channels",
    "image_size",
    "vocab_size",
    "seq_len",
    "n_segments",
    "num_points",
    "width_mult",
    "transforms",
    "display_name",
    "history",
)
#: A model rebuilt from a file may allocate at most this many times the values the file holds
#: plus ``BUILD_SLACK`` (64 MB of fp32) while it is built: a channel-pruned or factorized
#: model, or a NAS sub-network, is first built as its full zoo model (a NAS search's base
#: model holds 250x the values of the sub-network it becomes).
MAX_BUILD_RATIO = 16
BUILD_SLACK = 16_000_000
#: Uncompressed zip records may exceed the file size by this factor (plus ``ZIP_SLACK``).
MAX_UNPACK_RATIO = 2
ZIP_SLACK = 1 << 20
TENSOR_DTYPES = frozenset(
    {
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    }
)


def check_archive(path: Path) -> None:
    """Refuse a zip archive whose records unpack to far more bytes than the file has."""
    if not zipfile.is_zipfile(path):
        return  # not torch's zip format: torch.load rejects or reads it as a plain stream
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > MAX_UNPACK_RATIO * size + ZIP_SLACK:
        raise UserError(f"{path}: its records unpack to {unpacked:,} bytes from {size:,}")


def check_payload(payload: Mapping[str, Any], path: Path) -> int:
    """Type- and range-check a model file's record and weights; return the values it holds."""
    _expect(payload.get("arch"), dict, path, "arch", "a mapping")
    _expect(payload.get("meta", {}), dict, path, "meta", "a mapping")
    check_arch(payload["arch"], path)
    return stored_values(payload.get("state_dict"), path)


def check_arch(arch: Mapping[str, Any], path: Path) -> None:
    """Every field of ``arch`` has the type and range ``create_model`` and the loader need."""
    unknown = sorted(set(arch) - set(ARCH_FIELDS))
    if unknown:
        raise UserError(
            f"{path}: arch has unknown field '{unknown[0]}'; fields: {', '.join(ARCH_FIELDS)}"
        )
    _expect(arch.get("name"), str, path, "arch.name", "a model name")
    _int_field(arch, "num_classes", 2, path)
    if "vocab_size" in arch or "seq_len" in arch:  # a token model (mobiledl.models.inputs)
        _int_field(arch, "vocab_size", 1, path)
        _int_field(arch, "seq_len", 1, path)
    elif "num_points" in arch:  # a point-cloud model: points per example cloud
        _int_field(arch, "num_points", 1, path)
    else:
        _check_image_fields(arch, path)
    if "n_segments" in arch:  # a clip model: frames per clip
        _int_field(arch, "n_segments", 1, path)
    width = arch.get("width_mult", 1.0)
    if not (_is_number(width) and math.isfinite(width) and width > 0):
        raise UserError(f"{path}: arch.width_mult must be a finite number > 0; got {width!r:.40}")
    _expect(arch.get("display_name", ""), str, path, "arch.display_name", "a string")
    _expect(arch.get("history", []), list, path, "arch.history", "a list")
    _check_transforms(arch.get("transforms", []), path)


def _check_image_fields(arch: Mapping[str, Any], path: Path) -> None:
    _int_field(arch, "in_channels", 1, path)
    size = arch.get("image_size")
    if not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(_is_int(v) and v >= 1 for v in size)
    ):
        raise UserError(f"{path}: arch.image_size must be two positive integers; got {size!r:.60}")


def stored_values(state: Any, path: Path) -> int:
    """The number of values the weights hold; ``UserError`` for anything but a mapping of
    names to dense tensors that own their data."""
    _expect(state, dict, path, "state_dict", "a mapping of names to tensors")
    total = 0
    for name, tensor in state.items():
        where = f"state_dict['{str(name)[:60]}']"
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise UserError(f"{path}: {where} must map a name to a tensor")
        if tensor.layout != torch.strided or tensor.dtype not in TENSOR_DTYPES:
            raise UserError(f"{path}: {where} is a {tensor.layout} {tensor.dtype} tensor")
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise UserError(
                f"{path}: {where} claims {tensor.numel():,} values but its data holds fewer"
            )
        total += tensor.numel()
    return total


def check_rebuild_size(build: Callable[[], nn.Module], stored: int, path: Path) -> None:
    """Rebuild the model on the ``meta`` device and compare its size with the stored values.

    ``build()`` must make the model as the loader will; on ``meta`` it allocates nothing.
    """
    largest = [0]
    try:
        with torch.device("meta"), _counting_allocations(largest):
            model = build()
    except UserError as exc:
        raise UserError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None
    needed = sum(t.numel() for t in model.state_dict().values())
    if needed > stored:
        raise UserError(
            f"{path}: the record asks for a model of {needed:,} values but the file holds "
            f"{stored:,}"
        )
    allowed = MAX_BUILD_RATIO * stored + BUILD_SLACK
    if largest[0] > allowed:
        raise UserError(
            f"{path}: rebuilding the record's model allocates {largest[0]:,} values; the file "
            f"holds {stored:,} (at most {MAX_BUILD_RATIO}x that plus {BUILD_SLACK:,} are allowed)"
        )


class _counting_allocations:  # noqa: N801 (used as a context manager, like torch.device)
    """Add up the parameters and buffers created while active (the build's peak size)."""

    def __init__(self, total: list[int]) -> None:
        self.total = total

    def __enter__(self) -> None:
        self.handles = [
            nn.modules.module.register_module_parameter_registration_hook(self._count),
            nn.modules.module.register_module_buffer_registration_hook(self._count),
        ]

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def _count(self, module: nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None:
            self.total[0] += tensor.numel()


def _check_transforms(transforms: Any, path: Path) -> None:
    _expect(transforms, list, path, "arch.transforms", "a list")
    for index, transform in enumerate(transforms):
        where = f"arch.transforms[{index}]"
        _expect(transform, dict, path, where, "a mapping with 'kind' and 'config'")
        _expect(transform.get("kind"), str, path, f"{where}.kind", "a string")
        _expect(transform.get("config", {}), dict, path, f"{where}.config", "a mapping")


def _int_field(arch: Mapping[str, Any], key: str, minimum: int, path: Path) -> None:
    value = arch.get(key)
    if not (_is_int(value) and value >= minimum):
        raise UserError(f"{path}: arch.{key} must be an integer >= {minimum}; got {value!r:.40}")


def _expect(value: Any, kind: type, path: Path, field: str, description: str) -> None:
    if not isinstance(value, kind):
        raise UserError(f"{path}: {field} must be {description}; got {type(value).__name__}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
