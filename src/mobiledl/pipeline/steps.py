"""What each recipe step does: a method step is ``mobiledl.apply`` with the step's config; the
pipeline steps ``encode``, ``export`` and ``benchmark`` measure and ship the model.

Each step function takes the current model, its validated step and the ``RunContext`` and
returns a ``StepResult``: the new model, and optionally a measurement of its own (export
and benchmark time the artifact; encode measures coded storage), extra info for the
report (a method's report), and files written into the run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mobiledl.core.config import MethodConfig
from mobiledl.core.methods import apply, report_of
from mobiledl.core.task import Task
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.fileio import confined_path
from mobiledl.measure import artifact_latency, artifact_outputs, export
from mobiledl.models import load_model
from mobiledl.pipeline import measure
from mobiledl.pipeline.recipe import (
    TRAINING_METHODS,
    BenchmarkStep,
    EncodeStep,
    ExportStep,
    Recipe,
    RecipeStep,
)
from mobiledl.pipeline.state import RunState
from mobiledl.profile import Measurement
from mobiledl.train import TrainConfig, evaluate

logger = logging.getLogger(__name__)

#: ``kd`` teacher name meaning the model before the first compression step.
UNCOMPRESSED = "uncompressed"


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

    def teacher(self, teacher: str, index: int) -> nn.Module:
        """The teacher of step ``index``: the model before compression, an earlier step's
        model, or a model file relative to the recipe."""
        if teacher == UNCOMPRESSED:
            path = self.out_dir / self.state.model_before(self.uncompressed_index(index))
        elif (record := self.state.record(teacher)) is not None:
            path = self.out_dir / record.model
        else:
            path = self.recipe_dir / teacher
            if not path.is_file():
                raise UserError(f"teacher '{teacher}' is neither a step nor a model file")
        return load_model(path).model.eval()

    def uncompressed_index(self, index: int) -> int:
        """Index of the first compression step before ``index`` (else ``index`` itself)."""
        steps = self.recipe.parsed_steps[:index]
        compressing = [
            i
            for i, step in enumerate(steps)
            if step.is_method and step.kind not in TRAINING_METHODS
        ]
        return compressing[0] if compressing else index


@dataclass
class StepResult:
    """A step's outcome; ``measurement`` is taken by the runner when ``None``."""

    model: nn.Module
    changed: bool = True
    measurement: Measurement | None = None
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)


def run_method(model: nn.Module, step: RecipeStep, ctx: RunContext, index: int) -> StepResult:
    """``apply`` the step's method; its report becomes the step's info."""
    config = with_progress(step.config, ctx.progress)
    teacher = getattr(config, "teacher", None)
    if isinstance(teacher, str):
        config = dataclasses.replace(config, teacher=ctx.teacher(teacher, index))
    result = apply(model, config, ctx.task)
    report = report_of(result)
    return StepResult(result, info=report.values if report else {})


def with_progress(config: MethodConfig, progress: bool) -> MethodConfig:
    """``config`` with every training run in it (nested too) showing progress or not."""
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, MethodConfig):
            changes[f.name] = with_progress(value, progress)
    if isinstance(config, TrainConfig):
        changes["progress"] = progress
    return dataclasses.replace(config, **changes) if changes else config


def run_encode(model: nn.Module, step: RecipeStep, ctx: RunContext, index: int) -> StepResult:
    """Deep Compression's Huffman stage: ``storage_bytes`` becomes the coded size."""
    from mobiledl.compress.quantize.kmeans import kmeans_layers, storage_report

    settings: EncodeStep = step.config
    if not kmeans_layers(model):
        raise UserError(f"step '{ctx.recipe.step_names()[index]}': encode needs a kmeans step")
    report = storage_report(model, settings.conv_index_bits, settings.fc_index_bits)
    measurement = ctx.previous(model, index)
    measurement.storage_bytes = report.total("huffman")
    measurement.extra = {
        **measurement.extra,
        "storage_basis": "Huffman-coded sparse indices + cluster indices + codebooks",
        "storage": report.to_dict()["total"],
    }
    return StepResult(model, changed=False, measurement=measurement)


def run_export(model: nn.Module, step: RecipeStep, ctx: RunContext, index: int) -> StepResult:
    """Write the artifact; measure accuracy, size and latency of that file itself."""
    settings: ExportStep = step.config
    name = ctx.recipe.step_names()[index]
    engine = get_engine()
    target = confined_path(ctx.out_dir, settings.file, f"step '{name}': file")
    path = export(engine, model, ctx.task.example_input(1), target)
    measurement = ctx.measure(model, name)
    measurement.accuracy = ctx.task.metric(*artifact_outputs(engine, path, ctx.task))
    measurement.bytes = engine.artifact_bytes(path)
    measurement.extra.update(
        accuracy_of=settings.file,
        artifact=settings.file,
        pytorch_accuracy=evaluate(model, ctx.task, "test"),
    )
    spec = ctx.recipe.measure
    if spec.latency:
        example = ctx.task.example_input(1)
        latency = artifact_latency(
            engine, path, example, spec.batch_size, spec.threads, spec.repeats
        )
        measurement = measurement.update(latency)
    return StepResult(
        model, changed=False, measurement=measurement, artifacts={"artifact": settings.file}
    )


def check_outputs(recipe: Recipe, out_dir: Path) -> None:
    """Every file the recipe's steps write stays inside ``out_dir`` (checked before running)."""
    for name, step in zip(recipe.step_names(), recipe.parsed_steps, strict=True):
        if isinstance(step.config, ExportStep):
            confined_path(out_dir, step.config.file, f"step '{name}': file")


def run_benchmark(model: nn.Module, step: RecipeStep, ctx: RunContext, index: int) -> StepResult:
    """Time the exported file (or a fresh export) at each batch size and thread count."""
    settings: BenchmarkStep = step.config
    engine = get_engine()
    exported = ctx.state.last_artifact("artifact")
    example = ctx.task.example_input(1)
    with tempfile.TemporaryDirectory(prefix="mobiledl-bench-") as tmp:
        path = (
            ctx.out_dir / exported
            if exported
            else export(engine, model, example, Path(tmp) / f"m{engine.suffix}")
        )
        grid = []
        for batch in settings.batch_sizes:
            for threads in settings.threads:
                stats = artifact_latency(engine, path, example, batch, threads, settings.repeats)
                grid.append(
                    {
                        "batch_size": batch,
                        "threads": threads,
                        "median_ms": stats.latency_ms_median,
                        "p90_ms": stats.latency_ms_p90,
                    }
                )
    first = grid[0]
    measurement = ctx.previous(model, index)
    measurement.latency_ms_median, measurement.latency_ms_p90 = first["median_ms"], first["p90_ms"]
    measurement.batch_size, measurement.threads = first["batch_size"], first["threads"]
    measurement.engine = engine.name
    measurement.extra = {**measurement.extra, "latency_grid": grid, "timed": exported or "export"}
    return StepResult(model, changed=False, measurement=measurement)


StepFunction = Callable[[nn.Module, RecipeStep, RunContext, int], StepResult]
PIPELINE_FUNCTIONS: dict[str, StepFunction] = {
    "encode": run_encode,
    "export": run_export,
    "benchmark": run_benchmark,
}


def run_step(model: nn.Module, ctx: RunContext, index: int) -> StepResult:
    """Apply step ``index`` of the recipe to ``model`` (``model`` itself is not changed)."""
    step = ctx.recipe.parsed_steps[index]
    total = len(ctx.recipe.parsed_steps)
    logger.info("[%d/%d] %s (%s)", index + 1, total, ctx.recipe.step_names()[index], step.kind)
    function = run_method if step.is_method else PIPELINE_FUNCTIONS[step.kind]
    return function(model, step, ctx, index)
