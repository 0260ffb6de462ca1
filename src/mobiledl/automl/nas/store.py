"""Supernet files: the search space, the weights and how they were trained; no code inside.

Like mobiledl model files, a supernet file is a dict of tensors and primitives written with
``torch.save`` (atomically) and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.space import SearchSpace
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path
from mobiledl.models.record import check_archive, check_rebuild_size, stored_values

FORMAT = "mobiledl-nas-supernet"
VERSION = 1


@dataclass
class SupernetFile:
    """A loaded supernet (eval mode) and the metadata saved with it (task, seed, history)."""

    supernet: OFASupernet
    meta: dict[str, Any] = field(default_factory=dict)


def save_supernet(path: str | Path, supernet: OFASupernet, meta: dict[str, Any]) -> Path:
    """Write ``supernet`` and JSON-like ``meta`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(_payload(supernet, meta), tmp)
    return Path(path)


def supernet_bytes(supernet: OFASupernet) -> bytes:
    """The supernet file's bytes (sent to Ray workers)."""
    buffer = io.BytesIO()
    torch.save(_payload(supernet, {}), buffer)
    return buffer.getvalue()


def supernet_from_bytes(data: bytes) -> OFASupernet:
    """Inverse of :func:`supernet_bytes`."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return _rebuild(payload, "supernet bytes").eval()


def _payload(supernet: OFASupernet, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "space": supernet.space.to_dict(),
        "num_classes": supernet.num_classes,
        "in_channels": supernet.in_channels,
        "input_size": list(supernet.input_size),
        "state_dict": {k: v.detach().cpu() for k, v in supernet.state_dict().items()},
        "meta": meta,
    }


def load_supernet(path: str | Path) -> SupernetFile:
    """Rebuild the supernet stored at ``path``; ``UserError`` naming the file otherwise."""
    payload = _read(Path(path))
    return SupernetFile(_rebuild(payload, path).eval(), payload.get("meta", {}))


def _rebuild(payload: dict[str, Any], source: str | Path) -> OFASupernet:
    try:
        space = SearchSpace.from_dict(payload["space"])
        arguments = (payload["num_classes"], payload["in_channels"], tuple(payload["input_size"]))
        stored = stored_values(payload["state_dict"], Path(str(source)))
        check_rebuild_size(lambda: OFASupernet(space, *arguments), stored, Path(str(source)))
        supernet = OFASupernet(space, *arguments)
        supernet.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0][:120]
        raise UserError(f"{source}: supernet record does not fit its weights ({reason})") from None
    return supernet


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"supernet file not found: {path}")
    check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt bytes surface as many exception types
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable supernet file ({reason})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a mobiledl supernet file (no '{FORMAT}' header)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{path} was written by a newer mobiledl (format {version!r:.20})")
    return payload
