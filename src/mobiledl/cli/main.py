"""The ``mobiledl`` command line (contract: DESIGN.md, "Command line").

``--json`` prints exactly one JSON object (or a list) on stdout; progress and logs go to
stderr. Exit codes: 0 success, 2 user error (one line naming the problem), 1 bug.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mobiledl.cli.adapt import add_adapt_command
from mobiledl.cli.autoquant import add_autoquant_command
from mobiledl.cli.bench import add_bench_command
from mobiledl.cli.deep_compress import add_deep_compress_command
from mobiledl.cli.inspect import add_inspect_command
from mobiledl.cli.mcu import add_mcu_command
from mobiledl.cli.methods import add_apply_command
from mobiledl.cli.nas import add_nas_command
from mobiledl.cli.nlp import add_nlp_command
from mobiledl.cli.prune import add_prune_command
from mobiledl.cli.quantize import add_quantize_command
from mobiledl.cli.report import add_report_command
from mobiledl.cli.run import add_run_command
from mobiledl.cli.support import (
    OneLineParser,
    add_command,
    add_engine_arg,
    add_task_args,
    data_record,
    log,
    logging_to_stderr,
    task_for_model,
    task_for_specs,
)
from mobiledl.cli.video import add_video_command
from mobiledl.core.inputs import Inputs, InputSpec, example_from_specs, input_tensors
from mobiledl.errors import UserError
from mobiledl.fileio import (
    TEMP_NAME_CHARS,
    check_output_file,
    output_dir_arg,
    output_file_arg,
    partial_path,
    removed_on_error,
)
from mobiledl.resources import check_activation_memory, memory_limit
from mobiledl.validate import threads_arg

if TYPE_CHECKING:
    from mobiledl.deploy import Engine


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mobiledl`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a bad flag (one line already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        with logging_to_stderr(), memory_limit(getattr(args, "max_memory_gb", None)):
            return _run(args)
    except UserError as exc:
        print(f"mobiledl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mobiledl: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    result = args.handler(args)
    if result is None:
        return 0
    if args.json:
        print(json.dumps(result, indent=2, default=_json_default))
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mobiledl",
        description="Make deep learning models small, fast and trainable on mobile devices.",
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_models,
        _add_train,
        _add_eval,
        _add_profile,
        _add_export,
        add_bench_command,
        add_inspect_command,
        add_prune_command,
        add_quantize_command,
        add_autoquant_command,
        add_deep_compress_command,
        add_adapt_command,
        add_apply_command,
        add_run_command,
        add_report_command,
        add_nas_command,
        add_video_command,
        add_nlp_command,
        add_mcu_command,
        _add_demo,
    ):
        add(commands)
    return parser


def _version() -> str:
    from mobiledl import __version__

    return f"mobiledl {__version__}"


# ---------------------------------------------------------------- models


def _add_models(commands: argparse._SubParsersAction) -> None:
    add_command(commands, "models", "list the compact model zoo", _cmd_models)


def _cmd_models(args: argparse.Namespace) -> list[dict[str, object]] | None:
    from mobiledl.models import list_models

    infos = [info.to_dict() for info in list_models()]
    if args.json:
        return infos
    for info in infos:
        print(f"{info['name']:<20} {info['description']}  [{info['paper']}]")
    return None


# ---------------------------------------------------------------- train


def _add_train(commands: argparse._SubParsersAction) -> None:
    sub = add_command(commands, "train", "train a zoo model on a task", _cmd_train)
    sub.add_argument("--model", required=True, help="zoo model name (see `mobiledl models`)")
    add_task_args(sub, required=True)
    sub.add_argument("--epochs", type=int, default=30)
    sub.add_argument("--batch-size", type=int, default=64)
    sub.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    sub.add_argument("--lr", type=float, default=None, help="default 0.05 (sgd), 2e-3 (adamw)")
    sub.add_argument("--label-smoothing", type=float, default=0.0)
    sub.add_argument("--image-size", type=int, default=None, help="resize images to S x S")
    sub.add_argument("--width-mult", type=float, default=1.0)
    sub.add_argument("--teacher", type=Path, default=None, help="a mobiledl .pt to distill from")
    sub.add_argument(
        "--out",
        type=output_file_arg,
        required=True,
        help="output model file (.pt), written when training ends (meanwhile OUT.partial "
        "holds the best epoch so far and OUT.ckpt the state after the last finished epoch)",
    )
    sub.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (killed, Ctrl-C) from OUT.ckpt after its last finished "
        "epoch, ending with the model an uninterrupted run writes; without a checkpoint, start "
        "from scratch",
    )


def _cmd_train(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.compress.distill import LogitDistillation
    from mobiledl.data import build_task
    from mobiledl.measure import measure_model
    from mobiledl.models import create_model_for_task, load_model, save_model
    from mobiledl.train import TrainConfig, seed_everything, train
    from mobiledl.train.resume import CheckpointError

    checkpoint = checkpoint_path(args.out)
    if checkpoint.exists() and not args.resume:
        raise UserError(
            f"{checkpoint} holds an interrupted training run; pass --resume to continue it or "
            "delete it to start over"
        )
    if args.resume:
        _remove_stale_temp_files(args.out)
    task = build_task(args.task, image_size=args.image_size, seed=args.seed, split=args.split)
    seed_everything(args.seed)  # the initial weights: a resumed run starts from the same ones
    model = create_model_for_task(args.model, task, args.width_mult)
    teacher = load_model(args.teacher).model if args.teacher else None
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
    )
    input_shape = list(task.input_specs()[0].shape[1:])
    meta = {**data_record(args), "input_shape": input_shape}
    partial = partial_path(args.out)

    def on_best(best: torch.nn.Module, epoch: int, val_accuracy: float) -> None:
        save_model(partial, best, {**meta, "epoch": epoch, "val_accuracy": val_accuracy})

    log(f"training {args.model} on {task.name} for {args.epochs} epochs")
    kd = [LogitDistillation(teacher, config.kd_alpha, config.kd_temperature)] if teacher else []
    try:
        with removed_on_error(partial):
            result = train(
                model, task, config, on_best=on_best, extra_loss=kd, checkpoint=checkpoint
            )
    except (CheckpointError, KeyboardInterrupt):
        raise  # not this run's checkpoint, or one to resume from
    except Exception:
        checkpoint.unlink(missing_ok=True)  # a failed run (e.g. diverged) is not resumed
        raise
    measurement = measure_model(model, args.model, task, latency=False, unexportable_ok=True)
    save_model(args.out, model, {**meta, "test_accuracy": measurement.accuracy})
    measurement.extra.update(
        best_val_accuracy=result.best_val_accuracy, best_epoch=result.best_epoch, out=args.out
    )
    partial.unlink(missing_ok=True)
    checkpoint.unlink(missing_ok=True)
    log(f"wrote {args.out}: test accuracy {measurement.accuracy:.4f}")
    return measurement.to_dict() if args.json else None


def checkpoint_path(out: Path) -> Path:
    """Where ``mobiledl train --out OUT`` keeps its epoch checkpoint: ``OUT.ckpt``."""
    return check_output_file(out.with_name(f"{out.name}.ckpt"))


def _remove_stale_temp_files(out: Path) -> None:
    """Delete the temporary files a killed run left beside ``out`` (its model, ``.partial``
    and ``.ckpt`` being written: ``.NAME.XXXX.tmp``)."""
    for name in (out.name, f"{out.name}.partial", f"{out.name}.ckpt"):
        for stale in out.parent.glob(f".{glob.escape(name[:TEMP_NAME_CHARS])}.*.tmp"):
            stale.unlink(missing_ok=True)


# ---------------------------------------------------------------- eval


def _add_eval(commands: argparse._SubParsersAction) -> None:
    sub = add_command(commands, "eval", "measure test accuracy of a .pt or .onnx model", _cmd_eval)
    sub.add_argument("model", type=Path, help="a mobiledl .pt file or an .onnx file")
    add_task_args(sub, required=True)
    sub.add_argument("--no-latency", action="store_true", help="skip the engine benchmark")


def _cmd_eval(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy import artifact_suffixes
    from mobiledl.measure import measure_artifact, measure_model

    if args.model.suffix in artifact_suffixes():
        measurement = measure_artifact(args.model, _artifact_task(args), not args.no_latency)
    else:
        from mobiledl.models import load_model

        loaded = load_model(args.model)
        task = task_for_model(
            args.task, loaded.arch, args.seed, args.model, args.split, loaded.meta
        )
        measurement = measure_model(
            loaded.model, loaded.name, task, latency=not args.no_latency, unexportable_ok=True
        )
    measurement.extra["task"] = args.task
    if args.json:
        return measurement.to_dict()
    print(f"{args.model}: test accuracy {measurement.accuracy:.4f} on {args.task}")
    return None


def _artifact_task(args: argparse.Namespace) -> Any:
    from mobiledl.deploy import engine_for_artifact

    runner = engine_for_artifact(args.model).load(args.model)
    return task_for_specs(args.task, runner.input_specs, args.seed, args.model, args.split)


# ---------------------------------------------------------------- profile


def _add_profile(commands: argparse._SubParsersAction) -> None:
    sub = add_command(
        commands,
        "profile",
        "params, MACs, bytes, peak memory and engine latency of a model",
        _cmd_profile,
    )
    sub.add_argument("model", help="a mobiledl .pt file or a zoo model name")
    add_task_args(sub, required=False)
    sub.add_argument(
        "--input-shape",
        help="for a zoo name, batch first: N,C,H,W for an image model (default 1,3,32,32), "
        "N,L for a token model (default 1,40)",
    )
    sub.add_argument("--num-classes", type=int, default=10, help="for a zoo name (default 10)")
    sub.add_argument("--bits", type=int, default=32, help="precision of weights/activations")
    sub.add_argument("--no-latency", action="store_true", help="skip the engine benchmark")
    sub.add_argument("--threads", type=threads_arg, default=None)
    sub.add_argument("--repeats", type=int, default=50)
    add_engine_arg(sub)


def _cmd_profile(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy import DEFAULT_ENGINE
    from mobiledl.measure import engine_latency
    from mobiledl.profile import profile_model

    model, name, example = _model_and_input(args)
    report = profile_model(model, example, bits=args.bits)
    measurement = report.measurement(name)
    if not args.no_latency:
        log(f"timing in {args.engine or DEFAULT_ENGINE}...")
        latency = engine_latency(
            model,
            example,
            args.engine,
            threads=args.threads,
            repeats=args.repeats,
            unexportable_ok=True,
        )
        measurement = measurement.update(latency)
    measurement.extra["input_shape"] = list(input_tensors(example)[0].shape)
    measurement.extra["layers"] = [layer.to_dict() for layer in report.layers]
    if args.json:
        return measurement.to_dict()
    print(report.table())
    print(_summary_line(measurement))
    return None


def _model_and_input(args: argparse.Namespace) -> tuple[torch.nn.Module, str, Inputs]:
    """A model and an example input from a .pt file or a zoo name plus a shape or task."""
    from mobiledl.data import build_task
    from mobiledl.models import create_model_for_task, example_input_for, load_model

    path = Path(args.model)
    if path.suffix == ".onnx":
        raise UserError(f"{path}: profile takes a mobiledl .pt or a zoo name; bench times .onnx")
    is_file = path.suffix == ".pt" or path.exists()
    _check_input_flags(args, path if is_file else None)
    if is_file:
        loaded = load_model(path)
        return loaded.model, loaded.name, example_input_for(loaded.arch)
    if args.input_shape or not args.task:
        model, batch = _zoo_model_for_shape(args.model, args.num_classes, args.input_shape)
        return model, args.model, example_input_for(model.mobiledl_arch, batch)
    task = build_task(args.task, seed=args.seed, split=args.split)
    return create_model_for_task(args.model, task), args.model, task.example_input(1)


def _zoo_model_for_shape(
    name: str, num_classes: int, text: str | None
) -> tuple[torch.nn.Module, int]:
    """Zoo model ``name`` for inputs of ``--input-shape`` (its kind's default if not given),
    and the batch size that shape asks for."""
    from mobiledl.models import create_model, input_specs, model_info
    from mobiledl.models.inputs import input_args

    kind = input_args(model_info(name).inputs)
    shape = _parse_shape(text, kind.default_shape, kind.shape_help)
    model = create_model(name, num_classes, **kind.from_shape(shape))
    spec = input_specs(model.mobiledl_arch)[0]
    example = torch.empty(shape, dtype=spec.dtype, device="meta")
    check_activation_memory(model, example, f"input shape {shape}")
    return model, shape[0]


def _check_input_flags(args: argparse.Namespace, model_file: Path | None) -> None:
    """At most one source of the input shape: a model file, ``--task`` or ``--input-shape``."""
    if args.input_shape and args.task:
        raise UserError("give --task or --input-shape, not both (the task sets the input shape)")
    if model_file is not None and (args.input_shape or args.task):
        raise UserError(
            f"{model_file} sets its own input shape; --task and --input-shape are for a zoo name"
        )


def _parse_shape(text: str | None, default: tuple[int, ...], dims: str) -> tuple[int, ...]:
    if text is None:
        return default
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        example = ",".join(map(str, default))
        raise UserError(f"--input-shape must be integers like {example}; got '{text}'") from None
    if len(shape) != len(default) or min(shape) < 1:
        raise UserError(
            f"--input-shape must be {len(default)} positive integers {dims}; got '{text}'"
        )
    return shape


def _summary_line(m: Any) -> str:
    parts = [f"params {m.params:,}", f"MACs {m.macs:,}"]
    parts += [f"bytes {m.bytes:,}"] if m.bytes is not None else []
    parts.append(f"peak activation memory {m.peak_memory_bytes:,} B")
    if m.latency_ms_median is not None:
        parts.append(
            f"{m.engine} latency median {m.latency_ms_median:.3f} ms (p90 {m.latency_ms_p90:.3f})"
        )
    return " | ".join(parts)


# ---------------------------------------------------------------- export


def _add_export(commands: argparse._SubParsersAction) -> None:
    sub = add_command(
        commands, "export", "export a mobiledl .pt model to an engine's artifact", _cmd_export
    )
    sub.add_argument("model", type=Path, help="a mobiledl .pt file")
    sub.add_argument(
        "--out",
        type=output_file_arg,
        required=True,
        help="output artifact (.onnx, .xml...; with --engine auto the chosen engine's suffix)",
    )
    add_engine_arg(sub, auto=True)


def _cmd_export(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy import get_engine
    from mobiledl.deploy.compare import AUTO_ENGINE
    from mobiledl.models import input_specs, load_model
    from mobiledl.profile import Measurement

    loaded = load_model(args.model)
    specs = input_specs(loaded.arch)
    extra: dict[str, Any] = {}
    if args.engine == AUTO_ENGINE:
        engine, extra["engine_choice"] = _auto_engine(loaded.model, specs)
        args.out = args.out.with_suffix(engine.suffix)
    else:
        engine = get_engine(args.engine)
    artifact = engine.export(loaded.model, example_from_specs(specs, 1), args.out, specs)
    diff = engine.parity_check(loaded.model, engine.load(artifact), example_from_specs(specs, 4))
    size = engine.artifact_bytes(artifact)
    measurement = Measurement(
        name=loaded.name,
        bytes=size,
        engine=engine.name,
        extra={"artifact": str(artifact), "max_abs_diff": diff, **extra},
    )
    if args.json:
        return measurement.to_dict()
    print(f"wrote {artifact} ({size:,} bytes); max |PyTorch - {engine.name}| = {diff:.2e}")
    return None


def _auto_engine(
    model: torch.nn.Module, specs: Sequence[InputSpec]
) -> tuple[Engine, list[dict[str, Any]]]:
    """The installed engine that runs ``model`` fastest at batch 1 on one thread, said on
    stderr with the latencies it was chosen from."""
    from mobiledl.deploy.compare import choose_engine

    engine, results = choose_engine(model, example_from_specs(specs, 16), specs, progress=log)
    rows = [result.row(1) for result in results]
    timings = ", ".join(f"{row['engine']} {row['latency_ms_median']:.3f} ms" for row in rows)
    log(f"--engine auto: {engine.name} is the fastest here at batch 1, 1 thread ({timings})")
    return engine, rows


# ---------------------------------------------------------------- demo


def _add_demo(commands: argparse._SubParsersAction) -> None:
    sub = add_command(
        commands,
        "demo",
        "train a compact model on digits, profile, export and time it in ONNX Runtime",
        _cmd_demo,
    )
    sub.add_argument(
        "--out", type=output_dir_arg, default=Path("mobiledl-demo"), help="output directory"
    )
    sub.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")


def _cmd_demo(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]] | None:
    from mobiledl.demo import run_demo

    measurements = run_demo(args.out, epochs=args.epochs, progress=not args.json)
    if args.json:
        return [m.to_dict() for m in measurements]
    return None
