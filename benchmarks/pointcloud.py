"""Point-cloud classifiers on ``shapes3d``: point-only and dense-voxel baselines against the
sparse and point-voxel models, in one table of accuracy, params, MACs, memory and latency.

Qi et al. 2017 (PointNet, the point-only baseline), a dense-voxel 3D CNN (the VoxNet-style
baseline of Liu et al. 2019), a sparse voxel CNN (Graham et al. 2018), PVCNN (Liu et al.
2019, "Point-Voxel CNN for Efficient 3D Deep Learning") and SPVCNN (Tang et al. 2020,
"Searching Efficient 3D Architectures with Sparse Point-Voxel Convolution"), the zoo's
``pointnet``, ``dense_voxel_net``, ``sparse_voxel_net``, ``pvcnn`` and ``spvcnn``, each
trained from scratch with the same epochs, batch and seed on the same generated clouds.
Test accuracy; params, MACs (a sparse convolution's from its actual kernel maps) and peak
activation memory from ``mobiledl.profile``; latency of one cloud in PyTorch (1 thread,
eval, no grad; the sparse models cannot run in ONNX Runtime, see ``docs/pointcloud.md``),
every model timed interleaved with the others.

    python -m benchmarks pointcloud --seeds 0,1,2  # the published table (~15 min on 2 cores)
    python -m benchmarks pointcloud --smoke      # seconds, into a temporary directory
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from benchmarks import harness
from mobiledl.core.task import TensorTask
from mobiledl.data.pointcloud import shapes3d
from mobiledl.models import create_model_for_task
from mobiledl.profile import profile_model
from mobiledl.train import TrainConfig, evaluate, train

STEM = "pointcloud"
BASELINES = ("pointnet", "dense_voxel_net")
EFFICIENT = ("sparse_voxel_net", "pvcnn", "spvcnn")
MODELS = BASELINES + EFFICIENT
BATCH_SIZE = 32


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__, threads=False, clock=True)
    parser.set_defaults(clock="thread")
    parser.add_argument("--epochs", type=harness.positive_int("--epochs"), default=None)
    parser.add_argument("--clouds", type=harness.positive_int("--clouds"), default=None)
    parser.add_argument("--points", type=harness.positive_int("--points"), default=None)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo names")
    harness.add_seeds_argument(parser)
    args = harness.parse(parser, argv)
    args.threads = 1
    smoke = {"epochs": 1, "clouds": 48, "points": 64, "repeats": 3}
    harness.resolve(args, smoke, {"epochs": 10, "clouds": 1200, "points": 256, "repeats": 30})
    args.models = harness.names(args.models)
    return args


def fit(name: str, task: TensorTask, epochs: int, seed: int) -> nn.Module:
    """Zoo model ``name`` trained from scratch on ``task`` (best-on-validation weights)."""
    torch.manual_seed(seed)
    model = create_model_for_task(name, task)
    config = TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, optimizer="adamw", seed=seed,
                         progress=False)  # fmt: skip
    train(model, task, config)
    return model.eval()


def row(
    name: str, task: TensorTask, epochs: int, seeds: Sequence[int]
) -> tuple[dict[str, Any], nn.Module]:
    """``name`` trained once per seed: test accuracy of each (mean and standard deviation),
    params, MACs and peak memory of one cloud; and the first seed's model, the one timed."""
    models = [fit(name, task, epochs, seed) for seed in seeds]
    accuracies = [evaluate(model, task, "test") for model in models]
    profile = profile_model(models[0], task.example_input(1))
    return {
        "model": name,
        "accuracy": statistics.mean(accuracies),
        "accuracy_std": statistics.pstdev(accuracies),
        "accuracies": accuracies,
        "seeds": list(seeds),
        "params": profile.params,
        "macs": profile.macs,
        "peak_memory_bytes": profile.peak_memory_bytes,
    }, models[0]


def calls(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, Callable[[], object]]:
    def call(model: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return model(x)

        return run

    return {name: call(model) for name, model in models.items()}


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's bar per sparse / point-voxel model: accuracy >= both baselines' and lower
    latency or peak memory than the cheaper baseline."""
    by = {r["model"]: r for r in rows}
    baselines = [by[name] for name in BASELINES if name in by]
    if not baselines:
        return {"checks": []}
    best = max(r["accuracy"] for r in baselines)
    fastest = min(r["latency"]["median_ms"] for r in baselines)
    smallest = min(r["peak_memory_bytes"] for r in baselines)
    out = []
    for name in EFFICIENT:
        if name in by:
            r = by[name]
            cheaper = r["latency"]["median_ms"] < fastest or r["peak_memory_bytes"] < smallest
            out.append({"model": name, "accuracy_ge_baselines": r["accuracy"] >= best,
                        "lower_latency_or_memory": cheaper,
                        "met": r["accuracy"] >= best and cheaper})  # fmt: skip
    return {"checks": out}


def accuracy_text(r: dict[str, Any]) -> str:
    """Mean test accuracy, with its standard deviation over seeds when there are several."""
    spread = f" ± {100 * r['accuracy_std']:.2f}" if len(r["seeds"]) > 1 else ""
    return harness.pct(r["accuracy"]) + spread


def markdown(report: dict[str, Any]) -> str:
    config = report["config"]
    table = harness.markdown_table(
        ["model", "test accuracy", "params", "MACs", "peak memory (kB)", "latency ms (p90)"],
        [
            (r["model"], accuracy_text(r), f"{r['params']:,}", f"{r['macs']:,}",
             f"{r['peak_memory_bytes'] / 1000:.1f}",
             f"{r['latency']['median_ms']:.2f} ({r['latency']['p90_ms']:.2f})")
            for r in report["rows"]
        ],
        align="lrrrrr",
    )  # fmt: skip
    lines = [
        "# Point-cloud classification on shapes3d",
        "",
        f"{config['clouds']} clouds of {config['points']} points (train/val/test 60/20/20), "
        f"{config['epochs']} epochs, batch {BATCH_SIZE}, AdamW, data seed {config['seed']}, "
        f"training seeds {', '.join(map(str, config['seeds']))} (test accuracy: mean ± standard "
        "deviation over them; the rest from the first seed's model). MACs and "
        "peak activation memory of one cloud (sparse convolutions counted from their kernel "
        f"maps); latency of one cloud in PyTorch, 1 thread, median (p90) of "
        f"{config['repeats']} interleaved calls, {harness.clock_text(config['clock'])}."
        + (" SMOKE RUN: numbers are meaningless." if config["smoke"] else ""),  # fmt: skip
        "",
        *table,
        "",
        *(
            f"- {c['model']}: accuracy >= baselines {harness.yes(c['accuracy_ge_baselines'])}; "
            f"lower latency or memory {harness.yes(c['lower_latency_or_memory'])}"
            for c in report["summary"]["checks"]
        ),  # fmt: skip
        "",
        harness.machine_line(report),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Train, profile and time every model; write JSON + markdown."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    task = shapes3d(seed=args.seed, clouds=args.clouds, points=args.points)
    trained = [row(name, task, args.epochs, args.seeds) for name in args.models]
    rows = [r for r, _ in trained]
    models = {r["model"]: model for r, model in trained}
    cells = harness.interleaved(calls(models, task.example_input(1)), repeats=args.repeats,
                                warmup=2, clock=args.clock, threads=1)  # fmt: skip
    for r in rows:
        r["latency"] = cells[r["model"]]
    return harness.write_results(args, rows, checks(rows), markdown,
                                 constants={"batch_size": BATCH_SIZE})  # fmt: skip
