"""What each recipe step does: one function per step kind, model in, model out.

Each function takes the current model, its validated step and the ``RunContext`` and
returns a ``StepResult``: the new model, and optionally a measurement of its own (export
and benchmark time the artifact; encode measures coded storage), extra info for the
report, and files written into the run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mobiledl.cli_support import log
from mobiledl.data.task import Task
from mobiledl.errors import UserError
from mobiledl.models import load_model
from mobiledl.pipeline import measure
from mobiledl.pipeline.recipe import (
    COMPRESSION_STEPS,
    BenchmarkStep,
    EncodeStep,
    ExportStep,
    FactorizeStep,
    FinetuneStep,
    KDSpec,
    KMeansStep,
    PruneStep,
    QuantizeStep,
    Recipe,
    TrainStep,
)
from mobiledl.pipeline.state import RunState
from mobiledl.profile import Measurement
from mobiledl.train import FeatureDistiller, TrainConfig, predict, train


@dataclass
class RunContext:
    """What steps share: the recipe, the task, the run directory and the run's state."""

    recipe: Recipe
    task: Task
    out_dir: Path
    recipe_dir: Path
    state: RunState
    progress: bool = False

    def measure(self, model: nn.Module, name: str) -> Measurement:
        spec = self.recipe.measure
        return measure.measure_step(
            model, name, self.task, spec.latency, spec.batch_size, spec.threads, spec.repeats
        )

    def previous(self, model: nn.Module, index: int) -> Measurement:
        """The measurement before step ``index`` (measured afresh for the first step)."""
        name = self.recipe.step_names()[index]
        if index == 0:
            return self.measure(model, name)
        return dataclasses.replace(self.state.steps[index - 1].to_measurement(), name=name)

    def teacher(self, kd: KDSpec, index: int) -> nn.Module:
        """The KD teacher of step ``index``: by default the model before compression."""
        if kd.teacher == "uncompressed":
            path = self.out_dir / self.state.model_before(self.uncompressed_index(index))
        elif (record := self.state.record(kd.teacher)) is not None:
            path = self.out_dir / record.model
        else:
            path = self.recipe_dir / kd.teacher
            if not path.is_file():
                raise UserError(f"kd.teacher '{kd.teacher}' is neither a step nor a model file")
        return load_model(path).model.eval()

    def uncompressed_index(self, index: int) -> int:
        """Index of the first compression step before ``index`` (else ``index`` itself)."""
        kinds = [step.step for step in self.recipe.steps[:index]]
        return next((i for i, kind in enumerate(kinds) if kind in COMPRESSION_STEPS), index)


@dataclass
class StepResult:
    """A step's outcome; ``measurement`` is taken by the runner when ``None``."""

    model: nn.Module
    changed: bool = True
    measurement: Measurement | None = None
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


def run_train(model: nn.Module, step: TrainStep, ctx: RunContext, index: int) -> StepResult:
    result = train(model, ctx.task, step.train_config(ctx.progress))
    return StepResult(model, info={"best_val_accuracy": result.best_val_accuracy})


def run_finetune(model: nn.Module, step: FinetuneStep, ctx: RunContext, index: int) -> StepResult:
    """Fine-tune, with logit KD (``kd.alpha > 0``) and/or feature KD from the teacher."""
    config: TrainConfig = dataclasses.replace(step.config(), progress=ctx.progress)
    if step.kd is None:
        result = train(model, ctx.task, config)
        return StepResult(model, info={"best_val_accuracy": result.best_val_accuracy})
    teacher = ctx.teacher(step.kd, index)
    logit_teacher = teacher if step.kd.alpha > 0 else None
    info = {
        "kd": step.kd.model_dump(),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
    }
    if step.kd.feature == "none":
        result = train(model, ctx.task, config, teacher=logit_teacher)
    else:
        with FeatureDistiller(
            model,
            teacher,
            ctx.task.example_input(1),
            step.kd.feature,
            step.kd.layers,
            step.kd.feature_weight,
        ) as distiller:
            result = train(model, ctx.task, config, teacher=logit_teacher, extra_loss=distiller)
            info["feature_layers"] = dict(distiller.pairs)
    return StepResult(model, info={**info, "best_val_accuracy": result.best_val_accuracy})


def run_prune(model: nn.Module, step: PruneStep, ctx: RunContext, index: int) -> StepResult:
    from mobiledl.compress.prune import prune, sparsity_of

    config = step.config()
    config.finetune = dataclasses.replace(config.finetune, progress=ctx.progress)
    pruned = prune(model, config, ctx.task)
    return StepResult(pruned, info={"sparsity": sparsity_of(pruned)})


def run_factorize(model: nn.Module, step: FactorizeStep, ctx: RunContext, index: int) -> StepResult:
    from mobiledl.compress.factorize import factorize, factorized_layers

    result = factorize(model, step.config(), ctx.task)
    layers = {
        name: {"method": layer.spec.method, "ranks": list(layer.spec.ranks)}
        for name, layer in factorized_layers(result).items()
    }
    return StepResult(result, info={"layers": layers})


def run_quantize(model: nn.Module, step: QuantizeStep, ctx: RunContext, index: int) -> StepResult:
    from mobiledl.compress.quantize import qat, quantize

    config = step.config()
    if step.method == "ptq":
        return StepResult(quantize(model, config, ctx.task))
    train_config = TrainConfig(lr=step.lr, warmup_epochs=0.0, progress=ctx.progress)
    return StepResult(qat(model, ctx.task, config, step.epochs, train_config))


def run_kmeans(model: nn.Module, step: KMeansStep, ctx: RunContext, index: int) -> StepResult:
    from mobiledl.compress.quantize.kmeans import kmeans_quantize, quantizable_layers

    bits = {
        name: step.fc_bits if isinstance(layer, nn.Linear) else step.conv_bits
        for name, layer in quantizable_layers(model).items()
    }
    config = TrainConfig(lr=step.lr, progress=ctx.progress)
    result = kmeans_quantize(model, bits, ctx.task, step.finetune_epochs, config)
    return StepResult(result, info={"bits": bits})


def run_encode(model: nn.Module, step: EncodeStep, ctx: RunContext, index: int) -> StepResult:
    """Deep Compression's Huffman stage: the measurement's ``bytes`` become the coded size."""
    from mobiledl.compress.quantize.kmeans import kmeans_layers, storage_report

    if not kmeans_layers(model):
        raise UserError(f"step '{ctx.recipe.step_names()[index]}': encode needs a kmeans step")
    report = storage_report(model, step.conv_index_bits, step.fc_index_bits)
    measurement = ctx.previous(model, index)
    measurement.bytes = report.total("huffman")
    measurement.extra = {
        **measurement.extra,
        "bytes_basis": "Huffman-coded sparse indices + cluster indices + codebooks",
        "storage": report.to_dict()["total"],
    }
    return StepResult(model, changed=False, measurement=measurement)


def run_export(model: nn.Module, step: ExportStep, ctx: RunContext, index: int) -> StepResult:
    """Write the ONNX file; measure accuracy, size and latency of that file itself."""
    name = ctx.recipe.step_names()[index]
    path = measure.export_model(model, ctx.task.example_input(1), ctx.out_dir / step.file)
    measurement = ctx.measure(model, name)
    x, y = ctx.task.split("test")
    logits = measure.engine_logits(path, x)
    measurement.accuracy = ctx.task.metric(logits, y)
    measurement.bytes = path.stat().st_size
    measurement.extra.update(
        bytes_basis="ONNX file",
        artifact=step.file,
        pytorch_accuracy=ctx.task.metric(predict(model, x), y),
    )
    spec = ctx.recipe.measure
    if spec.latency:
        latency = measure.artifact_latency(
            path, ctx.task, spec.batch_size, spec.threads, spec.repeats
        )
        measurement = measurement.update(latency)
    return StepResult(model, changed=False, measurement=measurement, artifacts={"onnx": step.file})


def run_benchmark(model: nn.Module, step: BenchmarkStep, ctx: RunContext, index: int) -> StepResult:
    """Time the exported file (or a fresh export) at each batch size and thread count."""
    exported = ctx.state.last_artifact("onnx")
    with tempfile.TemporaryDirectory(prefix="mobiledl-bench-") as tmp:
        path = (
            ctx.out_dir / exported
            if exported
            else measure.export_model(model, ctx.task.example_input(1), Path(tmp) / "m.onnx")
        )
        grid = [
            {
                "batch_size": batch,
                "threads": threads,
                **_timing(path, ctx.task, batch, threads, step),
            }
            for batch in step.batch_sizes
            for threads in step.threads
        ]
    first = grid[0]
    measurement = ctx.previous(model, index)
    measurement.latency_ms_median, measurement.latency_ms_p90 = first["median_ms"], first["p90_ms"]
    measurement.batch_size, measurement.threads = first["batch_size"], first["threads"]
    measurement.engine = "onnxruntime"
    measurement.extra = {**measurement.extra, "latency_grid": grid, "timed": exported or "export"}
    return StepResult(model, changed=False, measurement=measurement)


def _timing(path: Path, task: Task, batch: int, threads: int | None, step: BenchmarkStep) -> dict:
    stats = measure.artifact_latency(path, task, batch, threads, step.repeats)
    return {"median_ms": stats.latency_ms_median, "p90_ms": stats.latency_ms_p90}


StepFunction = Callable[[nn.Module, Any, RunContext, int], StepResult]
STEP_FUNCTIONS: dict[str, StepFunction] = {
    "train": run_train,
    "finetune": run_finetune,
    "prune": run_prune,
    "factorize": run_factorize,
    "quantize": run_quantize,
    "kmeans": run_kmeans,
    "encode": run_encode,
    "export": run_export,
    "benchmark": run_benchmark,
}


def run_step(model: nn.Module, ctx: RunContext, index: int) -> StepResult:
    """Apply step ``index`` of the recipe to ``model`` (a copy: ``model`` is not changed)."""
    step = ctx.recipe.steps[index]
    log(f"[{index + 1}/{len(ctx.recipe.steps)}] {ctx.recipe.step_names()[index]} ({step.step})")
    return STEP_FUNCTIONS[step.step](copy.deepcopy(model), step, ctx, index)
