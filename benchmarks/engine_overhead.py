"""PyTorch eager vs ONNX Runtime on every zoo model, at the same thread count.

For each model and batch size the script exports the model to ONNX, checks that ONNX
Runtime gives the same output, and times both engines with ``interleaved_benchmark``
(round-robin, rotated order) so drift on a noisy machine hits both alike. It writes
``results/engine_overhead.json`` (rows + machine info) and ``results/engine_overhead.md``.

    python benchmarks/engine_overhead.py                    # full run, real results
    python benchmarks/engine_overhead.py --smoke --out tmp  # quick check, elsewhere
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mobiledl.deploy import CLOCKS, clock_for, get_engine, interleaved_benchmark  # noqa: E402
from mobiledl.errors import UserError  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model, list_models  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "engine_overhead"
NUM_CLASSES = 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for both engines")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per engine")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per engine")
    parser.add_argument("--models", default=None, help="comma-separated subset of the zoo")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, default 1,32")
    parser.add_argument(
        "--input-shape", default="3,32,32", help="C,H,W of one input (default 3,32,32)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="two small models, batch 1 and 2, few repeats"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: perf_counter; thread: CPU time of the calling thread (needs --threads 1; "
        "immune to other processes on a shared machine)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    args.input_shape = _int_list(args.input_shape, "--input-shape")
    if len(args.input_shape) != 3:
        raise UserError(f"--input-shape must be C,H,W; got {args.input_shape}")
    default_batches = "1,2" if args.smoke else "1,32"
    args.batch_sizes = _int_list(args.batch_sizes or default_batches, "--batch-sizes")
    args.repeats = args.repeats or (5 if args.smoke else 100)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1; got {args.threads}")
    clock_for(args.clock, [args.threads])
    return args


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers; got '{text}'") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} must be positive integers; got '{text}'")
    return values


def select_models(names: str | None, smoke: bool, input_shape: list[int]) -> list[str]:
    """The zoo models to measure: ``--models``, the two smallest for ``--smoke``, or all."""
    available = [info.name for info in list_models(inputs="image")]
    if names:
        chosen = [name.strip() for name in names.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in available]
        if unknown:
            raise UserError(f"unknown model(s) {', '.join(unknown)}; available: {available}")
        return chosen
    if smoke:
        return sorted(available, key=lambda name: _params(build(name, input_shape)))[:2]
    return available


def build(name: str, input_shape: list[int]) -> nn.Module:
    channels, height, width = input_shape
    return create_model(name, NUM_CLASSES, channels, (height, width)).eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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
        stats = interleaved_benchmark(
            {"eager": lambda: model(x), "onnxruntime": lambda: runner.run(x_np)},
            warmup=args.warmup,
            repeats=args.repeats,
            clock=CLOCKS[args.clock],
            batch_size=batch,
            threads=args.threads,
        )
    eager, ort_stats = stats["eager"], stats["onnxruntime"]
    return {
        "model": name,
        "batch_size": batch,
        "input_shape": list(args.input_shape),
        "params": _params(model),
        "onnx_bytes": artifact.stat().st_size,
        "eager_median_ms": eager.median_ms,
        "eager_p90_ms": eager.p90_ms,
        "ort_median_ms": ort_stats.median_ms,
        "ort_p90_ms": ort_stats.p90_ms,
        "eager_over_ort": eager.median_ms / ort_stats.median_ms,
        "max_abs_diff": diff,
        "repeats": eager.repeats,
    }


def machine_info(args: argparse.Namespace, load_at_start: float | None) -> dict[str, Any]:
    """Versions, CPU, threads and run settings; the load average before and after the run."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"start": load_at_start, "end": _load_average()},
        "threads": args.threads,
        "clock": args.clock,
        "input_shape": list(args.input_shape),
        "batch_sizes": args.batch_sizes,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "smoke": args.smoke,
    }


def _load_average() -> float | None:
    """The 1-minute load average: other processes on the CPUs make every timing noisier."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """A markdown report: setup, the table, and the geometric-mean ratio per batch size."""
    lines = [
        "# Engine overhead: PyTorch eager vs ONNX Runtime",
        "",
        f"{info['cpu']} ({info['cpu_count']} CPUs), {_plural(info['threads'], 'thread')} for both "
        f"engines; torch {info['torch']}, onnxruntime {info['onnxruntime']}; input "
        f"{'x'.join(map(str, info['input_shape']))}; {info['repeats']} timed calls per "
        f"engine after {_plural(info['warmup'], 'warm-up call')}, interleaved round-robin, "
        f"{'wall time' if info['clock'] == 'wall' else 'CPU time of the calling thread'}. "
        f"Eager runs under `torch.no_grad()` in eval mode; ONNX Runtime uses opset 17, "
        f"all graph optimizations, sequential execution. {info['date']}; 1-minute load "
        f"average {info['load_average_1min']['start']} before, "
        f"{info['load_average_1min']['end']} after.",
        "",
        "| model | batch | params | eager median ms | eager p90 ms | ORT median ms "
        "| ORT p90 ms | eager/ORT | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {row['params']:,} "
            f"| {row['eager_median_ms']:.3f} | {row['eager_p90_ms']:.3f} "
            f"| {row['ort_median_ms']:.3f} | {row['ort_p90_ms']:.3f} "
            f"| {row['eager_over_ort']:.2f}x | {row['max_abs_diff']:.1e} |"
        )
    lines += ["", *_summary(rows), ""]
    return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for batch in sorted({row["batch_size"] for row in rows}):
        ratios = [row["eager_over_ort"] for row in rows if row["batch_size"] == batch]
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        lines.append(
            f"- batch {batch}: eager/ORT geometric mean {geomean:.2f}x "
            f"(range {min(ratios):.2f}x to {max(ratios):.2f}x; >1 means ORT is faster)"
        )
    return lines


def run(args: argparse.Namespace) -> Path:
    """Measure every (model, batch) pair and write JSON + markdown; return the JSON path."""
    out = args.out or (Path(tempfile.mkdtemp(prefix="mobiledl-bench-")) if args.smoke else RESULTS)
    torch.set_num_threads(args.threads)
    load_at_start = _warn_if_busy()
    names = select_models(args.models, args.smoke, args.input_shape)
    pairs = [(name, batch) for name in names for batch in args.batch_sizes]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-onnx-") as tmp:
        progress = tqdm(pairs, file=sys.stderr, unit="run", dynamic_ncols=True)
        for name, batch in progress:
            progress.set_description(f"{name} batch {batch}")
            rows.append(measure(name, batch, args, Path(tmp)))
    info = machine_info(args, load_at_start)
    json_path = write_json_atomic(out / f"{STEM}.json", {"machine": info, "rows": rows})
    write_text_atomic(out / f"{STEM}.md", to_markdown(rows, info))
    print(f"wrote {json_path} and {out / f'{STEM}.md'}", file=sys.stderr)
    return json_path


def _warn_if_busy() -> float | None:
    """The current load average; warn on stderr if other processes hold the CPUs."""
    load = _load_average()
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: 1-minute load average is {load} on {os.cpu_count()} CPUs; "
            "other processes will distort the timings",
            file=sys.stderr,
        )
    return load


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
