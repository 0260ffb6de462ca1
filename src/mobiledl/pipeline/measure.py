"""The ``Measurement`` every pipeline step records, taken the same way for every kind of model.

Accuracy, params, MACs and peak memory come from ``mobiledl.measure.measure_model``. What
differs by representation is how the model ships, so ``bytes`` and latency follow it
(``extra["bytes_basis"]`` says which):

- float models: fp32 weights; latency of the fp32 ONNX export;
- linearly quantized models (PTQ/QAT): 8-bit weights and activations (peak memory at 8
  bits); latency of the int8 QDQ ONNX graph ONNX Runtime runs with integer kernels;
- k-means models: cluster indices plus codebooks (Deep Compression's "quantized" stage);
  ONNX Runtime has no codebook kernels, so the exported file and its latency are those of
  the decoded dense fp32 model (the same function).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from mobiledl.data.task import Task
from mobiledl.deploy import get_engine
from mobiledl.measure import measure_model
from mobiledl.profile import Measurement, profile_model

INT8_BITS = 8


def representation(model: nn.Module) -> str:
    """``int8`` (fake-quantized layers), ``kmeans`` (shared weights) or ``float``."""
    from mobiledl.compress.quantize.kmeans import kmeans_layers
    from mobiledl.compress.quantize.quantizer import quant_layers

    if quant_layers(model):
        return "int8"
    if kmeans_layers(model):
        return "kmeans"
    return "float"


def decoded(model: nn.Module) -> nn.Module:
    """A copy whose k-means layers are plain layers holding the decoded shared weights."""
    from mobiledl.compress.quantize.kmeans import kmeans_layers

    plain_model = copy.deepcopy(model)
    for name, layer in kmeans_layers(plain_model).items():
        plain = layer.layer
        plain.weight = nn.Parameter(layer.weight.detach().clone())
        parent, _, child = name.rpartition(".")
        setattr(plain_model.get_submodule(parent) if parent else plain_model, child, plain)
    return plain_model


def export_model(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export ``model`` to ONNX at ``path``: an int8 QDQ graph if it is quantized, the decoded
    dense graph if it shares weights by k-means."""
    kind = representation(model)
    if kind == "int8":
        from mobiledl.compress.quantize.onnx_export import export_int8_onnx

        return export_int8_onnx(model, example[:1], path)
    plain = decoded(model) if kind == "kmeans" else model
    return get_engine("onnxruntime").export(plain, example[:1], path)


def measure_step(
    model: nn.Module,
    name: str,
    task: Task,
    latency: bool = True,
    batch_size: int = 1,
    threads: int | None = None,
    repeats: int = 30,
) -> Measurement:
    """The step ``Measurement`` of ``model`` (see the module docstring)."""
    kind = representation(model)
    measurement = measure_model(
        decoded(model) if kind == "kmeans" else model,
        name,
        task,
        latency=latency and kind != "int8",
        batch_size=batch_size,
        threads=threads,
        repeats=repeats,
    )
    measurement.extra["representation"] = kind
    if kind == "int8":
        measurement = _as_int8(model, task, measurement)
        if latency:
            with tempfile.TemporaryDirectory(prefix="mobiledl-run-") as tmp:
                artifact = export_model(model, task.example_input(1), Path(tmp) / "m.onnx")
                measurement = measurement.update(
                    artifact_latency(artifact, task, batch_size, threads, repeats)
                )
    elif kind == "kmeans":
        from mobiledl.compress.quantize.kmeans import storage_report

        measurement.bytes = storage_report(model).total("quantized")
        measurement.extra["bytes_basis"] = "k-means indices + codebooks + other fp32 values"
    else:
        measurement.extra["bytes_basis"] = "fp32 weights"
    return measurement


def _as_int8(model: nn.Module, task: Task, measurement: Measurement) -> Measurement:
    """8-bit bytes and peak memory; profiled with fake quantization off, whose temporaries
    the integer engine never allocates."""
    from mobiledl.compress.quantize.kmeans import quantizable_layers
    from mobiledl.compress.quantize.quantizer import fake_quant_disabled

    with fake_quant_disabled(model):
        profile = profile_model(model, task.example_input(1), bits=INT8_BITS)
    weights = sum(layer.weight.numel() for layer in quantizable_layers(model).values())
    other = measurement.params - weights if measurement.params is not None else 0
    measurement.bytes = weights * INT8_BITS // 8 + 4 * max(other, 0)
    measurement.peak_memory_bytes = profile.peak_memory_bytes
    measurement.extra["bytes_basis"] = "int8 weights + fp32 biases and scales"
    return measurement


def artifact_latency(
    artifact: Path, task: Task, batch_size: int, threads: int | None, repeats: int
) -> Measurement:
    """ONNX Runtime latency of an exported file on ``batch_size`` real test inputs."""
    engine = get_engine("onnxruntime")
    runner = engine.load(artifact, threads=threads)
    batch = task.example_input(batch_size).numpy()
    return engine.benchmark(runner, batch, repeats=repeats).to_measurement()


def engine_logits(artifact: Path, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Outputs of an exported file run by ONNX Runtime on ``x``, in batches."""
    runner = get_engine("onnxruntime").load(artifact)
    outputs = [runner.run(x[i : i + batch_size].numpy()) for i in range(0, len(x), batch_size)]
    return torch.cat([torch.from_numpy(output) for output in outputs])
