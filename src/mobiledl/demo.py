"""``mobiledl demo``: the spine end to end on the embedded digits task.

Train a compact model, profile it, export it to ONNX, check parity, measure accuracy
and latency inside ONNX Runtime; then remove half its MACs by channel pruning (fine-tuned
with distillation from the trained model), quantize the pruned model to int8 and run it as
an int8 QDQ graph in ONNX Runtime; write a table, JSON and an HTML report (the run report of
``mobiledl.report.run``: Pareto plots, per-layer MACs and ONNX Runtime time of each artifact,
saved as ``report.json`` too, so ``mobiledl report DIR`` renders it again).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from mobiledl.compress.distill import DistillConfig
from mobiledl.compress.prune import ChannelPruneConfig
from mobiledl.compress.quantize import QuantConfig
from mobiledl.core.methods import apply
from mobiledl.core.task import TensorTask
from mobiledl.data import build_task
from mobiledl.deploy import get_engine
from mobiledl.deploy.profiling import profile_artifact
from mobiledl.fileio import write_json_atomic
from mobiledl.measure import artifact_outputs, measure_model
from mobiledl.models import create_model, save_model
from mobiledl.profile import Measurement, profile_model
from mobiledl.report import measurement_rows
from mobiledl.report.run import RunReport, StepRow, write_run_folder_report
from mobiledl.train import TrainConfig, TrainResult, predict_split, train

DEMO_MODEL = "resnet8"
DEMO_IMAGE_SIZE = 16
DEMO_EPOCHS = 15
DEMO_MACS_RATIO = 0.5
DEMO_FINETUNE_EPOCHS = 6


def run_demo(out_dir: Path, epochs: int | None = None, progress: bool = True) -> list[Measurement]:
    """Run the demo, write its artifacts into ``out_dir`` and return its measurements."""
    out_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    started = time.perf_counter()
    clock = _StageClock()
    task = build_task("digits", image_size=DEMO_IMAGE_SIZE, seed=0)
    model = create_model(DEMO_MODEL, task.num_classes, task.in_channels, task.image_size)
    console.print(f"[1/5] training {DEMO_MODEL} on digits {task.image_size} ...")
    config = TrainConfig(epochs=epochs or DEMO_EPOCHS, label_smoothing=0.1, progress=progress)
    history = train(model, task, config)
    save_model(out_dir / "model.pt", model, {"task": "digits", "input_shape": task.input_shape})

    console.print("[2/5] exporting to ONNX, checking parity, measuring in ONNX Runtime ...")
    fp32 = deployed_measurement(model, task, out_dir / "model.onnx", f"{DEMO_MODEL} fp32")
    seconds = [clock.lap()]

    console.print(f"[3/5] channel pruning to {DEMO_MACS_RATIO:.0%} of the MACs, KD fine-tuning ...")
    pruned = _pruned(model, task, epochs, progress)
    save_model(out_dir / "pruned.pt", pruned, {"task": "digits", "input_shape": task.input_shape})
    pruned_row = deployed_measurement(
        pruned, task, out_dir / "pruned.onnx", f"{DEMO_MODEL} pruned fp32"
    )
    seconds.append(clock.lap())

    console.print("[4/5] int8 post-training quantization, running the int8 graph ...")
    int8 = apply(pruned, QuantConfig(), task)
    int8_row = deployed_measurement(
        int8, task, out_dir / "pruned_int8.onnx", f"{DEMO_MODEL} pruned int8"
    )
    seconds.append(clock.lap())
    measurements = [fp32, pruned_row, int8_row]

    console.print("[5/5] profiling each artifact per layer, writing reports ...")
    elapsed = time.perf_counter() - started
    summary = {"elapsed_seconds": elapsed, "measurements": [m.to_dict() for m in measurements]}
    write_json_atomic(out_dir / "demo.json", summary)
    steps = [
        StepRow(kind, took, row, {})
        for kind, took, row in zip(
            ("train", "prune", "quantize"), seconds, measurements, strict=True
        )
    ]
    report = _run_report(task, steps, [model, pruned, int8], history)
    write_run_folder_report(out_dir, report)
    if progress:
        _print_table(measurements)
    console.print(
        f"done in {elapsed:.0f} s; wrote {out_dir}/model.pt, model.onnx, pruned.pt, "
        "pruned.onnx, pruned_int8.onnx, demo.json, report.html, report.json"
    )
    return measurements


class _StageClock:
    """Seconds since the previous lap (the wall time of each demo stage)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        took, self.last = now - self.last, now
        return took


def _pruned(
    model: torch.nn.Module, task: TensorTask, epochs: int | None, progress: bool
) -> torch.nn.Module:
    """Half the MACs by L1 channel pruning (physically smaller), then fine-tuning with
    Hinton distillation from the unpruned model."""
    pruned = apply(model, ChannelPruneConfig(criterion="l1", macs_ratio=DEMO_MACS_RATIO), task)
    finetune = TrainConfig(
        epochs=min(epochs or DEMO_FINETUNE_EPOCHS, DEMO_FINETUNE_EPOCHS),
        lr=0.02,
        warmup_epochs=1.0,
        label_smoothing=0.1,
        progress=progress,
    )
    return apply(pruned, DistillConfig(teacher=model, train=finetune), task)


def deployed_measurement(
    model: torch.nn.Module, task: TensorTask, path: Path, name: str
) -> Measurement:
    """``measure_model`` with the artifact written to ``path``; the accuracy is the artifact's
    in the engine on the test split. ``extra`` records the PyTorch accuracy, the parity (max
    abs diff) and the top-1 agreement between PyTorch and the engine."""
    engine = get_engine()
    row = measure_model(model, name, task, artifact=path, repeats=100)
    engine_logits, y = artifact_outputs(engine, path, task)
    torch_logits, _ = predict_split(model, task)
    row.accuracy = task.metric(engine_logits, y)
    row.extra.update(
        artifact=str(path),
        accuracy_of=path.name,
        pytorch_accuracy=task.metric(torch_logits, y),
        max_abs_diff=float((engine_logits - torch_logits).abs().max()),
        top1_agreement=float((engine_logits.argmax(1) == torch_logits.argmax(1)).float().mean()),
    )
    return row


def _print_table(measurements: list[Measurement]) -> None:
    header, rows = measurement_rows(measurements)
    table = Table(title="mobiledl demo (digits, test split)")
    for column in header:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(file=sys.stdout, width=140).print(table)


def _run_report(
    task: TensorTask, steps: list[StepRow], models: list[torch.nn.Module], history: TrainResult
) -> RunReport:
    """The demo as a run report: its three steps, per-layer MACs of the first and the last
    model, and each artifact's ONNX Runtime time per layer (``mobiledl inspect``)."""
    example = task.example_input(1)
    layer_times = {}
    for step, model in zip(steps, models, strict=True):
        path = Path(step.measurement.extra["artifact"])
        profile = profile_artifact(path, model=model, name=step.measurement.name)
        layer_times[step.measurement.name] = profile.times_by_layer()
    return RunReport(
        title="mobiledl demo",
        description=(
            f"{DEMO_MODEL} trained on scikit-learn digits resized to {task.image_size}, then "
            f"channel-pruned to {DEMO_MACS_RATIO:.0%} of its MACs (L1 criterion, physical "
            "removal, fine-tuned with distillation from the trained model) and quantized to "
            "int8 (static, per-channel weights, QDQ graph). Accuracy of each exported model in "
            "ONNX Runtime on the held-out test split; latency in ONNX Runtime at batch 1 "
            "(median of 100 runs); bytes = ONNX file size."
        ),
        steps=steps,
        layers_before=profile_model(models[0], example).layers,
        layers_after=profile_model(models[-1], example).layers,
        layer_times=layer_times,
        training={steps[0].measurement.name: [h["val_accuracy"] for h in history.history]},
    )
