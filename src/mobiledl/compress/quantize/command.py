"""``mobiledl quantize MODEL --task TASK --method ptq|qat|kmeans|binary|ternary --bits B
[--per-channel] [--observer O] --out q.pt [--onnx q.onnx] [--json]``."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from mobiledl.cli_support import add_command, add_task_args, log, task_for_input
from mobiledl.errors import UserError

METHODS = ("ptq", "qat", "kmeans", "binary", "ternary")
LINEAR_METHODS = ("ptq", "qat")


def add_quantize_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl quantize``."""
    sub = add_command(
        commands,
        "quantize",
        "quantize a model: linear PTQ / QAT (int8 ONNX export), k-means, binary, ternary",
        _cmd_quantize,
    )
    sub.add_argument("model", type=Path, help="a mobiledl .pt file")
    add_task_args(sub, required=True)
    sub.add_argument("--method", default="ptq", help=f"{', '.join(METHODS)} (default ptq)")
    sub.add_argument("--bits", type=int, default=None, help="weight bits (default 8)")
    sub.add_argument("--act-bits", type=int, default=8, help="activation bits (ptq/qat)")
    sub.add_argument(
        "--per-channel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one weight scale per output channel (default on)",
    )
    sub.add_argument(
        "--observer",
        default="minmax",
        help="activation calibration: minmax, moving_average, percentile, mse, kl, or auto "
        "(the most accurate on the validation split)",
    )
    sub.add_argument("--weight-observer", default="minmax", help="minmax or mse")
    sub.add_argument("--calibration-samples", type=int, default=512)
    sub.add_argument("--equalize", action="store_true", help="cross-layer equalization")
    sub.add_argument("--bias-correction", action="store_true", help="empirical bias correction")
    sub.add_argument("--adaround", action="store_true", help="learn weight rounding (AdaRound)")
    sub.add_argument("--adaround-iters", type=int, default=500)
    sub.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="7-bit weights for x86 CPUs without VNNI (default: decided by the CPU)",
    )
    sub.add_argument("--qat-method", default="ste", help="ste, lsq or pact (default ste)")
    sub.add_argument("--epochs", type=int, default=3, help="training epochs (qat/binary/ternary)")
    sub.add_argument("--finetune-epochs", type=int, default=0, help="k-means centroid tuning")
    sub.add_argument("--no-latency", action="store_true", help="skip the engine benchmark")
    sub.add_argument("--out", type=Path, required=True, help="output model file (.pt)")
    sub.add_argument("--onnx", type=Path, default=None, help="also write an ONNX file")


def _config(args: argparse.Namespace) -> Any:
    from mobiledl.compress.quantize.config import QuantConfig

    return QuantConfig(
        weight_bits=args.bits,
        act_bits=args.act_bits,
        per_channel=args.per_channel,
        observer=args.observer,
        weight_observer=args.weight_observer,
        calibration_samples=args.calibration_samples,
        equalize=args.equalize,
        bias_correction=args.bias_correction,
        adaround=args.adaround,
        adaround_iters=args.adaround_iters,
        reduce_range=args.reduce_range,
        qat_method=args.qat_method,
    )


def _check_args(args: argparse.Namespace) -> None:
    """Validate the method and settle ``args.bits`` (8 by default; fixed for binary/ternary)."""
    if args.method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}; got '{args.method}'")
    fixed = {"binary": 1, "ternary": 2}.get(args.method)
    if fixed is not None and args.bits not in (None, fixed):
        raise UserError(f"--method {args.method} has {fixed}-bit weights; got --bits {args.bits}")
    args.bits = fixed or args.bits or 8
    if args.epochs < 0 or args.finetune_epochs < 0:
        raise UserError("--epochs and --finetune-epochs must be >= 0")


def _quantized_model(args: argparse.Namespace, config: Any, model: Any, task: Any) -> Any:
    """Run the chosen method on ``model``."""
    if args.method == "ptq":
        from mobiledl.compress.quantize.ptq import quantize

        return quantize(model, config, task)
    if args.method == "qat":
        from mobiledl.compress.quantize.qat import qat

        return qat(model, task, config, epochs=args.epochs)
    if args.method == "kmeans":
        from mobiledl.compress.quantize.kmeans import kmeans_quantize

        return kmeans_quantize(model, args.bits, task, finetune_epochs=args.finetune_epochs)
    from mobiledl.compress.quantize import binary

    method = binary.binarize if args.method == "binary" else binary.ternarize
    return method(model, task, args.epochs)


def _export(args: argparse.Namespace, model: Any, example: Any, path: Path) -> Path:
    """int8 QDQ ONNX for linear methods; the plain float export for the others."""
    if args.method in LINEAR_METHODS:
        from mobiledl.compress.quantize.onnx_export import export_int8_onnx

        return export_int8_onnx(model, example, path)
    from mobiledl.deploy import get_engine

    return get_engine("onnxruntime").export(model, example, path)


def _latency(path: Path, example: Any) -> Any:
    from mobiledl.deploy import get_engine

    engine = get_engine("onnxruntime")
    return engine.benchmark(engine.load(path), example).to_measurement()


def _cmd_quantize(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.measure import measure_model
    from mobiledl.models import load_model, save_model
    from mobiledl.train import evaluate

    _check_args(args)
    config = _config(args) if args.method in LINEAR_METHODS else None
    loaded = load_model(args.model)
    shape = (loaded.arch["in_channels"], *loaded.arch["image_size"])
    task = task_for_input(args.task, shape, args.seed, args.model)
    float_accuracy = evaluate(loaded.model, task, "test")
    log(f"quantizing {args.model} ({args.method}, {args.bits}-bit weights)")
    model = _quantized_model(args, config, loaded.model, task)
    example = task.example_input(1)
    measurement = measure_model(model, loaded.name, task, latency=False)
    with tempfile.TemporaryDirectory(prefix="mobiledl-q-") as tmp:
        artifact = _export(args, model, example, args.onnx or Path(tmp) / "model.onnx")
        measurement.bytes = artifact.stat().st_size  # what ships: the ONNX file
        if not args.no_latency:
            measurement = measurement.update(_latency(artifact, example))
    info = {
        "method": args.method,
        "bits": args.bits,
        "float_accuracy": float_accuracy,
        "onnx": str(args.onnx) if args.onnx else None,
    }
    meta = {"task": args.task, "seed": args.seed, "source": str(args.model), "quantization": info}
    save_model(args.out, model, {**meta, "test_accuracy": measurement.accuracy})
    measurement.extra.update(info, out=str(args.out), precision_bits=args.bits)
    if args.method in LINEAR_METHODS:
        from mobiledl.compress.quantize.ptq import quantization_summary

        measurement.extra.update(quantization_summary(model))
    if args.json:
        return measurement.to_dict()
    onnx_note = f", {args.onnx} ({measurement.bytes:,} B)" if args.onnx else ""
    print(
        f"wrote {args.out}: test accuracy {measurement.accuracy:.4f} "
        f"(float {float_accuracy:.4f}){onnx_note}"
    )
    return None
