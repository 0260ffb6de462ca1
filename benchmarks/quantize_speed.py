"""Int8 vs FP32 in ONNX Runtime: latency and file size of MobileNetV2 and ResNet-20.

Both models take 3x224x224 inputs (the largest the target allows; both zoo models accept
any size) and have 1000 classes. Weights are random (Kaiming init, BatchNorm at its
initial statistics): latency and size do not depend on the values. The int8 model is
mobiledl's W8A8 PTQ (per-channel weights, u8 activations, calibrated on 16 random
inputs) exported as a QDQ graph; as a reference the benchmark also times ONNX Runtime's own
``quantize_static`` model (QDQ, per-channel, u8/s8, same calibration inputs). All
candidates are timed interleaved (round-robin, rotated order) at batch 1 and 32 with the
same thread count.

    python -m benchmarks quantize_speed --threads 1 --clock thread  # the published table
    python -m benchmarks quantize_speed --smoke  # ResNet-20 at 16x16, batch 1 and 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from benchmarks import harness
from mobiledl import apply
from mobiledl.compress.quantize import QuantConfig
from mobiledl.compress.quantize.config import int8_products_saturate
from mobiledl.deploy import get_engine
from mobiledl.deploy.qdq import integer_ops
from mobiledl.models import create_model

STEM = "quantize_speed"
NUM_CLASSES = 1000
CALIBRATION = 16
SPEEDUP_TARGET, SIZE_TARGET = 2.0, 3.5
#: Timed calls at batch 1; larger batches get a fifth of them.
REPEATS, LARGE_BATCH_SHARE = 60, 5


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(
        STEM, __doc__, threads=os.cpu_count() or 1, threads_help="ONNX Runtime threads",
        clock=True,
    )  # fmt: skip
    parser.add_argument("--models", default=None, help="default mobilenet_v2,resnet20")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 (smoke 16)")
    parser.add_argument("--batch-sizes", default=None, help="default 1,32 (smoke 1,2)")
    args = harness.parse(parser, argv)
    smoke = {"models": "resnet20", "image_size": 16, "batch_sizes": "1,2", "repeats": 3}
    full = {"models": "mobilenet_v2,resnet20", "image_size": 224, "batch_sizes": "1,32"}
    harness.resolve(args, smoke, {**full, "repeats": REPEATS})
    args.models = harness.names(args.models)
    args.batch_sizes = harness.positive_ints(args.batch_sizes, "--batch-sizes")
    return args


def artifacts(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Path]:
    """FP32, our int8 and ORT's int8 ONNX files of one randomly initialized model."""
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, 3, args.image_size).eval()
    data = torch.randn(CALIBRATION, 3, args.image_size, args.image_size)
    engine = get_engine("onnxruntime")
    fp32 = engine.export(model, data[:1], workdir / f"{name}_fp32.onnx")
    quantized = apply(
        model,
        QuantConfig(calibration_samples=CALIBRATION),
        harness.calibration_task(data, NUM_CLASSES),
    )
    ours = engine.export(quantized, data[:1], workdir / f"{name}_int8.onnx")
    ort_int8 = harness.ort_quantize_static(
        fp32, data, workdir / f"{name}_ort.onnx", 1, reduce_range=int8_products_saturate()
    )
    return {"fp32": fp32, "int8": ours, "ort_int8": ort_int8}


def measure(name: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """One row per batch size: medians, speedups and file sizes."""
    files = artifacts(name, args, workdir)
    sizes = {k: path.stat().st_size for k, path in files.items()}
    shape = (3, args.image_size, args.image_size)
    grid = harness.onnx_grid(
        files,
        lambda batch: np.random.default_rng(0).standard_normal((batch, *shape), np.float32),
        "fp32",
        args.batch_sizes,
        [args.threads],
        args.repeats,
        args.clock,
        LARGE_BATCH_SHARE,
    )
    rows = []
    for batch in args.batch_sizes:
        cell = {k: grid[k][f"t{args.threads}_b{batch}"] for k in files}
        rows.append(
            {
                "model": name,
                "batch_size": batch,
                "image_size": args.image_size,
                "fp32_median_ms": cell["fp32"]["median_ms"],
                "int8_median_ms": cell["int8"]["median_ms"],
                "ort_int8_median_ms": cell["ort_int8"]["median_ms"],
                "fp32_p90_ms": cell["fp32"]["p90_ms"],
                "int8_p90_ms": cell["int8"]["p90_ms"],
                "speedup": cell["int8"]["speedup"],
                "ort_int8_speedup": cell["ort_int8"]["speedup"],
                "fp32_bytes": sizes["fp32"],
                "int8_bytes": sizes["int8"],
                "ort_int8_bytes": sizes["ort_int8"],
                "size_ratio": sizes["fp32"] / sizes["int8"],
                "integer_ops": sum(integer_ops(files["int8"]).values()),
                "repeats": cell["fp32"]["repeats"],
            }
        )
        row = rows[-1]
        print(
            f"{name} batch {batch}: fp32 {row['fp32_median_ms']:.2f} ms, int8 "
            f"{row['int8_median_ms']:.2f} ms ({row['speedup']:.2f}x), ORT int8 "
            f"{row['ort_int8_speedup']:.2f}x, {row['size_ratio']:.2f}x smaller",
            file=sys.stderr,
            flush=True,
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    config, machine = report["config"], report["machine"]
    saturate = machine["int8_products_saturate"]
    vnni = "without VNNI (so 7-bit weights)" if saturate else "with VNNI"
    table = harness.markdown_table(
        ["model", "input", "batch", "FP32 ms", "int8 ms", "speedup", "ORT int8 speedup",
         "FP32 bytes", "int8 bytes", "smaller", "int ops"],
        [
            (r["model"], f"3x{r['image_size']}x{r['image_size']}", r["batch_size"],
             f"{r['fp32_median_ms']:.2f}", f"{r['int8_median_ms']:.2f}", f"{r['speedup']:.2f}x",
             f"{r['ort_int8_speedup']:.2f}x", f"{r['fp32_bytes']:,}", f"{r['int8_bytes']:,}",
             f"{r['size_ratio']:.2f}x", r["integer_ops"])
            for r in report["rows"]
        ],
        align="llrrrrrrrrr",
    )  # fmt: skip
    lines = [
        "# Int8 vs FP32 in ONNX Runtime",
        "",
        f"{machine['cpu']} ({machine['cores']} CPUs, {vnni}), {config['threads']} threads; "
        f"onnxruntime {machine['onnxruntime']}; random weights, 1000 classes. Medians of "
        f"interleaved timed calls ({harness.clock_text(config['clock'])}). `int8` is "
        "mobiledl's QDQ export, `ORT int8` ONNX Runtime's own `quantize_static` for reference. "
        "Sizes are the ONNX files: the int8 file holds int8 weights, int32 biases, per-channel "
        f"scales and short tensor names. Targets: >= {SPEEDUP_TARGET}x faster, >= "
        f"{SIZE_TARGET}x smaller. {report['created']}; 1-minute load average "
        f"{machine['load_average_1min_start']} before, {machine['load_average_1min']} after.",
        "",
        *table,
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    ort.set_default_logger_severity(3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-qspeed-") as tmp:
        for name in args.models:
            rows += measure(name, args, Path(tmp))
    targets = {"speedup": SPEEDUP_TARGET, "size_ratio": SIZE_TARGET}
    machine = {"int8_products_saturate": int8_products_saturate()}
    return harness.write_results(args, rows, {"targets": targets}, markdown, machine=machine)
