"""Fine-grained magnitude pruning of LeNets at >= 90% sparsity, against the dense model.

For each model (LeNet-300-100, LeNet-5), task (digits, mnist1d) and seed the benchmark trains a
dense model, then prunes a copy to the target sparsity with iterative pruning + retraining
(Han et al. 2015) and with automated gradual pruning (Zhu & Gupta 2017), both with global
L1 magnitude ranking and the same fine-tuning budget. It reports test accuracy of both,
sparsity, and the weight bytes dense (fp32) versus in the Deep Compression sparse format
(relative 5-bit indices for fully connected and 4-bit for conv layers, fp32 values; Han et
al. 2016). Target: at most 0.5 points lost against the dense model trained with the same
recipe.

    python -m benchmarks prune_finegrained          # full run, writes benchmarks/results/
    python -m benchmarks prune_finegrained --smoke  # seconds, into a temporary directory
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks import harness
from mobiledl import apply, report_of
from mobiledl.compress.encode import CONV_INDEX_BITS, FC_INDEX_BITS
from mobiledl.compress.prune import PruneConfig
from mobiledl.data import Task, build_task
from mobiledl.models import create_model
from mobiledl.train import TrainConfig, evaluate, train

STEM = "prune_finegrained"
MAX_DROP = 0.005
SPARSE_FORMAT = (
    f"Deep Compression relative index: {FC_INDEX_BITS}-bit gaps fc, {CONV_INDEX_BITS}-bit gaps "
    "conv, fp32 values, filler entries on overflow; biases dense fp32"
)


@dataclass(frozen=True)
class Recipe:
    """Training budget: dense epochs, pruning rounds/events, fine-tuning epochs per round."""

    dense_epochs: int
    steps: int
    finetune_epochs: int
    lr: float = 0.05


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__)
    parser.add_argument("--models", default=None, help="default lenet300,lenet5")
    harness.add_task_arguments(parser, "digits,mnist1d")
    parser.add_argument("--schedules", default=None, help="default iterative,agp")
    parser.add_argument("--seeds", default=None, help="comma-separated model seeds (0,1,2)")
    parser.add_argument("--sparsity", type=float, default=0.92, help="target (default 0.92)")
    args = harness.parse(parser, argv)
    harness.resolve_tasks(args, "digits", "digits,mnist1d")
    smoke = {"models": "lenet300", "schedules": "agp", "seeds": "0"}
    full = {"models": "lenet300,lenet5", "schedules": "iterative,agp"}
    harness.resolve(args, smoke, {**full, "seeds": "0,1,2"})
    args.recipe = Recipe(2, 2, 1) if args.smoke else Recipe(60, 5, 12)
    return args


def finetune_config(recipe: Recipe, seed: int, epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=recipe.lr, seed=seed, progress=False)


def prune_config(schedule: str, sparsity: float, recipe: Recipe, seed: int) -> PruneConfig:
    """Iterative: ``steps`` rounds of ``finetune_epochs``; AGP: the same epochs in one run."""
    epochs = recipe.finetune_epochs * (1 if schedule == "iterative" else recipe.steps)
    return PruneConfig(
        granularity="element",
        criterion="l1",
        sparsity=sparsity,
        scope="global",
        schedule=schedule,
        steps=recipe.steps if schedule == "iterative" else 4 * recipe.steps,
        finetune=finetune_config(recipe, seed, epochs),
    )


def run_seed(
    name: str, task: Task, schedules: list[str], seed: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Train one dense model and prune a copy of it with each schedule."""
    torch.manual_seed(seed)
    dense = create_model(name, task.num_classes, task.in_channels, task.image_size)
    train(dense, task, finetune_config(args.recipe, seed, args.recipe.dense_epochs))
    result: dict[str, Any] = {"seed": seed, "dense_accuracy": evaluate(dense, task, "test")}
    for schedule in schedules:
        start = time.perf_counter()
        pruned = apply(dense, prune_config(schedule, args.sparsity, args.recipe, seed), task)
        report = report_of(pruned).values
        result[schedule] = {
            "accuracy": evaluate(pruned, task, "test"),
            "sparsity": report["sparsity"],
            "layer_sparsity": report["layer_sparsity"],
            "dense_bytes": report["dense_bytes"],
            "sparse_bytes": report["sparse_format_bytes"],
            "seconds": time.perf_counter() - start,
        }
    return result


def summarize(name: str, task: str, schedule: str, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: means over seeds, with the per-seed numbers kept."""
    dense = [s["dense_accuracy"] for s in seeds]
    pruned = [s[schedule]["accuracy"] for s in seeds]
    sparse_bytes = statistics.mean(s[schedule]["sparse_bytes"] for s in seeds)
    drop = statistics.mean(dense) - statistics.mean(pruned)
    last = seeds[-1][schedule]
    return {
        "model": name,
        "task": task,
        "schedule": schedule,
        "seeds": [s["seed"] for s in seeds],
        "dense_accuracy": statistics.mean(dense),
        "pruned_accuracy": statistics.mean(pruned),
        "accuracy_drop_points": 100 * drop,
        "meets_target": drop <= MAX_DROP,
        "sparsity": statistics.mean(s[schedule]["sparsity"] for s in seeds),
        "dense_bytes": last["dense_bytes"],
        "sparse_format_bytes": round(sparse_bytes),
        "compression": last["dense_bytes"] / sparse_bytes,
        "dense_accuracy_per_seed": dense,
        "pruned_accuracy_per_seed": pruned,
        "layer_sparsity_last_seed": last["layer_sparsity"],
        "prune_seconds_mean": statistics.mean(s[schedule]["seconds"] for s in seeds),
    }


def _drop_sd(row: dict[str, Any]) -> float:
    """Standard deviation over seeds of the per-seed accuracy drop, in points."""
    pairs = zip(row["dense_accuracy_per_seed"], row["pruned_accuracy_per_seed"], strict=True)
    drops = [100 * (dense - pruned) for dense, pruned in pairs]
    return statistics.stdev(drops) if len(drops) > 1 else 0.0


def markdown(report: dict[str, Any]) -> str:
    rows, config = report["rows"], report["config"]
    recipe = config["recipe"]
    table = harness.markdown_table(
        ["model", "task", "schedule", "dense acc", "pruned acc", "drop (pts)", "sd", "sparsity",
         "dense bytes", "sparse bytes", "compression", "target met"],
        [
            (r["model"], r["task"], r["schedule"], f"{r['dense_accuracy']:.4f}",
             f"{r['pruned_accuracy']:.4f}", f"{r['accuracy_drop_points']:+.2f}",
             f"{_drop_sd(r):.2f}", f"{r['sparsity']:.3f}", f"{r['dense_bytes']:,}",
             f"{r['sparse_format_bytes']:,}", f"{r['compression']:.1f}x",
             harness.yes(r["meets_target"]))
            for r in rows
        ],
    )  # fmt: skip
    lines = [
        "# Fine-grained pruning of LeNets (target: <= 0.5 points lost at >= 90% sparsity)",
        "",
        f"Global L1 magnitude pruning to {config['sparsity']:.0%} of conv/linear weights. "
        f"Dense: {recipe['dense_epochs']} epochs SGD (lr {recipe['lr']}, cosine). Iterative: "
        f"{recipe['steps']} rounds x {recipe['finetune_epochs']} epochs; AGP: the same "
        f"{recipe['steps'] * recipe['finetune_epochs']} epochs in one run. Accuracies are test "
        f"means over seeds {rows[0]['seeds'] if rows else []}. Bytes: {config['sparse_format']}.",
        "",
        "Noise: one test sample is 0.28 points on digits (359 test samples) and 0.1 on mnist1d "
        "(1,000); 'sd' is the standard deviation over seeds of the per-seed drop.",
        "",
        *table,
        "",
        harness.machine_line(report),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    schedules, seeds = harness.names(args.schedules), [int(s) for s in harness.names(args.seeds)]
    rows = []
    for spec in args.task_specs:
        task = build_task(spec, seed=0, split=args.split)
        for name in harness.names(args.models):
            per_seed = []
            for seed in seeds:
                per_seed.append(run_seed(name, task, schedules, seed, args))
                print(f"{name} {task.name} seed {seed}: {per_seed[-1]}", file=sys.stderr)
            rows += [summarize(name, task.name, s, per_seed) for s in schedules]
    summary = {"rows_meeting_target": sum(r["meets_target"] for r in rows), "rows": len(rows)}
    constants = {"max_drop": MAX_DROP, "sparse_format": SPARSE_FORMAT,
                 "criterion": "l1 (global magnitude ranking), granularity element"}  # fmt: skip
    return harness.write_results(args, rows, summary, markdown, constants=constants)
