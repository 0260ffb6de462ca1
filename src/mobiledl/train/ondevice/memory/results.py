"""What the memory model predicts: per-layer rows, the step's totals and peak, and the
``ModuleMemory`` protocol a custom layer uses to report its own accounting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mobiledl.profile.measurement import Measurement


@dataclass(frozen=True)
class ModuleMemory:
    """A custom layer's own accounting for one call (see the module docstring).

    ``saves_input``: its input is kept for backward. ``extra_saved``: bytes of new tensors kept
    for backward. ``forward_workspace`` / ``backward_workspace``: bytes of temporaries alive
    while it runs forward / backward (beyond its output and the gradients).
    """

    saves_input: bool = False
    extra_saved: int = 0
    forward_workspace: int = 0
    backward_workspace: int = 0


@dataclass
class LayerTrainingMemory:
    """One layer's share of a training step (bytes); ``saved_bytes`` are kept for backward."""

    name: str
    type: str
    params: int
    trainable_params: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    saved_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class TrainingMemoryProfile:
    """Predicted memory of one training step (bytes) and where its peak falls.

    ``peak_bytes`` is the maximum over the step of everything live: ``weight_bytes`` +
    ``optimizer_bytes`` + ``input_bytes`` (always: one batch of inputs and targets, the data
    loader's buffers, never the dataset) + activations, masks, gradients and workspaces (as
    they come and go). ``peak_phase`` is ``forward``, ``recompute``,
    ``backward`` or ``step``; ``peak_layer`` the layer running then; ``peak_breakdown`` what the
    peak is made of, by category.
    """

    layers: list[LayerTrainingMemory]
    params: int
    trainable_params: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    input_bytes: int
    saved_activation_bytes: int
    peak_bytes: int
    peak_phase: str
    peak_layer: str
    optimizer: str
    checkpoint_segments: int | None
    batch_size: int
    peak_breakdown: dict[str, int] = field(default_factory=dict)
    unknown_ops: list[str] = field(default_factory=list)

    def measurement(self, name: str = "model") -> Measurement:
        """A ``Measurement`` whose ``peak_memory_bytes`` is the predicted training peak."""
        return Measurement(
            name=name,
            params=self.params,
            bytes=self.weight_bytes,
            peak_memory_bytes=self.peak_bytes,
            batch_size=self.batch_size,
            extra={"trainable_params": self.trainable_params, "training_memory": self.totals()},
        )

    def totals(self) -> dict[str, Any]:
        """Every total, without the per-layer rows."""
        return {k: v for k, v in self.to_dict().items() if k != "layers"}

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["layers"] = [layer.to_dict() for layer in self.layers]
        return out

    def table(self) -> str:
        """Per-layer text table, then the totals and the peak."""
        header = f"{'layer':<34} {'type':<18} {'trainable':>10} {'grad B':>10} {'saved B':>11}"
        rows = [header, "-" * len(header)]
        for layer in self.layers:
            rows.append(
                f"{layer.name[:34]:<34} {layer.type[:18]:<18} {layer.trainable_params:>10,} "
                f"{layer.gradient_bytes:>10,} {layer.saved_bytes:>11,}"
            )
        rows.append(
            f"weights {self.weight_bytes:,} B | gradients {self.gradient_bytes:,} B | optimizer "
            f"{self.optimizer_bytes:,} B | input {self.input_bytes:,} B | saved activations "
            f"{self.saved_activation_bytes:,} B | peak {self.peak_bytes:,} B "
            f"({self.peak_phase}, {self.peak_layer or 'model'})"
        )
        return "\n".join(rows)
