"""Profiler: params, MACs, pooling ops, weight bytes and peak activation memory of a model.

``profile_model(model, example_input, bits=32)`` runs the model once and returns a
``ModelProfile`` with a per-layer breakdown; ``.measurement(name)`` turns it into the
``Measurement`` row every mobiledl step records.
"""

from mobiledl.profile.measurement import Measurement
from mobiledl.profile.profiler import (
    LayerProfile,
    ModelProfile,
    count_macs,
    count_params,
    peak_activation_memory,
    profile_model,
    weight_bytes,
)

__all__ = [
    "LayerProfile",
    "Measurement",
    "ModelProfile",
    "count_macs",
    "count_params",
    "peak_activation_memory",
    "profile_model",
    "weight_bytes",
]
