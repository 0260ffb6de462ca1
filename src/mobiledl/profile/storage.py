"""Packed storage: the bytes a model's parameters take in the form a method packs them.

A method whose weights need fewer than 32 bits says how many bytes they pack into through a
``packed_bytes`` method, and this module adds everything else at fp32:

- a module's ``packed_bytes() -> int`` covers its own direct parameters (a k-means layer:
  the codebook and the indices it rebuilds the weight from);
- a ``torch.nn.utils.parametrize`` parametrization's ``packed_bytes(weight) -> int`` covers
  the latent weight it transforms and its own parameters (binary and ternary weights).

This is a computed size (``Measurement.storage_bytes``), not a file: the artifact's size is
``Measurement.bytes``.
"""

from __future__ import annotations

import inspect

from torch import nn
from torch.nn.utils import parametrize


def packed_storage_bytes(model: nn.Module) -> int | None:
    """Packed bytes of ``model``'s parameters, or ``None`` if no module packs its weights."""
    packed, covered, found = 0, set(), False
    for module in model.modules():
        if callable(getattr(module, "packed_bytes", None)) and not _is_parametrization(module):
            packed += module.packed_bytes()
            covered.update(id(p) for p in module.parameters(recurse=False))
            found = True
        if not parametrize.is_parametrized(module):
            continue
        for parametrizations in module.parametrizations.values():
            for parametrization in parametrizations:
                if callable(getattr(parametrization, "packed_bytes", None)):
                    packed += parametrization.packed_bytes(parametrizations.original)
                    covered.add(id(parametrizations.original))
                    covered.update(id(p) for p in parametrization.parameters())
                    found = True
    if not found:
        return None
    others = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    return packed + 4 * others


def _is_parametrization(module: nn.Module) -> bool:
    """Parametrizations take the weight as an argument; they are counted with their layer."""
    return len(inspect.signature(module.packed_bytes).parameters) > 0
