"""Profiler: params, MACs, pooling ops, weight bytes and peak activation memory of a model.

``profile_model(model, example_input, bits=32)`` runs the model once and returns a
``ModelProfile`` with a per-layer breakdown; ``.measurement(name)`` turns it into the
``Measurement`` row every mobiledl step records; ``peak_allocation`` measures what a piece of
code allocates. The memory of a training step is predicted next to the on-device training
engine whose rules it encodes: ``mobiledl.train.ondevice.memory``.
"""

from mobiledl.profile.allocator import AllocationPeak, peak_allocation
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
from mobiledl.profile.storage import packed_storage_bytes

__all__ = [
    "AllocationPeak",
    "LayerProfile",
    "Measurement",
    "ModelProfile",
    "count_macs",
    "count_params",
    "peak_activation_memory",
    "packed_storage_bytes",
    "peak_allocation",
    "profile_model",
    "weight_bytes",
]
