"""The ``Measurement`` every pipeline step records: ``mobiledl.measure.measure_model`` with the
recipe's ``measure`` settings, the same for every kind of model (float, pruned, factorized,
quantized, k-means: the engine lowers each; see ``mobiledl.deploy.lowering``)."""

from __future__ import annotations

from torch import nn

from mobiledl.core.task import Task
from mobiledl.measure import measure_model
from mobiledl.profile import Measurement


def measure_step(
    model: nn.Module,
    name: str,
    task: Task,
    latency: bool = True,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 30,
) -> Measurement:
    """The step ``Measurement`` of ``model`` on ``task`` (see ``mobiledl.measure``)."""
    return measure_model(
        model,
        name,
        task,
        latency=latency,
        batch_size=batch_size,
        threads=threads,
        repeats=repeats,
    )
