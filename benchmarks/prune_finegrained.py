"""Fine-grained magnitude pruning of LeNets at >= 90% sparsity, against the dense model.

For each model (LeNet-300-100, LeNet-5), task (digits, mnist1d) and seed the script trains a
dense model, then prunes a copy to the target sparsity with iterative pruning + retraining
(Han et al. 2015) and with automated gradual pruning (Zhu & Gupta 2017), both with global
L1 magnitude ranking and the same fine-tuning budget. It reports test accuracy of both,
sparsity, and the weight bytes dense (fp32) versus in the Deep Compression sparse format
(relative 5-bit indices for fully connected and 4-bit for conv layers, fp32 values; Han et
al. 2016). Target: at most 0.5 points lost against the dense model trained with the same
recipe. Writes ``results/prune_finegrained.json`` and ``.md``.

    python benchmarks/prune_finegrained.py                    # full run, real results
    python benchmarks/prune_finegrained.py --smoke --out tmp  # quick check, elsewhere
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402

from mobiledl.compress.encode import (  # noqa: E402
    CONV_INDEX_BITS,
    FC_INDEX_BITS,
    model_storage,
)
from mobiledl.compress.prune import PruneConfig, layer_sparsity, prune, sparsity_of  # noqa: E402
from mobiledl.data import Task, build_task  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model  # noqa: E402
from mobiledl.train import TrainConfig, evaluate, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "prune_finegrained"
MAX_DROP = 0.005


@dataclass(frozen=True)
class Recipe:
    """Training budget: dense epochs, pruning rounds/events, fine-tuning epochs per round."""

    dense_epochs: int
    steps: int
    finetune_epochs: int
    lr: float = 0.05


RECIPES = {"full": Recipe(60, 5, 12), "smoke": Recipe(2, 2, 1)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--tasks", default="digits,mnist1d")
    parser.add_argument("--schedules", default="iterative,agp")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated model seeds")
    parser.add_argument("--sparsity", type=float, default=0.92, help="target (default 0.92)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--smoke", action="store_true", help="lenet300 on digits, tiny epochs")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.tasks, args.schedules, args.seeds = "lenet300", "digits", "agp", "0"
    args.recipe = RECIPES["smoke" if args.smoke else "full"]
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
        config = prune_config(schedule, args.sparsity, args.recipe, seed)
        pruned = prune(copy.deepcopy(dense), config, task)
        storage = model_storage(pruned)
        result[schedule] = {
            "accuracy": evaluate(pruned, task, "test"),
            "sparsity": sparsity_of(pruned),
            "layer_sparsity": layer_sparsity(pruned),
            "dense_bytes": storage.dense_bytes,
            "sparse_bytes": storage.sparse_bytes,
            "seconds": time.perf_counter() - start,
        }
    return result


def summarize(name: str, task: str, schedule: str, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row: means over seeds, with the per-seed numbers kept."""
    dense = [s["dense_accuracy"] for s in seeds]
    pruned = [s[schedule]["accuracy"] for s in seeds]
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
        "sparse_format_bytes": round(statistics.mean(s[schedule]["sparse_bytes"] for s in seeds)),
        "compression": last["dense_bytes"]
        / statistics.mean(s[schedule]["sparse_bytes"] for s in seeds),
        "dense_accuracy_per_seed": dense,
        "pruned_accuracy_per_seed": pruned,
        "layer_sparsity_last_seed": last["layer_sparsity"],
        "prune_seconds_mean": statistics.mean(s[schedule]["seconds"] for s in seeds),
    }


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "smoke": args.smoke,
        "target_sparsity": args.sparsity,
        "recipe": vars(args.recipe),
        "criterion": "l1 (global magnitude ranking), granularity element",
        "sparse_format": f"Deep Compression relative index: {FC_INDEX_BITS}-bit gaps fc, "
        f"{CONV_INDEX_BITS}-bit gaps conv, fp32 values, filler entries on overflow; biases "
        "dense fp32",
    }


def to_markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    recipe = info["recipe"]
    lines = [
        "# Fine-grained pruning of LeNets (target: <= 0.5 points lost at >= 90% sparsity)",
        "",
        f"Global L1 magnitude pruning to {info['target_sparsity']:.0%} of conv/linear weights. "
        f"Dense: {recipe['dense_epochs']} epochs SGD (lr {recipe['lr']}, cosine). Iterative: "
        f"{recipe['steps']} rounds x {recipe['finetune_epochs']} epochs; AGP: the same "
        f"{recipe['steps'] * recipe['finetune_epochs']} epochs in one run. Accuracies are test "
        "means over seeds "
        f"{rows[0]['seeds'] if rows else []}. Bytes: {info['sparse_format']}.",
        "",
        "Noise: one test sample is 0.28 points on digits (359 test samples) and 0.1 on mnist1d "
        "(1,000); 'sd' is the standard deviation over seeds of the per-seed drop.",
        "",
        "| model | task | schedule | dense acc | pruned acc | drop (pts) | sd | sparsity "
        "| dense bytes | sparse bytes | compression | target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['schedule']} | {r['dense_accuracy']:.4f} "
            f"| {r['pruned_accuracy']:.4f} | {r['accuracy_drop_points']:+.2f} | {_drop_sd(r):.2f} "
            f"| {r['sparsity']:.3f} | {r['dense_bytes']:,} | {r['sparse_format_bytes']:,} "
            f"| {r['compression']:.1f}x | {'yes' if r['meets_target'] else 'NO'} |"
        )
    lines += [
        "",
        f"Machine: {info['cpu_count']} cores, torch {info['torch']}, {info['threads']} thread(s); "
        f"{info['date']}.",
    ]
    return "\n".join(lines) + "\n"


def _drop_sd(row: dict[str, Any]) -> float:
    """Standard deviation over seeds of the per-seed accuracy drop, in points."""
    pairs = zip(row["dense_accuracy_per_seed"], row["pruned_accuracy_per_seed"], strict=True)
    drops = [100 * (dense - pruned) for dense, pruned in pairs]
    return statistics.stdev(drops) if len(drops) > 1 else 0.0


def run(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    out = args.out or (Path(tempfile.mkdtemp(prefix="mobiledl-bench-")) if args.smoke else RESULTS)
    schedules = args.schedules.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for task_name in args.tasks.split(","):
        task = build_task(task_name, seed=0)
        for name in args.models.split(","):
            per_seed = []
            for seed in seeds:
                per_seed.append(run_seed(name, task, schedules, seed, args))
                print(f"{name} {task_name} seed {seed}: {per_seed[-1]}", file=sys.stderr)
            rows += [summarize(name, task_name, s, per_seed) for s in schedules]
    info = machine_info(args)
    json_path = write_json_atomic(out / f"{STEM}.json", {"machine": info, "rows": rows})
    write_text_atomic(out / f"{STEM}.md", to_markdown(rows, info))
    return json_path


def main(argv: Sequence[str] | None = None) -> int:
    path = run(parse_args(argv))
    print(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
