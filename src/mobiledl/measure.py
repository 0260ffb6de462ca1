"""One call that fills a ``Measurement``: accuracy, size, MACs, memory and real latency.

Every command and pipeline step measures a model the same way, so numbers from
different steps can be compared side by side (DESIGN.md, "claims are measurements").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from mobiledl.data.task import Task
from mobiledl.deploy import get_engine
from mobiledl.profile import Measurement, profile_model
from mobiledl.train import evaluate


def measure_model(
    model: nn.Module,
    name: str,
    task: Task | None = None,
    example_input: torch.Tensor | None = None,
    latency: bool = True,
    engine: str = "onnxruntime",
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
) -> Measurement:
    """Profile ``model``; add test accuracy if a task is given and engine latency if asked.

    ``example_input`` defaults to one real test sample of ``task``. Latency is measured
    by exporting to ``engine`` in a temporary directory and timing it at ``batch_size``.
    """
    if example_input is None:
        if task is None:
            raise ValueError("measure_model needs a task or an example input")
        example_input = task.example_input(1)
    model.eval()
    measurement = profile_model(model, example_input).measurement(name)
    if task is not None:
        measurement.accuracy = evaluate(model, task, "test")
    if latency:
        measurement = measurement.update(
            engine_latency(model, example_input, engine, batch_size, threads, repeats)
        )
    return measurement


def engine_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    engine: str = "onnxruntime",
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
) -> Measurement:
    """Export ``model`` to ``engine`` in a temp dir and time it at ``batch_size``."""
    backend = get_engine(engine)
    batch = example_input[:1].expand(batch_size, *example_input.shape[1:]).contiguous()
    with tempfile.TemporaryDirectory(prefix="mobiledl-") as tmp:
        artifact = backend.export(model, example_input[:1], Path(tmp) / f"model{backend.suffix}")
        runner = backend.load(artifact, threads=threads)
        stats = backend.benchmark(runner, batch.numpy(), repeats=repeats)
    return stats.to_measurement()
