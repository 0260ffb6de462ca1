"""The one row of numbers every step of mobiledl records about a model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measurement:
    """Numbers about one model on one task and one engine.

    Unset fields stay ``None``: a measurement never invents a number it did not measure.
    ``bytes`` is the size of the model's weights at ``precision_bits`` (or of an exported
    artifact when ``extra["artifact"]`` names one).
    """

    name: str = "model"
    accuracy: float | None = None
    params: int | None = None
    macs: int | None = None
    bytes: int | None = None
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
