"""``mobiledl nas train|search``: train a once-for-all supernet, search it under a budget.

mobiledl nas train --task mnist1d --out supernet.pt
mobiledl nas search --supernet supernet.pt --task mnist1d --latency-ms 0.2 --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from mobiledl.cli.support import add_command, add_task_args, data_record, log
from mobiledl.errors import UserError
from mobiledl.fileio import output_dir_arg, output_file_arg


def add_nas_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl nas`` with its ``train`` and ``search`` sub-commands."""
    nas = commands.add_parser(
        "nas",
        help="once-for-all supernet training and architecture search",
        description="Once-for-all supernet (Cai et al. 2020) training and search.",
    )
    actions = nas.add_subparsers(dest="nas_command", required=True, metavar="ACTION")
    _add_train(actions)
    _add_search(actions)
    _add_extract(actions)


def _add_train(actions: argparse._SubParsersAction) -> None:
    sub = add_command(actions, "train", "train a supernet by progressive shrinking", _cmd_train)
    add_task_args(sub, required=True)
    sub.add_argument("--space", choices=["default", "tiny"], default="default")
    sub.add_argument(
        "--init", type=Path, help="continue from this supernet file (its space is kept)"
    )
    sub.add_argument(
        "--resolutions",
        help="input resolutions, e.g. 12,16 or 1x32,1x40 (default: 0.6, 0.8, 1.0 of the input)",
    )
    sub.add_argument("--full-epochs", type=int, default=15)
    sub.add_argument("--kernel-epochs", type=int, default=6)
    sub.add_argument("--depth-epochs", type=int, default=6)
    sub.add_argument("--expand-epochs", type=int, default=6)
    sub.add_argument("--batch-size", type=int, default=128)
    sub.add_argument("--lr", type=float, default=0.1, help="learning rate of the full network")
    sub.add_argument("--shrink-lr", type=float, default=0.03, help="learning rate afterwards")
    sub.add_argument("--sandwich", type=int, default=1, help="random sub-networks per step")
    sub.add_argument("--threads", type=int, default=1, help="PyTorch threads (default 1)")
    sub.add_argument(
        "--out", type=output_file_arg, required=True, help="output supernet file (.pt)"
    )


def _add_search(actions: argparse._SubParsersAction) -> None:
    sub = add_command(actions, "search", "search a supernet under a budget", _cmd_search)
    sub.add_argument("--supernet", type=Path, required=True, help="from `mobiledl nas train`")
    add_task_args(sub, required=True)
    sub.add_argument("--latency-ms", type=float, help="ONNX Runtime latency budget (1 thread)")
    sub.add_argument("--macs", type=float, help="MAC budget")
    sub.add_argument("--peak-memory-kb", type=float, help="peak activation memory budget")
    sub.add_argument(
        "--strategy", choices=["evolution", "random", "pareto", "proxyless"], default="evolution"
    )
    sub.add_argument("--predictor-samples", type=int, default=120)
    sub.add_argument("--latency-samples", type=int, default=40)
    sub.add_argument("--population", type=int, default=100)
    sub.add_argument("--generations", type=int, default=30)
    sub.add_argument("--random-samples", type=int, default=1000)
    sub.add_argument("--proxyless-steps", type=int, default=150)
    sub.add_argument("--top-k", type=int, default=5, help="finalists measured at the end")
    sub.add_argument("--timing-repeats", type=int, default=60, help="timed calls per model")
    sub.add_argument("--latency-model", type=Path, help="reuse a latency_model.json")
    sub.add_argument("--ray", action="store_true", help="evaluate on a local Ray started here")
    sub.add_argument("--ray-address", help="evaluate on the Ray cluster at this address")
    sub.add_argument("--ray-cpus", type=int, default=2, help="CPUs of a local Ray (default 2)")
    sub.add_argument("--out", type=output_dir_arg, required=True, help="output directory")


# ---------------------------------------------------------------- train


def parse_resolutions(text: str | None, input_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """``12,16`` (square) or ``1x32,1x40``; by default 0.6, 0.8 and 1.0 of the input size."""
    if not text:
        sizes = {tuple(max(1, round(s * f)) for s in input_size) for f in (0.6, 0.8, 1.0)}
        return tuple(sorted(sizes))
    out = []
    for part in text.split(","):
        try:
            dims = [int(v) for v in part.strip().lower().split("x")]
        except ValueError:
            raise UserError(f"--resolutions: '{part}' is not like 16 or 1x40") from None
        if len(dims) not in (1, 2) or min(dims) < 1:
            raise UserError(f"--resolutions: '{part}' is not like 16 or 1x40")
        out.append((dims[0], dims[-1]))
    return tuple(sorted(set(out)))


def _cmd_train(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.automl.nas.elastic import OFASupernet
    from mobiledl.automl.nas.evaluate import EvalSpec, LocalEvaluator
    from mobiledl.automl.nas.space import default_space, tiny_space
    from mobiledl.automl.nas.store import load_supernet, save_supernet
    from mobiledl.automl.nas.train import ShrinkConfig, progressive_shrink
    from mobiledl.data import build_task

    if args.threads < 1:
        raise UserError(f"--threads must be >= 1; got {args.threads}")
    task = build_task(args.task, seed=args.seed, split=args.split)
    resolutions = parse_resolutions(args.resolutions, task.image_size)
    space = (tiny_space if args.space == "tiny" else default_space)(resolutions)
    config = ShrinkConfig(
        full_epochs=args.full_epochs,
        kernel_epochs=args.kernel_epochs,
        depth_epochs=args.depth_epochs,
        expand_epochs=args.expand_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        shrink_lr=args.shrink_lr,
        sandwich=args.sandwich,
        seed=args.seed,
        progress=False,
    )
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.init is not None:
        supernet = load_supernet(args.init).supernet
        _check_task(supernet, task, args)
        space = supernet.space
    else:
        supernet = OFASupernet(space, task.num_classes, task.in_channels, task.image_size)
    started = time.perf_counter()
    history = progressive_shrink(supernet, task, config).history
    seconds = time.perf_counter() - started
    evaluate = LocalEvaluator(supernet, task, EvalSpec(args.seed))
    largest, smallest = evaluate([space.largest(), space.smallest()])
    meta = {
        "task": args.task,
        "seed": args.seed,
        "config": dataclasses.asdict(config),
        "init": None if args.init is None else str(args.init),
        "history": history,
        "seconds": seconds,
        "val_accuracy": {"largest": largest, "smallest": smallest},
    }
    save_supernet(args.out, supernet, meta)
    log(f"wrote {args.out}: val accuracy largest {largest:.4f}, smallest {smallest:.4f}")
    if not args.json:
        return None
    summary = {k: v for k, v in meta.items() if k != "history"}
    return {"supernet": str(args.out), "space": space.to_dict(), **summary}


# ---------------------------------------------------------------- extract


def _add_extract(actions: argparse._SubParsersAction) -> None:
    from mobiledl.automl.nas.methods import SubnetConfig
    from mobiledl.cli.args import add_config_arguments

    sub = add_command(
        actions, "extract", "extract one sub-network of a supernet as a model file", _cmd_extract
    )
    sub.add_argument("--supernet", type=Path, required=True, help="from `mobiledl nas train`")
    add_task_args(sub, required=False)
    sub.add_argument("--out", type=output_file_arg, required=True, help="output model file (.pt)")
    add_config_arguments(sub, SubnetConfig, skip=("seed",), title="sub-network")


def _cmd_extract(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl import apply, report_of
    from mobiledl.automl.nas.methods import SubnetConfig
    from mobiledl.automl.nas.store import load_supernet
    from mobiledl.cli.args import config_from_args
    from mobiledl.data import build_task
    from mobiledl.measure import measure_model
    from mobiledl.models import save_model

    config = config_from_args(SubnetConfig, args, values={"seed": args.seed})
    supernet = load_supernet(args.supernet).supernet
    task = build_task(args.task, seed=args.seed, split=args.split) if args.task else None
    if task is not None:
        _check_task(supernet, task, args)
    subnet = apply(supernet, config, task)
    label = report_of(subnet).values["label"]
    example = (
        task.example_input(1)
        if task
        else torch.randn(1, supernet.in_channels, *supernet.input_size)
    )
    measurement = measure_model(subnet, label, task, example_input=example, latency=False)
    measurement.extra.update(report_of(subnet).values, out=str(args.out))
    save_model(args.out, subnet, {**data_record(args), "supernet": str(args.supernet)})
    log(f"wrote {args.out}: {label}")
    return measurement.to_dict() if args.json else None


# ---------------------------------------------------------------- search


def _constraints(args: argparse.Namespace) -> Any:
    from mobiledl.automl.nas.search import Constraints

    if args.latency_ms is None and args.macs is None and args.peak_memory_kb is None:
        raise UserError("give a budget: --latency-ms, --macs or --peak-memory-kb")
    macs = None if args.macs is None else int(args.macs)
    return Constraints(args.latency_ms, macs, args.peak_memory_kb)


def _search_config(args: argparse.Namespace) -> Any:
    from mobiledl.automl.nas.proxyless import ProxylessConfig
    from mobiledl.automl.nas.run import SearchConfig
    from mobiledl.automl.nas.search import EvolutionConfig

    return SearchConfig(
        strategy=args.strategy,
        predictor_samples=args.predictor_samples,
        latency_samples=args.latency_samples,
        evolution=EvolutionConfig(population=args.population, generations=args.generations),
        random_samples=args.random_samples,
        proxyless=ProxylessConfig(steps=args.proxyless_steps, seed=args.seed),
        top_k=args.top_k,
        seed=args.seed,
    )


def _cmd_search(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.automl.nas.efficiency import CostTable
    from mobiledl.automl.nas.search import check_budget
    from mobiledl.automl.nas.store import load_supernet
    from mobiledl.data import build_task

    constraints, config = _constraints(args), _search_config(args)
    if args.timing_repeats < 1:
        raise UserError(f"--timing-repeats must be >= 1; got {args.timing_repeats}")
    supernet = load_supernet(args.supernet).supernet
    task = build_task(args.task, seed=args.seed, split=args.split)
    _check_task(supernet, task, args)
    check_budget(CostTable(supernet), constraints)
    latency = _latency_model(supernet, args, config.seed)
    with _evaluator(supernet, task, args) as evaluator:
        from mobiledl.automl.nas.run import run_search

        result = run_search(supernet, task, constraints, latency, evaluator, config)
    measurement = _finish(supernet, task, result, constraints, latency, args)
    if args.json:
        return measurement
    print(
        f"chosen {result.best.arch.label()}: test accuracy {measurement['accuracy']:.4f}, "
        f"latency {measurement['latency_ms_median']:.3f} ms; wrote {args.out}"
    )
    return None


def _check_task(supernet: Any, task: Any, args: argparse.Namespace) -> None:
    expected = (supernet.in_channels, *supernet.input_size)
    if tuple(task.input_shape) != expected or task.num_classes != supernet.num_classes:
        source = getattr(args, "supernet", None) or args.init
        raise UserError(
            f"{source} was trained on inputs {list(expected)} with "
            f"{supernet.num_classes} classes; task '{args.task}' has {list(task.input_shape)} "
            f"and {task.num_classes}"
        )


def _latency_model(supernet: Any, args: argparse.Namespace, seed: int) -> Any:
    from mobiledl.automl.nas.efficiency import LatencyPredictor, TimingConfig
    from mobiledl.automl.nas.run import fit_latency_model
    from mobiledl.fileio import write_json_atomic

    if args.latency_model is not None:
        try:
            data = json.loads(args.latency_model.read_text())
            return LatencyPredictor.from_dict(data["predictor"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{args.latency_model}: not a latency model ({exc})") from None
    timing = TimingConfig(warmup=min(10, args.timing_repeats), repeats=args.timing_repeats)
    predictor, stats = fit_latency_model(supernet, args.latency_samples, seed, timing)
    write_json_atomic(
        args.out / "latency_model.json", {"predictor": predictor.to_dict(), "fit": stats}
    )
    return predictor


def _evaluator(supernet: Any, task: Any, args: argparse.Namespace) -> Any:
    from contextlib import nullcontext

    from mobiledl.automl.nas.evaluate import EvalSpec, LocalEvaluator, RayEvaluator

    spec = EvalSpec(args.seed)
    if args.ray or args.ray_address:
        log(f"evaluating on Ray ({args.ray_address or 'local'})")
        return RayEvaluator(supernet, task, spec, args.ray_address, args.ray_cpus)
    return nullcontext(LocalEvaluator(supernet, task, spec))


def _finish(
    supernet: Any,
    task: Any,
    result: Any,
    constraints: Any,
    latency: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Extract, recalibrate and measure the winner; write model, ONNX, report and JSON."""
    from mobiledl.automl.nas.efficiency import TimingConfig, measure_latency
    from mobiledl.automl.nas.evaluate import EvalSpec
    from mobiledl.automl.nas.extract import calibration_indices, extract_subnet, recalibrate_bn
    from mobiledl.automl.nas.report import search_history, write_search_report
    from mobiledl.deploy import get_engine
    from mobiledl.fileio import write_json_atomic
    from mobiledl.models import save_model
    from mobiledl.profile import profile_model
    from mobiledl.train import evaluate

    arch, spec = result.best.arch, EvalSpec(args.seed)
    index = calibration_indices(len(task.x_train), spec.calibration_size, spec.seed)
    model = recalibrate_bn(extract_subnet(supernet, arch), task.x_train[index])
    example = task.example_input(1)
    timing = TimingConfig(warmup=min(10, args.timing_repeats), repeats=args.timing_repeats)
    measured_ms = measure_latency([model], tuple(example.shape), timing)[0]
    measurement = profile_model(model, example).measurement(arch.label())
    measurement.accuracy = evaluate(model, task, "test")
    measurement.latency_ms_median = measured_ms
    engine = get_engine()
    measurement.engine, measurement.batch_size, measurement.threads = engine.name, 1, 1
    files = {
        "model": str(args.out / "subnet.pt"),
        "onnx": str(args.out / f"subnet{engine.suffix}"),
        "report": str(args.out / "report.html"),
        "search": str(args.out / "search.json"),
    }
    measurement.extra.update(
        arch=arch.to_dict(),
        val_accuracy=result.best_val_accuracy,
        predicted_latency_ms=latency.predict(supernet, arch),
        constraints=constraints.to_dict(),
        strategy=args.strategy,
        files=files,
    )
    meta = {**data_record(args), "test_accuracy": measurement.accuracy}
    save_model(files["model"], model, meta)
    engine.export(model, example, files["onnx"])
    chosen = {k: v for k, v in measurement.to_dict().items() if not isinstance(v, dict)}
    write_search_report(files["report"], result, constraints, chosen)
    data = measurement.to_dict()
    history = search_history(result, constraints)
    write_json_atomic(
        files["search"], {"chosen": data, "search": result.to_dict(), "history": history}
    )
    log(f"wrote {args.out}: {arch.label()}")
    return data
