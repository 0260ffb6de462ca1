"""PyTorch eager vs ONNX Runtime on every zoo model, at the same thread count.

For each model and batch size the benchmark exports the model to ONNX, checks that ONNX
Runtime gives the same output, and times both engines interleaved (round-robin, rotated
order) so drift on a noisy machine hits both alike.

    python -m benchmarks engine_overhead --threads 1 --clock thread  # the published table
    python -m benchmarks engine_overhead --smoke  # two small models, a temporary directory
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from benchmarks import harness
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model, list_models
from mobiledl.profile import count_params

STEM = "engine_overhead"
NUM_CLASSES = 10


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(
        STEM, __doc__, threads=2, threads_help="threads for both engines", clock=True
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per engine")
    parser.add_argument("--models", default=None, help="comma-separated subset of the zoo")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, default 1,32")
    parser.add_argument("--input-shape", default="3,32,32", help="C,H,W of one input")
    args = harness.parse(parser, argv)
    smoke = {"batch_sizes": "1,2", "repeats": 5, "warmup": 1}
    harness.resolve(args, smoke, {"batch_sizes": "1,32", "repeats": 100, "warmup": 10})
    args.input_shape = harness.positive_ints(args.input_shape, "--input-shape")
    if len(args.input_shape) != 3:
        raise UserError(f"--input-shape must be C,H,W; got {args.input_shape}")
    args.batch_sizes = harness.positive_ints(args.batch_sizes, "--batch-sizes")
    args.models = select_models(args.models, args.smoke, args.input_shape)
    return args


def select_models(names: str | None, smoke: bool, input_shape: list[int]) -> list[str]:
    """The zoo models to measure: ``--models``, the two smallest for ``--smoke``, or all."""
    available = [info.name for info in list_models(inputs="image")]
    if names:
        chosen = harness.names(names)
        unknown = [name for name in chosen if name not in available]
        if unknown:
            raise UserError(f"unknown model(s) {', '.join(unknown)}; available: {available}")
        return chosen
    if smoke:
        return sorted(available, key=lambda name: count_params(build(name, input_shape)))[:2]
    return available


def build(name: str, input_shape: list[int]) -> nn.Module:
    channels, height, width = input_shape
    return create_model(name, NUM_CLASSES, channels, (height, width)).eval()


def measure(name: str, batch: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One row: eager and ORT latency of zoo model ``name`` at ``batch``."""
    model = build(name, args.input_shape)
    engine = get_engine("onnxruntime")
    example = torch.randn(1, *args.input_shape, generator=torch.Generator().manual_seed(0))
    artifact = engine.export(model, example, workdir / f"{name}.onnx")
    runner = engine.load(artifact, threads=args.threads)
    x = torch.randn(batch, *args.input_shape, generator=torch.Generator().manual_seed(1))
    x_np = x.numpy()
    diff = engine.parity_check(model, runner, x)
    with torch.no_grad():
        cells = harness.interleaved(
            {"eager": lambda: model(x), "onnxruntime": lambda: runner.run(x_np)},
            warmup=args.warmup,
            repeats=args.repeats,
            clock=args.clock,
            batch_size=batch,
            threads=args.threads,
        )
    eager, ort = cells["eager"], cells["onnxruntime"]
    return {
        "model": name,
        "batch_size": batch,
        "input_shape": list(args.input_shape),
        "params": count_params(model),
        "onnx_bytes": artifact.stat().st_size,
        "eager_median_ms": eager["median_ms"],
        "eager_p90_ms": eager["p90_ms"],
        "ort_median_ms": ort["median_ms"],
        "ort_p90_ms": ort["p90_ms"],
        "eager_over_ort": eager["median_ms"] / ort["median_ms"],
        "max_abs_diff": diff,
        "repeats": eager["repeats"],
    }


def geomeans(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per batch size: geometric mean, minimum and maximum of eager / ORT."""
    out = {}
    for batch in sorted({row["batch_size"] for row in rows}):
        ratios = [row["eager_over_ort"] for row in rows if row["batch_size"] == batch]
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        out[str(batch)] = {"geomean": geomean, "min": min(ratios), "max": max(ratios)}
    return out


def markdown(report: dict[str, Any]) -> str:
    """A markdown report: setup, the table, and the geometric-mean ratio per batch size."""
    config, machine, rows = report["config"], report["machine"], report["rows"]
    table = harness.markdown_table(
        ["model", "batch", "params", "eager median ms", "eager p90 ms", "ORT median ms",
         "ORT p90 ms", "eager/ORT", "max abs diff"],
        [
            (row["model"], row["batch_size"], f"{row['params']:,}",
             f"{row['eager_median_ms']:.3f}", f"{row['eager_p90_ms']:.3f}",
             f"{row['ort_median_ms']:.3f}", f"{row['ort_p90_ms']:.3f}",
             f"{row['eager_over_ort']:.2f}x", f"{row['max_abs_diff']:.1e}")
            for row in rows
        ],
        align="lrrrrrrrr",
    )  # fmt: skip
    lines = [
        "# Engine overhead: PyTorch eager vs ONNX Runtime",
        "",
        f"{machine['cpu']} ({machine['cores']} CPUs), "
        f"{harness.plural(config['threads'], 'thread')} for both engines; torch "
        f"{machine['torch']}, onnxruntime {machine['onnxruntime']}; "
        f"input {'x'.join(map(str, config['input_shape']))}; {config['repeats']} timed calls per "
        f"engine after {harness.plural(config['warmup'], 'warm-up call')}, interleaved "
        f"round-robin, {harness.clock_text(config['clock'])}. Eager runs under "
        "`torch.no_grad()` in eval mode; ONNX Runtime uses opset 17, all graph optimizations, "
        f"sequential execution. {report['created']}; 1-minute load average "
        f"{machine['load_average_1min_start']} before, {machine['load_average_1min']} after.",
        "",
        *table,
        "",
        *(
            f"- batch {batch}: eager/ORT geometric mean {g['geomean']:.2f}x (range "
            f"{g['min']:.2f}x to {g['max']:.2f}x; >1 means ORT is faster)"
            for batch, g in report["summary"]["eager_over_ort"].items()
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Measure every (model, batch) pair and write JSON + markdown."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = [(name, batch) for name in args.models for batch in args.batch_sizes]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-onnx-") as tmp:
        progress = tqdm(pairs, file=sys.stderr, unit="run", dynamic_ncols=True)
        for name, batch in progress:
            progress.set_description(f"{name} batch {batch}")
            rows.append(measure(name, batch, args, Path(tmp)))
    return harness.write_results(args, rows, {"eager_over_ort": geomeans(rows)}, markdown)
