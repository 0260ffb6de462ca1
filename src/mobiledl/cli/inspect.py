"""``mobiledl inspect MODEL [--engine E] [--batch N] [--threads N] [--top N] [--json]``.

Runs the model in the engine's own profiler and prints the slowest layers: each engine kernel
traced back to the PyTorch module it came from (fused and int8 kernels included), its time,
MACs, achieved MACs/s and bytes moved, then the totals against the end-to-end latency.
``--json`` prints every row (``mobiledl.deploy.profiling``, ``mobiledl.profile.engine_profile``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mobiledl.cli.support import add_command, add_engine_arg, log
from mobiledl.errors import UserError
from mobiledl.validate import non_negative_int_arg, positive_int_arg, threads_arg


def add_inspect_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl inspect``."""
    sub = add_command(
        commands,
        "inspect",
        "per-layer time in the engine's profiler, mapped back to the model's modules",
        _cmd_inspect,
    )
    sub.add_argument("model", type=Path, help="a mobiledl .pt file or an .onnx file")
    add_engine_arg(sub)
    sub.add_argument("--batch", type=positive_int_arg, default=1, help="batch size (default 1)")
    sub.add_argument("--threads", type=threads_arg, default=1, help="intra-op threads (default 1)")
    sub.add_argument("--warmup", type=non_negative_int_arg, default=10, help="untimed runs")
    sub.add_argument("--repeats", type=positive_int_arg, default=100, help="profiled runs")
    sub.add_argument("--top", type=positive_int_arg, default=15, help="rows printed (default 15)")


def _cmd_inspect(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy import artifact_suffixes
    from mobiledl.deploy.profiling import inspect_model, profile_artifact, profiling_engine

    engine = profiling_engine(args.engine)
    if not args.model.exists():
        raise UserError(f"{args.model}: no such file")
    if not args.model.is_file():
        raise UserError(f"{args.model}: not a file")
    settings = {
        "batch_size": args.batch,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "engine": engine.name,
    }
    log(f"profiling {args.model} in {engine.name}: batch {args.batch}, {args.repeats} runs")
    if args.model.suffix in artifact_suffixes():
        profile = profile_artifact(args.model, **settings)
    else:
        from mobiledl.models import example_input_for, load_model

        loaded = load_model(args.model)
        example = example_input_for(loaded.arch)
        profile = inspect_model(loaded.model, example, name=args.model.stem, **settings)
    if args.json:
        return profile.measurement().to_dict()
    print(f"{args.model}: {profile.engine}, batch {profile.batch_size}, threads {args.threads}")
    print(profile.table(args.top))
    return None
