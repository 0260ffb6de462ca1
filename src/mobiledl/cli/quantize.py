"""``mobiledl quantize MODEL --task TASK --method ptq|qat|kmeans|binary|ternary --bits B
[--per-channel] [--observer O] --out q.pt [--onnx q.onnx] [--json]``.

Each method's flags are derived from its config class (``QuantConfig``, ``QATConfig``,
``KMeansConfig``, ``BinaryConfig``, ``TernaryConfig``); flags that mean the same in several
methods are shared: ``--bits`` is the weight width of PTQ, QAT and k-means, ``--epochs`` the
training epochs of QAT, binary and ternary.
"""

from __future__ import annotations

import argparse
from typing import Any

from mobiledl.cli.args import add_config_arguments, config_field_paths, config_from_args, dest_of
from mobiledl.cli.args import flag_for as derived_flag
from mobiledl.cli.methods import _finish, add_method_io, run_method_command, unused_flags
from mobiledl.cli.support import add_command
from mobiledl.errors import UserError

METHODS = ("ptq", "qat", "kmeans", "binary", "ternary")
#: The weight width binary and ternary weights have.
FIXED_BITS = {"binary": 1, "ternary": 2}


def _renames() -> dict[str, dict[str, str]]:
    """Per method, the flag of each field path where it differs from the derived name."""
    from mobiledl.compress.quantize.config import QuantConfig

    quant = {f"quant.{path}": _ptq_flag(path) for path in config_field_paths(QuantConfig)}
    training = {"train.epochs": "--epochs"}
    return {
        "ptq": {"weight_bits": "--bits"},
        "qat": {**quant, "algorithm": "--qat-method", **training},
        "kmeans": {},
        "binary": training,
        "ternary": {**training, "algorithm": "--ternary-method"},
    }


def _ptq_flag(path: str) -> str:
    return "--bits" if path == "weight_bits" else derived_flag(path)


def _config_types() -> dict[str, type]:
    from mobiledl.compress.quantize import config

    return {
        "ptq": config.QuantConfig,
        "qat": config.QATConfig,
        "kmeans": config.KMeansConfig,
        "binary": config.BinaryConfig,
        "ternary": config.TernaryConfig,
    }


def add_quantize_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl quantize``."""
    sub = add_command(
        commands,
        "quantize",
        "quantize a model: linear PTQ / QAT (int8 engine graph), k-means, binary, ternary",
        _cmd_quantize,
    )
    add_method_io(sub, needs_task=True, artifact_aliases=("--onnx",))
    sub.add_argument("--method", default="ptq", help=f"{', '.join(METHODS)} (default ptq)")
    renames = _renames()
    for method, config_type in _config_types().items():
        aliases = {"weight_bits": ["--weight-bits"]} if method == "ptq" else None
        add_config_arguments(
            sub, config_type, renames=renames[method], aliases=aliases, title=f"{method} settings"
        )


def quantize_config(args: argparse.Namespace) -> Any:
    """The config of ``--method`` from the flags given (others keep the config's defaults)."""
    if args.method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}; got '{args.method}'")
    config_type, renames = _config_types()[args.method], _renames()[args.method]
    bits_dest = dest_of("--bits")
    fixed = FIXED_BITS.get(args.method)
    if fixed is not None and hasattr(args, bits_dest):
        given = getattr(args, bits_dest)
        if given != fixed:
            raise UserError(f"--method {args.method} has {fixed}-bit weights; got --bits {given}")
        delattr(args, bits_dest)
    used = {dest_of(derived_flag(p, renames)) for p in config_field_paths(config_type)}
    unused_flags(args, used, f"--method {args.method}")
    values = {path: not args.json for path in _progress_paths(config_type)}
    return config_from_args(config_type, args, renames=renames, values=values)


def _progress_paths(config_type: type) -> list[str]:
    return [p for p in config_field_paths(config_type) if p.endswith(".progress")]


def _cmd_quantize(args: argparse.Namespace) -> dict[str, Any] | None:
    config = quantize_config(args)
    bits = FIXED_BITS.get(args.method) or _weight_bits(config)
    info = {
        "method": args.method,
        "bits": bits,
        "onnx": str(args.artifact) if args.artifact else None,
    }
    measurement = run_method_command(args, config, {"quantization": info})
    measurement.extra.update(
        info, float_accuracy=measurement.extra["before"]["accuracy"], precision_bits=bits
    )
    return _finish(args, measurement)


def _weight_bits(config: Any) -> int:
    for name in ("weight_bits", "bits"):
        if hasattr(config, name):
            return int(getattr(config, name))
    return int(config.quant.weight_bits)
