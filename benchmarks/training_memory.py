"""Training-memory profiler against the measured peak, for every zoo model and method.

For each zoo model (3x32x32 inputs, 10 classes, batch 16, SGD with momentum) and each of full
fine-tuning, last layer, bias only (with the classifier) and TinyTL, the benchmark predicts the
peak of one training step with ``mobiledl.train.ondevice.memory`` and measures it on a real
step (``mobiledl.train.measure_training_step``: the bytes of the tensors alive when the step
starts, plus the peak of PyTorch's CPU-allocator events during forward, backward and the
update). Full fine-tuning is also run with gradient checkpointing over sqrt(n) stages of
``model.features`` (Chen et al. 2016). Target: prediction within 15% of measurement in every
row.

    python -m benchmarks training_memory          # full run, writes benchmarks/results/
    python -m benchmarks training_memory --smoke  # two small models, a temporary directory
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from benchmarks import harness
from mobiledl.models import create_model, list_models
from mobiledl.train import freeze, measure_training_step, tinytl
from mobiledl.train.ondevice.memory import training_memory

STEM = "training_memory"
METHODS = ("full", "last", "bias", "tinytl", "full+checkpoint")
TOLERANCE = 0.15


MEASUREMENT = (
    "resident tensor bytes at step start + peak of torch.profiler CPU allocator events over "
    "forward, backward and optimizer step (second, steady-state step)"
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__)
    parser.add_argument("--models", default=None, help="comma-separated (default: the zoo)")
    parser.add_argument("--batch", type=int, default=None, help="default 16 (smoke 8)")
    parser.add_argument("--image-size", type=int, default=None, help="default 32 (smoke 16)")
    args = harness.parse(parser, argv)
    zoo = ",".join(info.name for info in list_models(inputs="image"))
    smoke = {"models": "lenet5,resnet8", "batch": 8, "image_size": 16}
    harness.resolve(args, smoke, {"models": zoo, "batch": 16, "image_size": 32})
    args.models = harness.names(args.models)
    return args


def prepared(name: str, method: str, image_size: int) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 10, 3, image_size)
    if method == "tinytl":
        return tinytl(model)
    return freeze(model, method.split("+")[0])


def segments_for(model: nn.Module) -> int:
    """sqrt(n) stages over ``model.features`` (Chen et al. 2016)."""
    return max(1, round(math.sqrt(len(model.features))))


def measure_row(name: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    model = prepared(name, method, args.image_size)
    segments = segments_for(model) if method.endswith("checkpoint") else None
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch,))
    start = time.perf_counter()
    profile = training_memory(model, x, y, checkpoint_segments=segments)
    measured = measure_training_step(model, x, y, checkpoint_segments=segments)
    error = profile.peak_bytes / measured.peak_bytes - 1
    return {
        "model": name,
        "method": method,
        "checkpoint_segments": segments,
        "trainable_params": profile.trainable_params,
        "weight_bytes": profile.weight_bytes,
        "saved_activation_bytes": profile.saved_activation_bytes,
        "predicted_peak_bytes": profile.peak_bytes,
        "measured_peak_bytes": measured.peak_bytes,
        "error": error,
        "within_tolerance": abs(error) <= TOLERANCE,
        "peak_phase": profile.peak_phase,
        "peak_layer": profile.peak_layer,
        "peak_breakdown": profile.peak_breakdown,
        "unknown_ops": profile.unknown_ops,
        "seconds": time.perf_counter() - start,
    }


def markdown(report: dict[str, Any]) -> str:
    rows, config = report["rows"], report["config"]
    table = harness.markdown_table(
        ["model", "method", "trainable params", "predicted peak (KB)", "measured peak (KB)",
         "error", "peak at", "within 15%"],
        [
            (r["model"], r["method"], f"{r['trainable_params']:,}",
             f"{r['predicted_peak_bytes'] / 1024:,.0f}", f"{r['measured_peak_bytes'] / 1024:,.0f}",
             f"{r['error']:+.1%}", f"{r['peak_phase']} {r['peak_layer']}",
             harness.yes(r["within_tolerance"]))
            for r in rows
        ],
    )  # fmt: skip
    lines = [
        "# Training memory: profiler prediction against the measured peak",
        "",
        f"Batch {config['batch']} of {[3, config['image_size'], config['image_size']]} inputs, "
        f"10 classes, {config['optimizer']}; {config['layout']}. Measured: "
        f"{config['measurement']}. Target: |error| <= {TOLERANCE:.0%} in every row; worst "
        f"here {report['summary']['worst_error']:.1%}.",
        "",
        *table,
        "",
        harness.machine_line(report),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        for method in METHODS:
            rows.append(measure_row(name, method, args))
            row = rows[-1]
            print(
                f"{name} {method}: predicted {row['predicted_peak_bytes']:,} B, measured "
                f"{row['measured_peak_bytes']:,} B ({row['error']:+.1%})",
                file=sys.stderr,
            )
    summary = {
        "worst_error": max(abs(r["error"]) for r in rows),
        "rows_within_tolerance": sum(r["within_tolerance"] for r in rows),
        "rows": len(rows),
    }
    constants = {
        "tolerance": TOLERANCE,
        "optimizer": "SGD with momentum (one state copy per trainable parameter)",
        "layout": "channels-last activations, lean autograd (mobiledl.train.ondevice.lean)",
        "measurement": MEASUREMENT,
    }
    return harness.write_results(args, rows, summary, markdown, constants=constants)
