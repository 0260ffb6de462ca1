"""Profiler: params, MACs, pooling ops, weight bytes and peak activation memory of a model.

``profile_model(model, example_input, bits=32)`` runs the model once and returns a
``ModelProfile`` with a per-layer breakdown; ``.measurement(name)`` turns it into the
``Measurement`` row every mobiledl step records. ``training_memory(model, batch)`` predicts
the memory of one training step layer by layer (weights, gradients, optimizer state, saved
activations) and its peak; ``peak_allocation`` measures what a piece of code allocates.
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
from mobiledl.profile.training_memory import (
    OPTIMIZER_STATES,
    LayerTrainingMemory,
    ModuleMemory,
    TrainingMemoryProfile,
    TrainingTrace,
    trace_training,
    training_layout,
    training_memory,
    training_modes,
)

__all__ = [
    "OPTIMIZER_STATES",
    "AllocationPeak",
    "LayerProfile",
    "LayerTrainingMemory",
    "Measurement",
    "ModelProfile",
    "ModuleMemory",
    "TrainingMemoryProfile",
    "TrainingTrace",
    "count_macs",
    "count_params",
    "peak_activation_memory",
    "packed_storage_bytes",
    "peak_allocation",
    "profile_model",
    "trace_training",
    "training_layout",
    "training_memory",
    "training_modes",
    "weight_bytes",
]
