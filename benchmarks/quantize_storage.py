"""What every quantize method writes: model file and ONNX export sizes against fp32, with
the round trips checked.

Trains each model on each task, then quantizes it with every method of ``mobiledl
quantize`` (linear PTQ at 8 and 4 weight bits, 4-bit LSQ QAT, 4-bit k-means weight sharing
with centroid fine-tuning, binary, TWN and TTQ ternary weights) and reports, for each:

- test accuracy of the quantized model in PyTorch, and of its ONNX export in ONNX Runtime;
- the model file ``save_model(..., frozen=True)`` writes (what ``mobiledl quantize`` saves)
  against the fp32 model's file, and whether the file loads back to identical test outputs;
- the ONNX export (``mobiledl export``; low-bit weights bit-packed, ``deploy.onnx_packing``)
  against the fp32 export, and the share of test predictions it agrees with PyTorch on.

Targets (issue 22): binary and ternary files >= 10x smaller than fp32, 4-bit k-means >= 6x,
every export no larger than the fp32 export, every round trip identical.

    python -m benchmarks quantize_storage          # full run, writes benchmarks/results/
    python -m benchmarks quantize_storage --smoke  # seconds, into a temporary directory
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks import harness
from mobiledl import apply
from mobiledl.compress.quantize import (
    BinaryConfig,
    KMeansConfig,
    QATConfig,
    QuantConfig,
    TernaryConfig,
)
from mobiledl.core.config import MethodConfig
from mobiledl.data import Task
from mobiledl.deploy import get_engine
from mobiledl.measure import artifact_outputs
from mobiledl.models import load_model, save_model
from mobiledl.train import TrainConfig, predict_split

STEM = "quantize_storage"
#: Smallest fp32-file / quantized-file ratio per method (issue 22), where one is set.
MIN_FILE_RATIO = {"binary": 10.0, "ternary-twn": 10.0, "ternary-ttq": 10.0, "kmeans-4": 6.0}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__)
    harness.add_task_arguments(parser, "digits")
    parser.add_argument("--models", default=None, help="comma-separated (default resnet8,lenet5)")
    parser.add_argument(
        "--baseline-epochs", type=harness.positive_int("--baseline-epochs"), default=None
    )
    parser.add_argument(
        "--method-epochs",
        type=harness.positive_int("--method-epochs"),
        default=None,
        help="training epochs of QAT, binary, ternary and k-means fine-tuning (5)",
    )
    args = harness.parse(parser, argv)
    harness.resolve_tasks(args, "digits", "digits")
    harness.resolve(
        args,
        {"models": "resnet8", "baseline_epochs": 1, "method_epochs": 1},
        {"models": "resnet8,lenet5", "baseline_epochs": 20, "method_epochs": 5},
    )
    args.models = harness.names(args.models)
    return args


def methods(epochs: int, seed: int) -> dict[str, MethodConfig]:
    """The configs behind ``mobiledl quantize --method ...`` compared here."""
    lowbit = TrainConfig(epochs=epochs, optimizer="adamw", lr=1e-3, seed=seed, progress=False)
    qat = TrainConfig(epochs=epochs, lr=0.005, warmup_epochs=0, seed=seed, progress=False)
    return {
        "ptq-w8a8": QuantConfig(),
        "ptq-w4a8": QuantConfig(weight_bits=4),
        "qat-w4a8-lsq": QATConfig(quant=QuantConfig(weight_bits=4), algorithm="lsq", train=qat),
        "kmeans-4": KMeansConfig(
            bits=4, finetune=TrainConfig(epochs=epochs, lr=0.01, seed=seed, progress=False)
        ),
        "binary": BinaryConfig(train=lowbit),
        "ternary-twn": TernaryConfig(algorithm="twn", train=lowbit),
        "ternary-ttq": TernaryConfig(algorithm="ttq", train=lowbit),
    }


class Files:
    """The fp32 model's accuracy, file and export, written once per (task, model)."""

    def __init__(self, base: nn.Module, task: Task, folder: Path) -> None:
        self.folder, self.task = folder, task
        self.accuracy = task.metric(*predict_split(base, task))
        self.model_bytes = save_model(folder / "fp32.pt", base).stat().st_size
        self.onnx_bytes = self.export(base, "fp32").stat().st_size

    def export(self, model: nn.Module, stem: str) -> Path:
        """``model``'s artifact in the default engine (ONNX Runtime), at ``stem`` + suffix."""
        engine = get_engine()
        return engine.export(
            model, self.task.example_input(1), self.folder / f"{stem}{engine.suffix}"
        )


def method_row(
    method: str, config: MethodConfig, base: nn.Module, task: Task, files: Files
) -> dict[str, Any]:
    """Quantize ``base`` with ``config``; accuracy, file and export sizes, round trips."""
    start = time.perf_counter()
    quantized = apply(copy.deepcopy(base), config, task).eval()
    outputs, targets = predict_split(quantized, task)
    path = save_model(files.folder / f"{method}.pt", quantized, frozen=True)
    loaded, _ = predict_split(load_model(path).model, task)
    onnx_path = files.export(quantized, method)
    engine = get_engine()
    onnx_outputs, _ = artifact_outputs(engine, engine.load(onnx_path), task)
    predictions = outputs.argmax(1)
    model_bytes, onnx_bytes = path.stat().st_size, onnx_path.stat().st_size
    return {
        "task": task.name,
        "model": base.mobiledl_arch["name"],
        "method": method,
        "fp32_accuracy": files.accuracy,
        "accuracy": task.metric(outputs, targets),
        "onnx_accuracy": task.metric(onnx_outputs, targets),
        "onnx_agreement": float((onnx_outputs.argmax(1) == predictions).float().mean()),
        "model_bytes": model_bytes,
        "fp32_model_bytes": files.model_bytes,
        "file_ratio": files.model_bytes / model_bytes,
        "round_trip_identical": bool(torch.equal(outputs, loaded)),
        "onnx_bytes": onnx_bytes,
        "fp32_onnx_bytes": files.onnx_bytes,
        "onnx_ratio": files.onnx_bytes / onnx_bytes,
        "min_file_ratio": MIN_FILE_RATIO.get(method),
        "seconds": round(time.perf_counter() - start, 1),
    }


def markdown(report: dict[str, Any]) -> str:
    config, pct = report["config"], harness.pct
    lines = [
        "# What every quantize method writes: model files and ONNX exports",
        "",
        "Model file: `save_model(..., frozen=True)` (what `mobiledl quantize` writes) against "
        "the fp32 model's file; export: `mobiledl export` against the fp32 export; both sizes "
        "on disk. Targets (issue 22): binary and ternary files >= 10x smaller, 4-bit k-means "
        ">= 6x, no export larger than fp32, every round trip identical. "
        f"{'SMOKE RUN: tiny epochs, numbers meaningless. ' if config['smoke'] else ''}"
        f"Baselines trained {config['baseline_epochs']} epochs; QAT, binary, ternary and "
        f"k-means fine-tuning {config['method_epochs']}. {harness.machine_line(report)}",
        "",
        "| task | model | method | fp32 acc % | acc % | ONNX acc % | ONNX = PyTorch "
        "| fp32 file B | file B | file ratio | target | loads identical | fp32 ONNX B | ONNX B "
        "| ONNX ratio |",
        "|---|---|---|" + "---:|" * 12,
    ]
    for row in report["rows"]:
        target = row["min_file_ratio"]
        met = (
            "-"
            if target is None
            else f">= {target:.0f}x: {harness.yes(row['file_ratio'] >= target)}"
        )
        lines.append(
            f"| {row['task']} | {row['model']} | {row['method']} | {pct(row['fp32_accuracy'])} "
            f"| {pct(row['accuracy'])} "
            f"| {pct(row['onnx_accuracy'])} | {pct(row['onnx_agreement'])} "
            f"| {row['fp32_model_bytes']:,} | {row['model_bytes']:,} | {row['file_ratio']:.1f}x "
            f"| {met} | {harness.yes(row['round_trip_identical'])} "
            f"| {row['fp32_onnx_bytes']:,} | {row['onnx_bytes']:,} | {row['onnx_ratio']:.1f}x |"
        )
    summary = report["summary"]
    lines += [
        "",
        f"{summary['targets_met']} of {summary['rows_with_targets']} file-ratio targets met; "
        f"{summary['exports_not_larger']} of {summary['rows']} exports no larger than fp32; "
        f"{summary['round_trips_identical']} of {summary['rows']} files load back to identical "
        "test outputs.",
        "",
        "- PTQ and QAT exports are int8 QDQ graphs (ONNX Runtime's integer kernels); at 4 bits "
        "their int8 weight codes are bit-packed too and unpacked by constant-folded nodes.",
        "- k-means, binary and ternary exports are float graphs whose weights are stored as "
        "bit-packed codes + codebooks; ONNX Runtime folds the unpacking at load and runs the "
        "same float kernels as the fp32 export (no 1-4-bit kernels exist in ONNX Runtime).",
        "- The export folds batch norms into the convolutions, so a k-means layer's 16 values "
        "become 16 per output channel: its export stores a codebook per channel.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for spec in args.task_specs:
            task = harness.load_task(spec, seed=args.seed, smoke=args.smoke, split=args.split)
            for name in args.models:
                print(f"{name} on {task.name}", file=sys.stderr)
                base = harness.train_baseline(name, task, args.baseline_epochs, args.seed)
                files = Files(base, task, Path(folder))
                for method, config in methods(args.method_epochs, args.seed).items():
                    rows.append(method_row(method, config, base, task, files))
                    print(f"  {method}: {rows[-1]['file_ratio']:.1f}x", file=sys.stderr)
    targeted = [row for row in rows if row["min_file_ratio"] is not None]
    summary = {
        "rows": len(rows),
        "rows_with_targets": len(targeted),
        "targets_met": sum(row["file_ratio"] >= row["min_file_ratio"] for row in targeted),
        "exports_not_larger": sum(row["onnx_bytes"] <= row["fp32_onnx_bytes"] for row in rows),
        "round_trips_identical": sum(row["round_trip_identical"] for row in rows),
    }
    return harness.write_results(args, rows, summary, markdown)
