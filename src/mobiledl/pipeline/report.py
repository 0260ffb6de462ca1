"""Build a run's HTML report from its directory: state, first and final models, sensitivity;
the report's data is saved beside it (``report.json``) for ``mobiledl report RUN_DIR``.

The per-layer sensitivity of the uncompressed model (``prune.sensitivity_analysis``, each
layer alone pruned by weight magnitude) is cached in ``sensitivity.json`` so a resumed run
does not recompute it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from mobiledl.core.task import Task
from mobiledl.fileio import write_json_atomic
from mobiledl.models import load_model
from mobiledl.pipeline.steps import RunContext
from mobiledl.profile import profile_model
from mobiledl.report.run import (
    RunReport,
    Sensitivity,
    StepRow,
    write_run_folder_report,
)

SENSITIVITY_FILE = "sensitivity.json"


def write_report(ctx: RunContext) -> Path:
    """Write ``report.html`` into the run directory."""
    state, example = ctx.state, ctx.task.example_input(1)
    first = load_model(ctx.out_dir / state.input_model).model
    last = load_model(ctx.out_dir / state.model_before(len(state.steps))).model
    spec = ctx.recipe
    steps = [
        StepRow(record.kind, record.seconds, record.to_measurement(), record.info)
        for record in state.steps
    ]
    report = RunReport(
        title=f"mobiledl run: {spec.name}",
        description=spec.description,
        steps=steps,
        layers_before=profile_model(first, example).layers,
        layers_after=profile_model(last, example).layers,
        sensitivity=_sensitivity(ctx),
        notes=[
            f"Task '{spec.task.name}' (inputs {_inputs(ctx.task)}); model "
            f"{spec.model.arch or spec.model.file}; recipe fingerprint {state.fingerprint}. "
            f"Latency: batch {spec.measure.batch_size}, {spec.measure.repeats} timed runs."
        ],
        layer_times=_layer_times(ctx, steps, first, last) if spec.measure.latency else {},
    )
    return write_run_folder_report(ctx.out_dir, report)


def _layer_times(
    ctx: RunContext, steps: list[StepRow], first: nn.Module, last: nn.Module
) -> dict[str, dict[str, float]]:
    """ONNX Runtime time per layer (``mobiledl inspect``) of the model before the first step
    and of the final model, at the recipe's batch size and threads."""
    from mobiledl.deploy.profiling import inspect_model

    measure, example = ctx.recipe.measure, ctx.task.example_input(1)
    names = ["input", steps[-1].measurement.name if steps else "final"]
    times = {}
    for name, model in zip(names, (first, last), strict=True):
        profile = inspect_model(
            model, example, batch_size=measure.batch_size, threads=measure.threads, name=name
        )
        times[name] = profile.times_by_layer()
    return times


def _inputs(task: Task) -> str:
    """``[1, 8, 8]`` for a single input (its shape without the batch), else every spec."""
    specs = task.input_specs()
    if len(specs) == 1:
        return str(list(specs[0].shape[1:]))
    return "; ".join(spec.describe() for spec in specs)


def _sensitivity(ctx: RunContext) -> Sensitivity | None:
    """Per-layer pruning sensitivity of the model before compression (cached)."""
    sparsities = ctx.recipe.report.sensitivity
    if not sparsities:
        return None
    cache = ctx.out_dir / SENSITIVITY_FILE
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("sparsities") == list(sparsities):
            return Sensitivity(**data)
    from mobiledl.compress.prune import sensitivity_analysis

    index = ctx.uncompressed_index(len(ctx.recipe.steps))
    if index > len(ctx.state.steps):
        return None
    model = load_model(ctx.out_dir / ctx.state.model_before(index)).model
    result = sensitivity_analysis(model, ctx.task, sparsities=tuple(sparsities))
    sensitivity = Sensitivity(
        baseline=result.baseline,
        sparsities=result.sparsities,
        accuracy=result.accuracy,
        description=(
            f"The model before compression (input of step {index + 1}), each layer alone pruned to "
            f"each sparsity by {result.criterion} magnitude ({result.granularity}), accuracy on "
            f"the {result.split} split."
        ),
    )
    write_json_atomic(cache, dataclasses.asdict(sensitivity))
    return sensitivity
