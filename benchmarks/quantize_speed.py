"""Int8 vs FP32 in ONNX Runtime: latency and file size of MobileNetV2 and ResNet-20.

Both models take 3x224x224 inputs (the largest the target allows; both zoo models accept
any size) and have 1000 classes. Weights are random (Kaiming init, BatchNorm at its
initial statistics): latency and size do not depend on the values. The int8 model is
mobiledl's W8A8 PTQ (per-channel weights, u8 activations, calibrated on 16 random
inputs) exported as a QDQ graph; as a reference the script also times ONNX Runtime's own
``quantize_static`` model (QDQ, per-channel, u8/s8, same calibration inputs). All
candidates are timed with ``interleaved_benchmark`` (round-robin, rotated order) at batch
1 and 32 with the same thread count.

    python benchmarks/quantize_speed.py                    # full run, real results
    python benchmarks/quantize_speed.py --smoke --out tmp  # quick check, elsewhere
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from mobiledl.compress.quantize import QuantConfig, quantize  # noqa: E402
from mobiledl.compress.quantize.config import int8_products_saturate  # noqa: E402
from mobiledl.deploy import CLOCKS, clock_for, get_engine, interleaved_benchmark  # noqa: E402
from mobiledl.deploy.qdq import integer_ops  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "quantize_speed"
MODELS = ("mobilenet_v2", "resnet20")
NUM_CLASSES = 1000
CALIBRATION = 16
SPEEDUP_TARGET, SIZE_TARGET = 2.0, 3.5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: perf_counter; thread: CPU time of the calling thread (needs --threads 1; "
        "immune to other processes on a shared machine)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per candidate")
    parser.add_argument("--smoke", action="store_true", help="ResNet-20 at 16x16, batch 1 and 2")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.image_size, args.batch_sizes = "resnet20", 16, "1,2"
        args.repeats = args.repeats or 3
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    clock_for(args.clock, [args.threads])
    return args


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def ort_static(float_path: Path, data: torch.Tensor, out: Path) -> Path:
    """ONNX Runtime's own pre-processing + static QDQ quantization of the FP32 file."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"input": data[i : i + 1].numpy()} for i in range(len(data)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared = out.with_name("preprocessed.onnx")
    with _quiet():
        quant_pre_process(str(float_path), str(prepared))
        ort_quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=int8_products_saturate(),
        )
    return out


def artifacts(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Path]:
    """FP32, our int8 and ORT's int8 ONNX files of one randomly initialized model."""
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, 3, args.image_size).eval()
    data = torch.randn(CALIBRATION, 3, args.image_size, args.image_size)
    engine = get_engine("onnxruntime")
    fp32 = engine.export(model, data[:1], workdir / f"{name}_fp32.onnx")
    quantized = quantize(model, QuantConfig(), data=data)
    ours = get_engine().export(quantized, data[:1], workdir / f"{name}_int8.onnx")
    return {"fp32": fp32, "int8": ours, "ort_int8": ort_static(fp32, data, workdir / "ort.onnx")}


def measure(name: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """One row per batch size: medians, speedups and file sizes."""
    files = artifacts(name, args, workdir)
    engine = get_engine("onnxruntime")
    runners = {k: engine.load(path, threads=args.threads) for k, path in files.items()}
    sizes = {k: path.stat().st_size for k, path in files.items()}
    ops = sum(integer_ops(files["int8"]).values())
    rows = []
    for batch in args.batch_sizes:
        x = np.random.default_rng(0).standard_normal((batch, 3, args.image_size, args.image_size))
        x = x.astype(np.float32)
        repeats = args.repeats or (60 if batch == 1 else 12)
        stats = interleaved_benchmark(
            {k: (lambda r=r, x=x: r.run(x)) for k, r in runners.items()},
            warmup=2 if batch > 1 else 5,
            repeats=repeats,
            clock=CLOCKS[args.clock],
        )
        rows.append(
            {
                "model": name,
                "batch_size": batch,
                "image_size": args.image_size,
                "fp32_median_ms": stats["fp32"].median_ms,
                "int8_median_ms": stats["int8"].median_ms,
                "ort_int8_median_ms": stats["ort_int8"].median_ms,
                "fp32_p90_ms": stats["fp32"].p90_ms,
                "int8_p90_ms": stats["int8"].p90_ms,
                "speedup": stats["fp32"].median_ms / stats["int8"].median_ms,
                "ort_int8_speedup": stats["fp32"].median_ms / stats["ort_int8"].median_ms,
                "fp32_bytes": sizes["fp32"],
                "int8_bytes": sizes["int8"],
                "ort_int8_bytes": sizes["ort_int8"],
                "size_ratio": sizes["fp32"] / sizes["int8"],
                "integer_ops": ops,
                "repeats": repeats,
            }
        )
        print(
            f"{name} batch {batch}: fp32 {rows[-1]['fp32_median_ms']:.2f} ms, int8 "
            f"{rows[-1]['int8_median_ms']:.2f} ms ({rows[-1]['speedup']:.2f}x), ORT int8 "
            f"{rows[-1]['ort_int8_speedup']:.2f}x, {rows[-1]['size_ratio']:.2f}x smaller",
            file=sys.stderr,
            flush=True,
        )
    return rows


def machine_info(args: argparse.Namespace, load_start: float | None) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "int8_products_saturate": int8_products_saturate(),
        "threads": args.threads,
        "clock": args.clock,
        "load_average_1min": {"start": load_start, "end": _load()},
        "smoke": args.smoke,
    }


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    vnni = "without VNNI (so 7-bit weights)" if info["int8_products_saturate"] else "with VNNI"
    clock = "CPU time of the calling thread" if info.get("clock") == "thread" else "wall time"
    lines = [
        "# Int8 vs FP32 in ONNX Runtime",
        "",
        f"{info['cpu']} ({info['cpu_count']} CPUs, {vnni}), {info['threads']} threads; "
        f"onnxruntime {info['onnxruntime']}; random weights, 1000 classes. Medians of "
        f"interleaved timed calls ({clock}). `int8` is mobiledl's QDQ export, `ORT int8` "
        "ONNX Runtime's "
        "own `quantize_static` for reference. Sizes are the ONNX files: the int8 file holds "
        "int8 weights, int32 biases, per-channel scales and short tensor names. Targets: >= "
        f"{SPEEDUP_TARGET}x faster, >= {SIZE_TARGET}x smaller. {info['date']}; 1-minute load "
        f"average {info['load_average_1min']['start']} before, "
        f"{info['load_average_1min']['end']} after.",
        "",
        "| model | input | batch | FP32 ms | int8 ms | speedup | ORT int8 speedup "
        "| FP32 bytes | int8 bytes | smaller | int ops |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | 3x{r['image_size']}x{r['image_size']} | {r['batch_size']} "
            f"| {r['fp32_median_ms']:.2f} | {r['int8_median_ms']:.2f} | {r['speedup']:.2f}x "
            f"| {r['ort_int8_speedup']:.2f}x | {r['fp32_bytes']:,} | {r['int8_bytes']:,} "
            f"| {r['size_ratio']:.2f}x | {r['integer_ops']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ort.set_default_logger_severity(3)
    load_start = _load()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-qspeed-") as tmp:
        for name in args.models.split(","):
            rows += measure(name, args, Path(tmp))
    info = machine_info(args, load_start)
    out = args.out or RESULTS
    write_json_atomic(out / f"{STEM}.json", {"machine": info, "rows": rows})
    write_text_atomic(out / f"{STEM}.md", to_markdown(rows, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
