"""One call that fills a ``Measurement``: accuracy, size, MACs, memory and real latency.

Every command and pipeline step measures a model the same way, so numbers from different
steps compare side by side (DESIGN.md, "claims are measurements"), whatever methods changed
the model:

- ``params``, ``macs`` and ``peak_memory_bytes`` are profiled on the model's float lowering
  (``mobiledl.deploy.lowering``: k-means weights decoded, fake quantizers removed), at 8-bit
  activations when the model is quantized, as its integer engine graph runs;
- ``accuracy`` is the PyTorch model's (the simulation, for a quantized model) on the test split;
- ``bytes`` is the size of the artifact the engine exports (int8 for a quantized model);
- ``storage_bytes`` is the packed size of the weights where a method packs them;
- latency is measured in the engine on that same artifact.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from mobiledl.data.task import Task
from mobiledl.deploy import get_engine
from mobiledl.deploy.engine import Engine
from mobiledl.deploy.lowering import is_quantized, lower_model
from mobiledl.errors import UserError
from mobiledl.profile import Measurement, packed_storage_bytes, profile_model
from mobiledl.train import evaluate
from mobiledl.validate import expect_module, expect_task

INT8_BITS = 8


def measure_model(
    model: nn.Module,
    name: str,
    task: Task | None = None,
    example_input: torch.Tensor | None = None,
    latency: bool = True,
    engine: str | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
    artifact: str | Path | None = None,
) -> Measurement:
    """The ``Measurement`` of ``model`` (see the module docstring).

    ``example_input`` defaults to one real test sample of ``task``. The model is exported to
    ``engine`` (default: the default engine) at ``artifact`` (default: a temporary file) for
    ``bytes``, and timed there at ``batch_size`` if ``latency``.
    """
    expect_module(model, "measure_model")
    if task is not None:
        expect_task(task, "measure_model")
    if example_input is None:
        if task is None:
            raise UserError("measuring a model needs a task or an example input")
        example_input = task.example_input(1)
    if batch_size < 1 or repeats < 1:
        raise UserError(f"batch_size and repeats must be >= 1; got {batch_size}, {repeats}")
    model.eval()
    measurement = _profile(model, name, example_input)
    if task is not None:
        measurement.accuracy = evaluate(model, task, "test")
    backend = get_engine(engine)
    with tempfile.TemporaryDirectory(prefix="mobiledl-") as tmp:
        path = Path(artifact) if artifact else Path(tmp) / f"model{backend.suffix}"
        backend.export(model, example_input[:1], path)
        measurement.bytes = path.stat().st_size
        measurement.engine = backend.name
        if latency:
            measurement = measurement.update(
                artifact_latency(backend, path, example_input, batch_size, threads, repeats)
            )
    return measurement


def _profile(model: nn.Module, name: str, example_input: torch.Tensor) -> Measurement:
    quantized = is_quantized(model)
    plain = lower_model(model, keep_quantization=False).model
    bits = INT8_BITS if quantized else 32
    measurement = profile_model(plain, example_input[:1], bits=bits).measurement(name)
    measurement.storage_bytes = packed_storage_bytes(model)
    measurement.extra["representation"] = "int8" if quantized else "float"
    return measurement


def artifact_latency(
    engine: Engine,
    artifact: Path,
    example_input: torch.Tensor,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
) -> Measurement:
    """Latency of an exported artifact at ``batch_size`` copies of the first example input."""
    batch = example_input[:1].expand(batch_size, *example_input.shape[1:]).contiguous()
    runner = engine.load(artifact, threads=threads)
    return engine.benchmark(runner, batch.numpy(), repeats=repeats).to_measurement()


def engine_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    engine: str | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
) -> Measurement:
    """Export ``model`` to ``engine`` in a temp dir and time it at ``batch_size``."""
    backend = get_engine(engine)
    with tempfile.TemporaryDirectory(prefix="mobiledl-") as tmp:
        path = backend.export(model, example_input[:1], Path(tmp) / f"model{backend.suffix}")
        return artifact_latency(backend, path, example_input, batch_size, threads, repeats)


def engine_outputs(
    engine: Engine, artifact: Path, x: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Outputs of an exported artifact run by ``engine`` on ``x``, in batches."""
    runner = engine.load(artifact)
    outputs = [runner.run(x[i : i + batch_size].numpy()) for i in range(0, len(x), batch_size)]
    return torch.cat([torch.from_numpy(output) for output in outputs])
