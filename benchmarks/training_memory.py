"""Training-memory profiler against the measured peak, for every zoo model and method.

For each zoo model (3x32x32 inputs, 10 classes, batch 16, SGD with momentum) and each of full
fine-tuning, last layer, bias only (with the classifier) and TinyTL, the script predicts the peak
of one training step with ``mobiledl.profile.training_memory`` and measures it on a real step
(``mobiledl.train.measure_training_step``: the bytes of the tensors alive when the step starts,
plus the peak of PyTorch's CPU-allocator events during forward, backward and the update). Full
fine-tuning is also run with gradient checkpointing over sqrt(n) stages of ``model.features``
(Chen et al. 2016). Target: prediction within 15% of measurement in every row. Writes
``results/training_memory.json`` and ``.md``.

    python benchmarks/training_memory.py                    # full run, real results
    python benchmarks/training_memory.py --smoke --out tmp  # two models, elsewhere
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model, list_models  # noqa: E402
from mobiledl.profile import training_memory  # noqa: E402
from mobiledl.train import freeze, measure_training_step, tinytl  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "training_memory"
METHODS = ("full", "last", "bias", "tinytl", "full+checkpoint")
TOLERANCE = 0.15


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated (default: the zoo)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="two small models, batch 8")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.image_size = "lenet5,resnet8", 8, 16
    names = [info.name for info in list_models(inputs="image")]
    args.models = args.models.split(",") if args.models else names
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


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "smoke": args.smoke,
        "batch": args.batch,
        "input": [3, args.image_size, args.image_size],
        "optimizer": "SGD with momentum (one state copy per trainable parameter)",
        "layout": "channels-last activations, lean autograd (mobiledl.train.lean)",
        "measurement": "resident tensor bytes at step start + peak of torch.profiler CPU "
        "allocator events over forward, backward and optimizer step (second, steady-state step)",
    }


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    worst = max(abs(r["error"]) for r in rows)
    lines = [
        "# Training memory: profiler prediction against the measured peak",
        "",
        f"Batch {info['batch']} of {info['input']} inputs, 10 classes, {info['optimizer']}; "
        f"{info['layout']}. Measured: {info['measurement']}. Target: |error| <= "
        f"{TOLERANCE:.0%} in every row; worst here {worst:.1%}.",
        "",
        "| model | method | trainable params | predicted peak (KB) | measured peak (KB) "
        "| error | peak at | within 15% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['trainable_params']:,} "
            f"| {r['predicted_peak_bytes'] / 1024:,.0f} | {r['measured_peak_bytes'] / 1024:,.0f} "
            f"| {r['error']:+.1%} | {r['peak_phase']} {r['peak_layer']} "
            f"| {'yes' if r['within_tolerance'] else 'NO'} |"
        )
    lines += [
        "",
        f"Machine: {info['cpu_count']} cores, torch {info['torch']}, {info['threads']} "
        f"thread(s); {info['date']}.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    out = args.out or (Path(tempfile.mkdtemp(prefix="mobiledl-bench-")) if args.smoke else RESULTS)
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
    info = machine_info(args)
    json_path = write_json_atomic(out / f"{STEM}.json", {"machine": info, "rows": rows})
    write_text_atomic(out / f"{STEM}.md", to_markdown(rows, info))
    return json_path


def main(argv: Sequence[str] | None = None) -> int:
    path = run(parse_args(argv))
    print(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
