"""Lowering: the standard PyTorch form an engine exports, whatever a method did to a model.

Methods change models in ways an exporter cannot see through: weights behind
``torch.nn.utils.parametrize`` (masks, binary and ternary weights), k-means layers that
rebuild their weight from a codebook, fake quantizers that observe and round. Each engine
owns how it turns a model into its artifact (DESIGN.md, "Engine"); what they all start from
is ``lower_model``:

- parametrized weights are baked into plain parameters (their current values);
- a module with a ``lower(keep_quantization: bool) -> nn.Module`` method is replaced by what it
  returns, and the replacement is lowered in turn. Methods implement it on their own layers:
  a k-means layer returns a plain layer holding the decoded weight; a fake quantizer returns a
  fixed quantize-dequantize step (``keep_quantization=True``, which exporters turn into
  QuantizeLinear / DequantizeLinear pairs) or nothing (``False``, the float model the profiler
  sizes activations of); a quantized conv returns itself with its weight and bias snapped to
  their integer grids. A module that lowers to a quantize-dequantize step sets the class
  attribute ``lowers_to_qdq = True``, which is how an engine knows to build an integer graph.

``lower_model`` works on a copy; the model itself is left as it is. ``composite_attention``
is the one lowering that is a mode rather than a module: while it is active, attention layers
(``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``) run their composite path of
matrix products and softmax instead of the fused inference kernel no exporter can map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from mobiledl.core.clone import clone_module


@dataclass
class Lowered:
    """A lowered copy of a model; ``quantized``: it holds quantize-dequantize steps."""

    model: nn.Module
    quantized: bool


def lower_model(model: nn.Module, keep_quantization: bool = True) -> Lowered:
    """A copy of ``model`` in plain export-ready modules (see the module docstring)."""
    lowered = clone_module(model).eval()
    _bake_parametrizations(lowered)
    found = _lower_children(lowered, keep_quantization)
    return Lowered(lowered, quantized=keep_quantization and found)


@contextlib.contextmanager
def composite_attention() -> Iterator[None]:
    """Turn PyTorch's fused attention "fast path" off for the duration (see the module
    docstring); the previous setting is restored after."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds modules that lower to quantize-dequantize steps."""
    return any(getattr(m, "lowers_to_qdq", False) and _active(m) for m in model.modules())


def _active(module: nn.Module) -> bool:
    return bool(getattr(module, "quantizing", True))


def _bake_parametrizations(model: nn.Module) -> None:
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        for name in list(module.parametrizations.keys()):
            parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def _lower_children(module: nn.Module, keep_quantization: bool) -> bool:
    """Replace every lowerable descendant of ``module``; True if one lowered to Q/DQ."""
    quantized = False
    for name, child in list(module.named_children()):
        if callable(getattr(child, "lower", None)):
            quantized |= bool(getattr(child, "lowers_to_qdq", False)) and _active(child)
            child = child.lower(keep_quantization)
            setattr(module, name, child)
        quantized |= _lower_children(child, keep_quantization)
    return quantized
