"""What every method command does after building its config: load the model and the task,
``apply`` the method, measure before and after, save, and report.

``mobiledl apply METHOD MODEL --task T --out OUT [flags of METHOD's config]`` reaches every
registered method and every field of its config (the flags are derived from the config class,
``mobiledl.cli.args``); ``mobiledl prune``, ``quantize`` and ``adapt`` are the same flow with
the flags of the command-line contract (DESIGN.md).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from mobiledl.cli.args import add_config_arguments, config_from_args
from mobiledl.cli.support import add_command, add_task_args, data_record, task_for_model
from mobiledl.core.config import MethodConfig
from mobiledl.core.methods import Method, apply, list_methods, report_of
from mobiledl.errors import UserError
from mobiledl.fileio import output_file_arg
from mobiledl.profile import Measurement


def add_apply_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl apply METHOD ...`` with one sub-command per registered method."""
    parser = commands.add_parser(
        "apply",
        help="apply any registered method to a model (flags from the method's config)",
        description="Apply one registered method (see `mobiledl apply --help`) to a model file.",
    )
    methods = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for method in list_methods():
        if method.name == "nas_subnet":  # its input is a supernet file: `mobiledl nas extract`
            continue
        sub = add_command(methods, method.name, method.summary, _cmd_apply)
        add_method_io(sub, method.needs_task)
        add_config_arguments(sub, method.config_type, title=f"{method.name} settings")
        sub.set_defaults(method_object=method)


def add_method_io(
    sub: argparse.ArgumentParser, needs_task: bool = True, artifact_aliases: tuple[str, ...] = ()
) -> None:
    """The model file, task and output arguments every method command takes."""
    sub.add_argument("model", type=Path, help="a mobiledl .pt file")
    add_task_args(sub, required=needs_task)
    sub.add_argument("--out", type=output_file_arg, required=True, help="output model file (.pt)")
    sub.add_argument(
        "--artifact",
        *artifact_aliases,
        dest="artifact",
        type=output_file_arg,
        help="also write the engine's artifact here (e.g. an .onnx file)",
    )
    sub.add_argument("--no-latency", action="store_true", help="skip the engine benchmark")
    sub.add_argument(
        "--keep-float",
        action="store_true",
        help="store binary/ternary latent weights and k-means codebooks as trainable floats "
        "(a file to train further) instead of the packed low-bit weights",
    )


def _cmd_apply(args: argparse.Namespace) -> dict[str, Any] | None:
    method: Method = args.method_object
    config = config_from_args(
        method.config_type, args, values=seed_values(method.config_type, args)
    )
    measurement = run_method_command(args, config)
    return _finish(args, measurement)


def seed_values(config_type: type, args: argparse.Namespace) -> dict[str, Any]:
    """``--seed`` (the task's split) also seeds a method that has a ``seed`` of its own."""
    has_seed = any(f.name == "seed" for f in dataclasses.fields(config_type))
    return {"seed": args.seed} if has_seed else {}


def run_method_command(
    args: argparse.Namespace, config: MethodConfig, meta: dict[str, Any] | None = None
) -> Measurement:
    """Load ``args.model``, apply ``config`` on ``args.task``, measure, save ``args.out``
    (see :func:`measure_and_save`)."""
    start = load_and_measure(args)
    result = apply(start.loaded.model, config, start.task)
    report = report_of(result)
    return measure_and_save(
        args, start, result, config.method, report.values if report else {}, meta
    )


@dataclasses.dataclass
class Start:
    """The input of a method command: the loaded model, its task and its measurement."""

    loaded: Any
    task: Any
    before: Measurement


def load_and_measure(args: argparse.Namespace) -> Start:
    """Load ``args.model`` and its task; measure the model (no latency)."""
    from mobiledl.measure import measure_model
    from mobiledl.models import load_model

    loaded = load_model(args.model)
    task = _task(args, loaded)
    before = measure_model(
        loaded.model, loaded.name, task, latency=False, example_input=_x(task, loaded)
    )
    return Start(loaded, task, before)


def measure_and_save(
    args: argparse.Namespace,
    start: Start,
    result: Any,
    method: str,
    values: dict[str, Any],
    meta: dict[str, Any] | None = None,
) -> Measurement:
    """Measure ``result``, save it at ``args.out`` (frozen unless ``--keep-float``).

    The measurement's ``extra`` holds the method's report ``values``, the input model's
    numbers (``before``), the after/before ratios of MACs, parameters and artifact bytes,
    and the file sizes (:func:`file_sizes`). A report's ``storage_bytes`` (the weights' size
    in a method's own format, e.g. sparse) fills the measurement's when it has no other.
    """
    from mobiledl.measure import measure_model
    from mobiledl.models import save_model

    loaded, task = start.loaded, start.task
    measurement = measure_model(
        result,
        loaded.name,
        task,
        example_input=_x(task, loaded),
        latency=not args.no_latency,
        artifact=args.artifact,
    )
    measurement.extra.update(values)
    if measurement.storage_bytes is None and values.get("storage_bytes") is not None:
        measurement.storage_bytes = values["storage_bytes"]
        measurement.extra.pop("null_fields", None)  # storage_bytes was its only entry
    measurement.extra.update(
        method=method,
        before=_summary(start.before),
        ratios=_ratios(measurement, start.before),
        out=str(args.out),
        artifact=str(args.artifact) if args.artifact else None,
    )
    record = {**data_record(args), "source": str(args.model), **(meta or {})}
    record["test_accuracy"] = measurement.accuracy
    written = save_model(args.out, result, record, frozen=not args.keep_float)
    measurement.extra.update(file_sizes(written, loaded.model, record))
    return measurement


def file_sizes(written: Path, source: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """``model_bytes`` (the model file written), ``fp32_model_bytes`` (the input model's file
    in the same format and metadata) and ``compression``, their ratio."""
    from mobiledl.models.checkpoint import model_file_bytes

    size, reference = written.stat().st_size, len(model_file_bytes(source, meta))
    return {"model_bytes": size, "fp32_model_bytes": reference, "compression": reference / size}


def _task(args: argparse.Namespace, loaded: Any) -> Any:
    if args.task is None:
        return None
    return task_for_model(args.task, loaded.arch, args.seed, args.model, args.split, loaded.meta)


def _x(task: Any, loaded: Any) -> Any:
    from mobiledl.models import example_input_for

    if task is not None:
        return task.example_input(1)
    return example_input_for(loaded.arch)


def _summary(m: Measurement) -> dict[str, Any]:
    keys = ("accuracy", "params", "macs", "bytes", "storage_bytes", "peak_memory_bytes")
    return {key: getattr(m, key) for key in keys}


def _ratios(after: Measurement, before: Measurement) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        new, old = getattr(after, key), getattr(before, key)
        return new / old if new is not None and old else None

    return {key: ratio(key) for key in ("macs", "params", "bytes")}


def _finish(args: argparse.Namespace, measurement: Measurement) -> dict[str, Any] | None:
    if args.json:
        return measurement.to_dict()
    ratios = measurement.extra["ratios"]
    accuracy = "-" if measurement.accuracy is None else f"{measurement.accuracy:.4f}"
    print(
        f"wrote {args.out}: test accuracy {accuracy}, MACs x{_fmt(ratios['macs'])}, "
        f"params x{_fmt(ratios['params'])}, {_artifact_size(measurement)}model file "
        f"{measurement.extra['model_bytes']:,} B ({measurement.extra['compression']:.1f}x "
        "smaller than the input's)"
    )
    return None


def _artifact_size(measurement: Measurement) -> str:
    if measurement.bytes is None:
        return ""
    return f"artifact x{_fmt(measurement.extra['ratios']['bytes'])} ({measurement.bytes:,} B), "


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def unused_flags(args: argparse.Namespace, used: set[str], what: str) -> None:
    """``UserError`` naming a derived flag the user gave that ``what`` does not use."""
    given = {dest for dest in vars(args) if dest.startswith("cfg__")}
    extra = sorted(given - used)
    if extra:
        flag = "--" + extra[0].removeprefix("cfg__").replace("_", "-")
        raise UserError(f"{flag} does not apply to {what}")
