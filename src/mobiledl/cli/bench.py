"""``mobiledl bench MODEL [--engine E|E1,E2|all] [--batch N] [--threads N] [--repeats N]``.

An artifact (``.onnx``, OpenVINO's ``.xml``...) is timed in the engine that runs it. A mobiledl
``.pt`` model is exported to each engine asked for (default: the default engine; ``all``: every
installed one), checked against its PyTorch output, and all artifacts are timed interleaved
(``mobiledl.deploy.compare``); the table says which is fastest. ``--json`` prints one
``Measurement`` for one engine, a list for several.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mobiledl.cli.support import add_command, log
from mobiledl.core.inputs import Inputs, InputSpec, example_from_specs, map_inputs
from mobiledl.errors import UserError
from mobiledl.resources import check_fits
from mobiledl.validate import threads_arg

#: Random samples the PyTorch model and each engine are compared on.
CHECK_SAMPLES = 16


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl bench``."""
    from mobiledl.deploy import list_engines

    sub = add_command(
        commands, "bench", "time a model in one engine or compare several", _cmd_bench
    )
    sub.add_argument("model", type=Path, help="an engine artifact (.onnx...) or a mobiledl .pt")
    sub.add_argument(
        "--engine",
        default=None,
        help=f"for a .pt: {', '.join(list_engines())}, a comma-separated list, or all "
        "(default: the default engine)",
    )
    sub.add_argument("--batch", type=int, default=1)
    sub.add_argument("--threads", type=threads_arg, default=None, help="default: all cores")
    sub.add_argument("--repeats", type=int, default=100)
    sub.add_argument("--warmup", type=int, default=10)


def _cmd_bench(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]] | None:
    from mobiledl.deploy import artifact_suffixes

    if args.batch < 1 or args.repeats < 1:
        raise UserError("--batch and --repeats must be >= 1")
    if args.warmup < 0:
        raise UserError("--warmup must be >= 0")
    if args.model.suffix in artifact_suffixes():
        return _bench_artifact(args)
    if not args.model.is_file():
        raise UserError(f"{args.model}: no such file")
    return _bench_model(args)


def _bench_artifact(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy import engine_for_artifact

    engine = engine_for_artifact(args.model)
    if args.engine is not None and args.engine != engine.name:
        raise UserError(
            f"{args.model} is a {engine.name} artifact; --engine {args.engine} needs a .pt model"
        )
    runner = engine.load(args.model, threads=args.threads)
    x = map_inputs(torch.Tensor.numpy, _example(runner.input_specs, args.batch))
    stats = engine.benchmark(runner, x, args.warmup, args.repeats)
    measurement = stats.to_measurement()
    measurement.name = args.model.stem
    if args.json:
        return measurement.to_dict()
    print(
        f"{args.model}: batch {args.batch}, threads {stats.threads}: median "
        f"{stats.median_ms:.3f} ms, p90 {stats.p90_ms:.3f} ms over {stats.repeats} runs"
    )
    return None


def _bench_model(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]] | None:
    from mobiledl.deploy.compare import compare_engines, engines_named, fastest_engine, scratch_dir
    from mobiledl.models import input_specs, load_model
    from mobiledl.profile import Measurement

    engines = engines_named(args.engine)
    loaded = load_model(args.model)
    specs = input_specs(loaded.arch)
    _example(specs, args.batch)  # refuses a batch that does not fit in memory
    with scratch_dir() as workdir:
        results = compare_engines(
            loaded.model,
            example_from_specs(specs, CHECK_SAMPLES),
            engines,
            workdir,
            batch_sizes=(args.batch,),
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            input_specs=specs,
            progress=log,
        )
    rows = [result.row(args.batch) for result in results]
    measurements = [
        Measurement(
            name=args.model.stem,
            bytes=row["bytes"],
            latency_ms_median=row["latency_ms_median"],
            latency_ms_p90=row["latency_ms_p90"],
            engine=row["engine"],
            batch_size=args.batch,
            threads=row["threads"],
            extra={"max_abs_diff": row["max_abs_diff"], "top1_agreement": row["top1_agreement"]},
        ).to_dict()
        for row in rows
    ]
    if args.json:
        return measurements[0] if len(measurements) == 1 else measurements
    print(_table(rows))
    if len(results) > 1:
        print(f"fastest at batch {args.batch}: {fastest_engine(results, args.batch).engine}")
    return None


def _example(specs: Sequence[InputSpec], batch: int) -> Inputs:
    per_sample = sum(math.prod(size or 1 for size in spec.shape[1:]) for spec in specs)
    check_fits(3 * 8 * batch * per_sample, f"--batch {batch}")
    return example_from_specs(specs, batch)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'engine':<14}{'batch':>6}{'median ms':>11}{'p90 ms':>9}{'bytes':>13}"
        f"{'max |diff|':>12}{'top-1 agree':>13}"
    ]
    for row in rows:
        agree = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.1%}"
        lines.append(
            f"{row['engine']:<14}{row['batch_size']:>6}{row['latency_ms_median']:>11.3f}"
            f"{row['latency_ms_p90']:>9.3f}{row['bytes']:>13,}{row['max_abs_diff']:>12.2e}"
            f"{agree:>13}"
        )
    return "\n".join(lines)
