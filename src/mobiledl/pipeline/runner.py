"""Run a recipe: apply its steps in order, measure and checkpoint after each, resume on demand.

Layout of a run directory::

    state.json                 finished steps, their measurements and model files
    checkpoints/00-input.pt    the model before the first step
    checkpoints/NN-<step>.pt   the model after step NN (steps that change it)
    checkpoints/NN-<step>.epochs/train-<hash>.pt
                               while step NN runs: an epoch checkpoint of each training in it
    model.onnx                 written by an ``export`` step
    sensitivity.json           cached per-layer sensitivity of the uncompressed model
    report.html                the self-contained report
    report.json                its data (``mobiledl report DIR`` renders it again)

Every file is written atomically. A step's model file is written before the state lists the
step, so a run killed at any moment (``kill -9`` included) loses no finished step:
``--resume`` reloads the last finished step's model and runs the next one. Each step starts
from a fixed seed (``step_seed``), and every training inside a step (``train``, the fine-tuning
of ``prune``, ``distill``, ``qat``...) keeps an epoch checkpoint in the step's ``.epochs``
folder (``mobiledl.train.resume.epoch_checkpoints``), so the step in progress resumes after its
last finished epoch and the run ends exactly as an uninterrupted one. The folder is deleted
once the step is recorded.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from torch import nn

from mobiledl.core.task import Task
from mobiledl.data import build_task
from mobiledl.errors import UserError
from mobiledl.fileio import check_output_dir
from mobiledl.models import create_model_for_task, load_model, save_model
from mobiledl.pipeline.recipe import Recipe, load_recipe
from mobiledl.pipeline.state import RunState, StepRecord
from mobiledl.pipeline.steps import RunContext, check_outputs, run_step
from mobiledl.profile import Measurement
from mobiledl.train import seed_everything
from mobiledl.train.resume import epoch_checkpoints

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
INPUT_MODEL = f"{CHECKPOINTS}/00-input.pt"


def run_recipe(
    recipe_path: str | Path, out_dir: str | Path, resume: bool = False, progress: bool = True
) -> list[Measurement]:
    """Run (or, with ``resume``, continue) the recipe; return one measurement per step."""
    recipe_path, out_dir = Path(recipe_path), check_output_dir(out_dir)
    recipe = load_recipe(recipe_path)
    check_outputs(recipe, out_dir)
    task = _task(recipe, recipe_path.parent)  # before anything is written: bad data writes nothing
    _remove_stale_temp_files(out_dir)
    state = _start_state(recipe, out_dir, task, recipe_path.parent, resume)
    _remove_finished_epoch_folders(recipe, state, out_dir)
    ctx = RunContext(recipe, task, out_dir, recipe_path.parent, state, progress)
    model = load_model(out_dir / state.model_before(len(state.steps))).model
    for index in range(len(state.steps), len(recipe.steps)):
        model = _run_one(model, ctx, index)
    from mobiledl.pipeline.report import write_report

    write_report(ctx)
    logger.info(f"done: {len(recipe.steps)} steps; wrote {out_dir / 'report.html'}")
    return [step.to_measurement() for step in state.steps]


def _run_one(model: nn.Module, ctx: RunContext, index: int) -> nn.Module:
    """Run step ``index``, checkpoint its model, measure it and record it in the state."""
    name = ctx.recipe.step_names()[index]
    ctx.state.running = {"index": index, "name": name, "started": time.time()}
    ctx.state.save(ctx.out_dir)
    started = time.perf_counter()
    seed_everything(step_seed(ctx.recipe, index))
    epochs_dir = ctx.out_dir / epochs_folder(index, name)
    with epoch_checkpoints(epochs_dir):
        result = run_step(model, ctx, index)
    model_file = ctx.state.model_before(index)
    if result.changed:
        model_file = f"{CHECKPOINTS}/{index + 1:02d}-{name}.pt"
        save_model(ctx.out_dir / model_file, result.model, {"step": name, "index": index})
    measurement = result.measurement or ctx.measure(result.model, name)
    record = StepRecord(
        index=index,
        name=name,
        kind=ctx.recipe.parsed_steps[index].kind,
        spec=ctx.recipe.spec(index),
        model=model_file,
        measurement=measurement.to_dict(),
        seconds=time.perf_counter() - started,
        info=result.info,
        artifacts=result.artifacts,
    )
    ctx.state.steps.append(record)
    ctx.state.running = None
    ctx.state.save(ctx.out_dir)
    shutil.rmtree(epochs_dir, ignore_errors=True)  # the step is recorded: no longer needed
    logger.info(f"    {summary(measurement)} ({record.seconds:.1f} s)")
    return result.model


def epochs_folder(index: int, name: str) -> str:
    """The folder (relative to the run) of step ``index``'s epoch checkpoints while it runs."""
    return f"{CHECKPOINTS}/{index + 1:02d}-{name}.epochs"


def step_seed(recipe: Recipe, index: int) -> int:
    """The seed every step starts from (the recipe model's seed plus the step's index), so a
    step computes the same whether the run was resumed before it or not."""
    return (recipe.model.seed + index) % 2**32


def summary(m: Measurement) -> str:
    """One human line about a measurement."""
    parts = [f"accuracy {m.accuracy:.4f}" if m.accuracy is not None else "accuracy -"]
    parts += [f"MACs {m.macs:,}" if m.macs is not None else "MACs -"]
    parts += [f"bytes {m.bytes:,}" if m.bytes is not None else "bytes -"]
    if m.latency_ms_median is not None:
        parts.append(f"latency {m.latency_ms_median:.3f} ms (batch {m.batch_size})")
    return ", ".join(parts)


def _task(recipe: Recipe, recipe_dir: Path) -> Task:
    spec = recipe.task
    parts = spec.name.split(",") if not (recipe_dir / spec.name).exists() else [spec.name]
    name = ",".join(str(recipe_dir / p) if (recipe_dir / p).exists() else p for p in parts)
    return build_task(name, image_size=spec.image_size, seed=spec.seed, split=spec.split)


def _start_state(
    recipe: Recipe, out_dir: Path, task: Task, recipe_dir: Path, resume: bool
) -> RunState:
    """A fresh state (with the input model saved), or the checked state to resume."""
    state = RunState.load(out_dir)
    if state is not None:
        if not resume:
            raise UserError(
                f"{out_dir} holds a run of '{state.recipe}' ({len(state.steps)} steps done); "
                "pass --resume to continue it or choose another --out"
            )
        _check_resumable(recipe, state, out_dir)
        done = len(state.steps)
        logger.info(f"resuming {out_dir}: {done} of {len(recipe.steps)} steps done, skipping them")
        return state
    state = RunState(recipe.name, recipe.fingerprint(), recipe.header(), INPUT_MODEL)
    save_model(out_dir / INPUT_MODEL, _input_model(recipe, task, recipe_dir), {"step": "input"})
    state.save(out_dir)
    return state


def _check_resumable(recipe: Recipe, state: RunState, out_dir: Path) -> None:
    """The finished steps must be the ones this recipe would run."""
    if state.header != recipe.header():
        raise UserError(f"the recipe's task, model or measure changed since {out_dir} was run")
    if len(state.steps) > len(recipe.steps):
        raise UserError(f"{out_dir} ran more steps than the recipe has")
    names = recipe.step_names()
    for record in state.steps:
        if record.spec != recipe.spec(record.index) or record.name != names[record.index]:
            raise UserError(
                f"step {record.index} '{record.name}' changed since {out_dir} was run; "
                "choose another --out"
            )


def _input_model(recipe: Recipe, task: Task, recipe_dir: Path) -> nn.Module:
    spec = recipe.model
    if spec.file is not None:
        return load_model(recipe_dir / spec.file).model
    seed_everything(spec.seed)
    return create_model_for_task(spec.arch, task, spec.width_mult)


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Delete temp files an interrupted atomic write left behind (``.name.XXXX.tmp``)."""
    for stale in out_dir.rglob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _remove_finished_epoch_folders(recipe: Recipe, state: RunState, out_dir: Path) -> None:
    """Delete the epoch checkpoints of finished steps (a run killed just after recording a
    step leaves them)."""
    names = recipe.step_names()
    for record in state.steps:
        shutil.rmtree(
            out_dir / epochs_folder(record.index, names[record.index]), ignore_errors=True
        )
