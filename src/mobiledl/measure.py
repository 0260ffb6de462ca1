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

Inputs may be of any structure and dtype (``mobiledl.core.inputs``); a zoo model's artifact
takes its inputs under the names of its record (``tokens`` for a token model).

``measure_artifact`` measures an exported file (``mobiledl eval MODEL.onnx``): accuracy,
``bytes``, ``params`` from the graph's weights, latency; ``extra["null_fields"]`` names each
field left ``None`` and why (MACs and peak memory are profiled on a PyTorch model).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from mobiledl.core.inputs import Inputs, map_inputs, repeat_batch, slice_batch
from mobiledl.core.task import Task
from mobiledl.deploy import get_engine
from mobiledl.deploy.engine import Engine, Runner
from mobiledl.deploy.lowering import is_quantized, lower_model
from mobiledl.errors import UserError
from mobiledl.models import model_input_specs
from mobiledl.profile import Measurement, packed_storage_bytes, profile_model
from mobiledl.train import evaluate
from mobiledl.train.trainer import EVAL_BATCH_SIZE
from mobiledl.validate import expect_module, expect_task

logger = logging.getLogger(__name__)

INT8_BITS = 8


def measure_model(
    model: nn.Module,
    name: str,
    task: Task | None = None,
    example_input: Inputs | None = None,
    latency: bool = True,
    engine: str | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
    artifact: str | Path | None = None,
    *,
    unexportable_ok: bool = False,
) -> Measurement:
    """The ``Measurement`` of ``model`` (see the module docstring).

    ``example_input`` defaults to one real test sample of ``task``. The model is exported to
    ``engine`` (default: the default engine) at ``artifact`` (default: a temporary file) for
    ``bytes``, and timed there at ``batch_size`` if ``latency``. With ``unexportable_ok`` a
    model the engine cannot export keeps its PyTorch fields (accuracy, params, MACs): a
    warning says why, and ``bytes`` and latency stay ``None``, the reason in
    ``extra["null_fields"]``.
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
        try:
            export(backend, model, example_input, path)
        except UserError as error:
            if not unexportable_ok:
                raise
            return _unexported(measurement, backend.name, str(error))
        measurement.bytes = backend.artifact_bytes(path)
        measurement.engine = backend.name
        if latency:
            measurement = measurement.update(
                artifact_latency(backend, path, example_input, batch_size, threads, repeats)
            )
    return measurement


def _unexported(measurement: Measurement, engine: str, reason: str) -> Measurement:
    """``measurement`` without its engine fields, which the failed export leaves unknown."""
    logger.warning("not measured in %s (bytes, latency): %s", engine, reason)
    nulls = measurement.extra.setdefault("null_fields", {})
    for name in ("bytes", "latency_ms_median", "latency_ms_p90"):
        nulls[name] = f"the {engine} export failed: {reason}"
    return measurement


def export(engine: Engine, model: nn.Module, example_input: Inputs, path: Path) -> Path:
    """Export ``model`` traced on the first example sample, inputs named by its record."""
    return engine.export(model, slice_batch(example_input, 0, 1), path, model_input_specs(model))


def _profile(model: nn.Module, name: str, example_input: Inputs) -> Measurement:
    quantized = is_quantized(model)
    plain = lower_model(model, keep_quantization=False).model
    bits = INT8_BITS if quantized else 32
    first = slice_batch(example_input, 0, 1)
    measurement = profile_model(plain, first, bits=bits).measurement(name)
    measurement.storage_bytes = packed_storage_bytes(model)
    measurement.extra["representation"] = "int8" if quantized else "float"
    if measurement.storage_bytes is None:
        measurement.extra["null_fields"] = {"storage_bytes": NO_PACKING}
    return measurement


def artifact_latency(
    engine: Engine,
    artifact: Path,
    example_input: Inputs,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
) -> Measurement:
    """Latency of an exported artifact at ``batch_size`` copies of the first example input."""
    batch = map_inputs(torch.Tensor.numpy, repeat_batch(example_input, batch_size))
    runner = engine.load(artifact, threads=threads)
    return engine.benchmark(runner, batch, repeats=repeats).to_measurement()


def engine_latency(
    model: nn.Module,
    example_input: Inputs,
    engine: str | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 50,
    unexportable_ok: bool = False,
) -> Measurement:
    """Export ``model`` to ``engine`` in a temp dir and time it at ``batch_size``. With
    ``unexportable_ok`` a model the engine cannot export gets a warning and null latency
    fields whose ``extra["null_fields"]`` say why, instead of the ``UserError``."""
    backend = get_engine(engine)
    with tempfile.TemporaryDirectory(prefix="mobiledl-") as tmp:
        try:
            path = export(backend, model, example_input, Path(tmp) / f"model{backend.suffix}")
        except UserError as error:
            if not unexportable_ok:
                raise
            return _unexported(Measurement(), backend.name, str(error))
        return artifact_latency(backend, path, example_input, batch_size, threads, repeats)


def artifact_outputs(
    engine: Engine,
    artifact: Path | Runner,
    task: Task,
    split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs, targets)`` of an exported artifact (or its loaded ``Runner``) run by
    ``engine`` over one split."""
    if task.num_samples(split) == 0:
        raise UserError(f"task '{task.name}' has an empty {split} split")
    runner = artifact if isinstance(artifact, Runner) else engine.load(artifact)
    outputs, targets = [], []
    for inputs, y in task.loader(split, batch_size):
        outputs.append(torch.from_numpy(runner.run(map_inputs(torch.Tensor.numpy, inputs))))
        targets.append(y)
    return torch.cat(outputs), torch.cat(targets)


#: Why ``storage_bytes`` is ``None`` for a model whose weights no method packs.
NO_PACKING = "no method packed the weights; bytes is the exported file"

#: Fields an engine artifact cannot give: there is no PyTorch model to profile.
ARTIFACT_NULL_FIELDS = {
    "macs": "counted on the PyTorch model; an engine artifact has none",
    "peak_memory_bytes": "profiled on the PyTorch model; an engine artifact has none",
    "storage_bytes": "a method's packed weight size; an engine artifact has none",
}


def measure_artifact(
    path: Path, task: Task, latency: bool = True, repeats: int = 50
) -> Measurement:
    """The ``Measurement`` of an exported artifact: test accuracy in its engine, ``bytes``
    (the file), ``params`` (elements of the graph's weight tensors, where the engine can
    list them) and latency; ``extra["null_fields"]`` says why the rest stay ``None``."""
    from mobiledl.deploy import engine_for_artifact

    backend = engine_for_artifact(path)
    runner = backend.load(path)
    measurement = Measurement(
        name=path.stem,
        accuracy=task.metric(*artifact_outputs(backend, runner, task)),
        params=backend.artifact_params(path),
        bytes=backend.artifact_bytes(path),
        engine=backend.name,
        extra={"accuracy_of": str(path), "null_fields": dict(ARTIFACT_NULL_FIELDS)},
    )
    if measurement.params is None:
        measurement.extra["null_fields"]["params"] = "the engine's file lists no weights"
    if latency:
        example = task.example_input(1)
        measurement = measurement.update(artifact_latency(backend, path, example, repeats=repeats))
    return measurement
