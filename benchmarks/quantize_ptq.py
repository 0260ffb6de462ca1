"""Post-training quantization of the zoo: mobiledl vs ONNX Runtime and torchao PT2E.

For each task (digits, mnist1d) and zoo model the script trains an FP32 model (cached, so
re-runs skip training), then quantizes it with the same calibration data three ways:

- mobiledl ``quantize`` (W8A8: per-channel symmetric weights, asymmetric u8 activations,
  activation observer chosen on the validation split, ``--observer auto``), run both as
  our fake-quant simulation and as the exported int8 QDQ graph in ONNX Runtime (accuracy,
  top-1 agreement, integer kernels used);
- ONNX Runtime's ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel, u8
  activations / s8 weights, min-max, same ``reduce_range``), run in ONNX Runtime;
- torchao's PT2E flow with ``XNNPACKQuantizer`` (per-channel symmetric), run in PyTorch.

At 4-bit weights (8-bit activations) it compares mobiledl with AdaRound against
``quantize_static`` with int4 weights and PT2E with a [-7, 7] weight range.

    python benchmarks/quantize_ptq.py                    # full run, real results
    python benchmarks/quantize_ptq.py --smoke --out tmp  # quick check, elsewhere
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
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mobiledl.compress.quantize import QuantConfig, quantize  # noqa: E402
from mobiledl.compress.quantize.config import int8_products_saturate  # noqa: E402
from mobiledl.compress.quantize.ptq import calibration_data  # noqa: E402
from mobiledl.data import build_task  # noqa: E402
from mobiledl.data.builtin import cache_dir  # noqa: E402
from mobiledl.data.task import Task  # noqa: E402
from mobiledl.deploy import get_engine  # noqa: E402
from mobiledl.deploy.qdq import integer_ops  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model, list_models, load_model, save_model  # noqa: E402
from mobiledl.train import TrainConfig, evaluate, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "quantize_ptq"
TASKS = ("digits", "mnist1d")
W4_MODELS = ("lenet5", "resnet8", "resnet20", "mcunet")
EVAL_BATCH = 256


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--models", default=None, help="comma-separated zoo subset")
    parser.add_argument("--w4-models", default=",".join(W4_MODELS), help="4-bit comparison")
    parser.add_argument("--epochs", type=int, default=None, help="FP32 training epochs")
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--adaround-iters", type=int, default=500)
    parser.add_argument(
        "--observer", default="auto", help="our activation observer (default auto: by validation)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--smoke", action="store_true", help="one tiny model, digits only")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tasks, args.models, args.w4_models = "digits", "resnet8", "resnet8"
        args.epochs = args.epochs or 2
        args.calibration_samples, args.adaround_iters = 64, 10
    args.epochs = args.epochs or 15
    return args


# ---------------------------------------------------------------- FP32 models


def trained_model(task: Task, name: str, args: argparse.Namespace, cache: Path) -> nn.Module:
    """The FP32 model, trained with SGD for ``args.epochs`` (cached by settings)."""
    path = cache / f"{task.name}_{name}_sgd_e{args.epochs}_s0.pt"
    if path.is_file():
        return load_model(path).model
    model = create_model(name, task.num_classes, task.in_channels, task.image_size)
    config = TrainConfig(epochs=args.epochs, optimizer="sgd", progress=False, seed=0)
    train(model, task, config)
    save_model(path, model)
    return model.eval()


def accuracy_of_onnx(path: Path, task: Task) -> float:
    runner = get_engine("onnxruntime").load(path)
    x, y = task.split("test")
    logits = [runner.run(x[i : i + EVAL_BATCH].numpy()) for i in range(0, len(x), EVAL_BATCH)]
    return task.metric(torch.from_numpy(np.concatenate(logits)), y)


# ---------------------------------------------------------------- the three quantizers


def ours(
    model: nn.Module, task: Task, data: torch.Tensor, workdir: Path, observer: str
) -> dict[str, Any]:
    """mobiledl W8A8 PTQ: simulated accuracy, int8 ONNX accuracy, agreement, kernels."""
    quantized = quantize(model, QuantConfig(observer=observer), task, data)
    path = get_engine().export(quantized, task.example_input(1), workdir / "ours.onnx")
    x, _ = task.split("test")
    return {
        "ours_w8a8": evaluate(quantized, task),
        "ours_w8a8_ort": accuracy_of_onnx(path, task),
        "agreement": get_engine().top1_agreement(quantized, path, x),
        "integer_ops": dict(integer_ops(path)),
        "ours_int8_bytes": path.stat().st_size,
        "ours_observer": quantized.mobiledl_arch["transforms"][-1]["config"]["config"]["observer"],
    }


def ours_w4(model: nn.Module, task: Task, data: torch.Tensor, iters: int, observer: str) -> float:
    """mobiledl W4A8: per-channel min-max weight grids, then AdaRound."""
    config = QuantConfig(weight_bits=4, observer=observer, adaround=True, adaround_iters=iters)
    return evaluate(quantize(model, config, task, data), task)


def ort_static(
    model: nn.Module, task: Task, data: torch.Tensor, workdir: Path, weight_bits: int
) -> float:
    """ONNX Runtime ``quantize_static`` (QDQ, per-channel, u8/s8, min-max) accuracy."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {"input": data[i : i + 64].numpy()} for i in range(0, len(data), 64)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    float_path = get_engine("onnxruntime").export(model, data[:1], workdir / "fp32.onnx")
    prepared = workdir / "fp32_preprocessed.onnx"
    out = workdir / f"ort_w{weight_bits}.onnx"
    weight_type = QuantType.QInt8 if weight_bits == 8 else QuantType.QInt4
    with _quiet():
        quant_pre_process(str(float_path), str(prepared))
        ort_quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=weight_type,
            reduce_range=weight_bits == 8 and int8_products_saturate(),
        )
    return accuracy_of_onnx(out, task)


def pt2e(model: nn.Module, task: Task, data: torch.Tensor, weight_bits: int) -> float:
    """torchao PT2E with ``XNNPACKQuantizer`` (per-channel symmetric), run in PyTorch."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.testing.pt2e._xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    limit = 2 ** (weight_bits - 1) - 1
    config = get_symmetric_quantization_config(
        is_per_channel=True, weight_qmin=-limit, weight_qmax=limit
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        exported = torch.export.export(model.eval(), (data[:2],), dynamic_shapes=({0: batch},))
        prepared = prepare_pt2e(exported.module(), XNNPACKQuantizer().set_global(config))
        with torch.no_grad():
            for i in range(0, len(data), 64):
                prepared(data[i : i + 64])
        converted = convert_pt2e(prepared)
    x, y = task.split("test")
    with torch.no_grad():  # an exported program cannot switch to eval(); it was traced so
        logits = torch.cat([converted(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    return task.metric(logits, y)


@contextlib.contextmanager
def _quiet() -> Any:
    """Keep third-party warnings and progress prints out of the benchmark's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def attempt(fn: Callable[[], float], errors: dict[str, str], key: str) -> float | None:
    """``fn()``, or ``None`` with the error's first line recorded under ``key``."""
    try:
        return fn()
    except Exception as error:  # a peer toolkit failing on a model is a result, not a crash
        errors[key] = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        return None


# ---------------------------------------------------------------- one row


def measure(task: Task, name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    start = time.perf_counter()
    model = trained_model(task, name, args, cache)
    data = calibration_data(task, args.calibration_samples)
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mobiledl-qbench-") as tmp:
        workdir = Path(tmp)
        row: dict[str, Any] = {"task": task.name, "model": name, "fp32": evaluate(model, task)}
        row.update(ours(model, task, data, workdir, args.observer))
        row["ort_w8a8"] = attempt(lambda: ort_static(model, task, data, workdir, 8), errors, "ort")
        row["pt2e_w8a8"] = attempt(lambda: pt2e(model, task, data, 8), errors, "pt2e")
        if name in args.w4_models.split(","):
            row["ours_w4"] = ours_w4(model, task, data, args.adaround_iters, args.observer)
            row["ort_w4"] = attempt(
                lambda: ort_static(model, task, data, workdir, 4), errors, "ort_w4"
            )
            row["pt2e_w4"] = attempt(lambda: pt2e(model, task, data, 4), errors, "pt2e_w4")
    row["errors"] = errors
    row["seconds"] = time.perf_counter() - start
    return row


# ---------------------------------------------------------------- report


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import torchao

        torchao_version = torchao.__version__
    except ImportError:
        torchao_version = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "torchao": torchao_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "reduce_range": int8_products_saturate(),
        "epochs": args.epochs,
        "calibration_samples": args.calibration_samples,
        "adaround_iters": args.adaround_iters,
        "observer": args.observer,
        "smoke": args.smoke,
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    deltas = [100 * (r["ours_w8a8"] - r["fp32"]) for r in rows]
    agreement = min(r["agreement"] for r in rows)
    peers = [(r["ours_w8a8"], r[k]) for r in rows for k in ("ort_w8a8", "pt2e_w8a8") if r[k]]
    w4 = [(r["ours_w4"], r[k]) for r in rows if "ours_w4" in r for k in ("ort_w4", "pt2e_w4")]
    w4 = [(a, b) for a, b in w4 if b is not None]
    lines = [
        "# Post-training quantization: mobiledl vs ONNX Runtime and torchao PT2E",
        "",
        f"FP32 models trained {info['epochs']} epochs (SGD, lr 0.05, cosine); "
        f"{info['calibration_samples']} "
        "training samples calibrate every method. Accuracies are top-1 on the test split, "
        "in %. W8A8 = 8-bit weights (per channel) and activations; `reduce_range` = "
        f"{info['reduce_range']} (7-bit weights on x86 without VNNI, for every method that "
        "offers it). Our activation observer: "
        f"`{info['observer']}` (`auto`: min-max, percentile, MSE and KL each calibrated, the "
        "most accurate on the validation split kept; the chosen one is in the JSON). "
        "Ours is measured as our fake-quant simulation and as the exported int8 "
        "graph in ONNX Runtime; agreement is top-1 agreement of the two. W4 = 4-bit weights, "
        f"8-bit activations: ours with AdaRound ({info['adaround_iters']} iterations per "
        "layer); ORT `quantize_static` with int4 weights (ORT runs those convolutions in "
        "float); PT2E with a [-7, 7] weight range. torch "
        f"{info['torch']}, onnxruntime {info['onnxruntime']}, torchao {info['torchao']}; "
        f"{info['date']}.",
        "",
        f"- ours W8A8 vs FP32: largest drop {max(0.0, -min(deltas)):.2f} points, mean change "
        f"{np.mean(deltas):+.2f}; lowest simulation/ORT agreement {100 * agreement:.2f}%",
        f"- ours W8A8 >= peer in {sum(a >= b for a, b in peers)} of {len(peers)} comparisons; "
        f"ours W4 >= peer in {sum(a >= b for a, b in w4)} of {len(w4)}",
        "",
        "| task | model | FP32 | ours W8A8 | ours int8 ORT | agree | ORT static | PT2E "
        "| ours W4 | ORT W4 | PT2E W4 | int ops |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ops = sum(r["integer_ops"].values())
        lines.append(
            f"| {r['task']} | {r['model']} | {_pct(r['fp32'])} | {_pct(r['ours_w8a8'])} "
            f"| {_pct(r['ours_w8a8_ort'])} | {_pct(r['agreement'])} | {_pct(r['ort_w8a8'])} "
            f"| {_pct(r['pt2e_w8a8'])} | {_pct(r.get('ours_w4'))} | {_pct(r.get('ort_w4'))} "
            f"| {_pct(r.get('pt2e_w4'))} | {ops} |"
        )
    failures = [
        f"- {r['task']}/{r['model']} {k}: {v}" for r in rows for k, v in r["errors"].items()
    ]
    if failures:
        lines += ["", "Peer failures:", *failures]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ort.set_default_logger_severity(3)
    out = args.out or RESULTS
    cache = out / "cache" if args.smoke else cache_dir() / "bench" / STEM
    cache.mkdir(parents=True, exist_ok=True)
    names = args.models.split(",") if args.models else [m.name for m in list_models(inputs="image")]
    rows = []
    for task_name in args.tasks.split(","):
        task = build_task(task_name)
        for name in names:
            rows.append(measure(task, name, args, cache))
            r = rows[-1]
            print(
                f"{task_name:8s} {name:20s} fp32 {_pct(r['fp32'])} ours {_pct(r['ours_w8a8'])} "
                f"ort {_pct(r['ort_w8a8'])} pt2e {_pct(r['pt2e_w8a8'])} "
                f"agree {_pct(r['agreement'])} w4 {_pct(r.get('ours_w4'))} "
                f"({r['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    info = machine_info(args)
    write_json_atomic(out / f"{STEM}.json", {"machine": info, "rows": rows})
    write_text_atomic(out / f"{STEM}.md", to_markdown(rows, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
