"""``mobiledl demo``: the spine end to end on the embedded digits task.

Train a compact model, profile it, export it to ONNX, check parity, measure accuracy
and latency inside ONNX Runtime; then remove half its MACs by channel pruning (fine-tuned
with distillation from the trained model), quantize the pruned model to int8 and run it as
an int8 QDQ graph in ONNX Runtime; write a table, JSON and an HTML report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from mobiledl.compress.distill import DistillConfig
from mobiledl.compress.prune import ChannelPruneConfig
from mobiledl.compress.quantize import QuantConfig
from mobiledl.core.methods import apply
from mobiledl.core.task import TensorTask
from mobiledl.data import build_task
from mobiledl.deploy import get_engine
from mobiledl.fileio import write_json_atomic
from mobiledl.measure import artifact_outputs, measure_model
from mobiledl.models import create_model, save_model
from mobiledl.profile import Measurement, profile_model
from mobiledl.report import HtmlReport, measurement_rows
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
    task = build_task("digits", image_size=DEMO_IMAGE_SIZE, seed=0)
    model = create_model(DEMO_MODEL, task.num_classes, task.in_channels, task.image_size)
    console.print(f"[1/5] training {DEMO_MODEL} on digits {task.image_size} ...")
    config = TrainConfig(epochs=epochs or DEMO_EPOCHS, label_smoothing=0.1, progress=progress)
    history = train(model, task, config)
    save_model(out_dir / "model.pt", model, {"task": "digits", "input_shape": task.input_shape})

    console.print("[2/5] exporting to ONNX, checking parity, measuring in ONNX Runtime ...")
    fp32 = deployed_measurement(model, task, out_dir / "model.onnx", f"{DEMO_MODEL} fp32")

    console.print(f"[3/5] channel pruning to {DEMO_MACS_RATIO:.0%} of the MACs, KD fine-tuning ...")
    pruned = _pruned(model, task, epochs, progress)
    save_model(out_dir / "pruned.pt", pruned, {"task": "digits", "input_shape": task.input_shape})
    pruned_row = deployed_measurement(
        pruned, task, out_dir / "pruned.onnx", f"{DEMO_MODEL} pruned fp32"
    )

    console.print("[4/5] int8 post-training quantization, running the int8 graph ...")
    int8 = apply(pruned, QuantConfig(), task)
    int8_row = deployed_measurement(
        int8, task, out_dir / "pruned_int8.onnx", f"{DEMO_MODEL} pruned int8"
    )
    measurements = [fp32, pruned_row, int8_row]

    console.print("[5/5] writing reports ...")
    elapsed = time.perf_counter() - started
    summary = {"elapsed_seconds": elapsed, "measurements": [m.to_dict() for m in measurements]}
    write_json_atomic(out_dir / "demo.json", summary)
    _write_report(out_dir / "report.html", model, task, measurements, history)
    if progress:
        _print_table(measurements)
    console.print(
        f"done in {elapsed:.0f} s; wrote {out_dir}/model.pt, model.onnx, pruned.pt, "
        "pruned.onnx, pruned_int8.onnx, demo.json, report.html"
    )
    return measurements


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


def _write_report(
    path: Path,
    model: torch.nn.Module,
    task: TensorTask,
    measurements: list[Measurement],
    history: TrainResult,
) -> None:
    report = HtmlReport("mobiledl demo")
    report.add_text(
        f"{DEMO_MODEL} trained on scikit-learn digits resized to {task.image_size}, then "
        f"channel-pruned to {DEMO_MACS_RATIO:.0%} of its MACs (L1 criterion, physical "
        "removal, fine-tuned with distillation from the trained model) and quantized to int8 "
        "(static, per-channel weights, QDQ graph). Accuracy of each exported model in ONNX "
        "Runtime on the held-out test split; latency in ONNX Runtime at batch 1 (median of "
        "100 runs); bytes = ONNX file size."
    )
    report.add_heading("Measurements")
    report.add_table(*measurement_rows(measurements))
    report.add_heading("Training")
    report.add_figure(_training_figure(history), "validation accuracy per epoch")
    profile = profile_model(model, task.example_input(1))
    report.add_heading("Per-layer profile")
    report.add_figure(_macs_figure(profile.layers), "MACs per layer")
    report.add_table(
        ["layer", "type", "output shape", "params", "MACs"],
        [[lp.name, lp.type, str(lp.output_shape), lp.params, lp.macs] for lp in profile.layers],
    )
    report.write(path)


def _training_figure(history: TrainResult) -> Figure:
    figure = Figure(figsize=(6, 3))
    axes = figure.subplots()
    epochs = [h["epoch"] for h in history.history]
    axes.plot(epochs, [h["val_accuracy"] for h in history.history], marker="o")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.grid(alpha=0.3)
    return figure


def _macs_figure(layers: list) -> Figure:
    figure = Figure(figsize=(8, 3))
    axes = figure.subplots()
    counted = [layer for layer in layers if layer.macs]
    axes.bar(range(len(counted)), [layer.macs for layer in counted])
    axes.set_xticks(range(len(counted)), [layer.name for layer in counted], rotation=90, fontsize=6)
    axes.set_ylabel("MACs")
    return figure
