"""The one row of numbers every step of mobiledl records about a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    """Numbers about one model on one task and one engine.

    Unset fields stay ``None``: a measurement never invents a number it did not measure.
    Each field has one definition everywhere:

    - ``accuracy``: the task's metric on its test split (of the PyTorch model unless
      ``extra["accuracy_of"]`` names the engine artifact that was scored);
    - ``params``: parameters of the PyTorch model; ``macs``: multiply-accumulates of one
      inference on one sample;
    - ``bytes``: the size of the file the engine runs (the exported artifact), always;
    - ``storage_bytes``: the packed or encoded size a method computes for its weights (k-means
      indices + codebooks, 1- or 2-bit weights, Huffman coding), where it has one;
    - ``peak_memory_bytes``: peak activation memory of one inference (at 8 bits for an int8
      model); ``mobiledl adapt``, which measures training, reports the peak of one training
      step instead and says so in ``extra["memory_kind"]``;
    - ``latency_ms_*``: measured in ``engine`` at ``batch_size`` with ``threads``.
    """

    name: str = "model"
    accuracy: float | None = None
    params: int | None = None
    macs: int | None = None
    bytes: int | None = None
    storage_bytes: int | None = None
    peak_memory_bytes: int | None = None
    latency_ms_median: float | None = None
    latency_ms_p90: float | None = None
    engine: str | None = None
    batch_size: int | None = None
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--json`` output of the CLI)."""
        return dataclasses.asdict(self)

    def update(self, other: Measurement) -> Measurement:
        """A copy with every field that ``other`` has set taken from ``other``."""
        merged = dataclasses.replace(self, extra={**self.extra, **other.extra})
        for f in dataclasses.fields(self):
            if f.name in ("extra", "name"):
                continue
            value = getattr(other, f.name)
            if value is not None:
                setattr(merged, f.name, value)
        return merged
