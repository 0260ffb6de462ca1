"""Knowledge distillation: does a half-width student learn better from the full model?

On MNIST-1D (Greydanus 2020), a ResNet-20 teacher is trained once; then the same
half-width student (``width_mult=0.5``) is trained from scratch with an identical budget
(epochs, optimizer, learning rate, batch size, data order) in three ways, for each seed:

- ``none``: cross-entropy only;
- ``logits``: Hinton et al. 2015 logit distillation (alpha 0.9, T 4);
- ``logits+attention``: plus attention transfer on the three stage outputs (Zagoruyko and
  Komodakis 2017, beta 1000).

The target: the mean test accuracy over the seeds of a KD student beats the no-KD student.

    python -m benchmarks distill          # full run, writes benchmarks/results/
    python -m benchmarks distill --smoke  # seconds: tiny data, one epoch, one seed
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from benchmarks import harness
from mobiledl import apply, report_of
from mobiledl.compress.distill import DistillConfig
from mobiledl.data import Task
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.profile import count_params
from mobiledl.train import TrainConfig, evaluate, seed_everything, train

STEM = "distill"
VARIANTS = ("none", "logits", "logits+attention")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--width-mult", type=float, default=0.5, help="student width")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default 30")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default 20)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (smoke 1)")
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=4.0)
    args = harness.parse(parser, argv)
    smoke = {"teacher_epochs": 1, "epochs": 1, "seeds": 1}
    harness.resolve(args, smoke, {"teacher_epochs": 30, "epochs": 20, "seeds": 3})
    if args.seeds < 1 or not 0 < args.width_mult < 1:
        raise UserError("--seeds must be >= 1 and --width-mult in (0, 1)")
    return args


def student(task: Task, args: argparse.Namespace, seed: int) -> nn.Module:
    seed_everything(seed)
    return create_model(
        args.model, task.num_classes, task.in_channels, task.image_size, args.width_mult
    )


def train_student(
    variant: str, teacher: nn.Module, task: Task, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One student, one variant, one seed: the same budget for every variant."""
    training = TrainConfig(epochs=args.epochs, lr=args.lr, seed=seed, progress=False)
    config: TrainConfig | DistillConfig = training
    if variant != "none":
        feature = "attention" if variant == "logits+attention" else "none"
        config = DistillConfig(
            teacher=teacher,
            alpha=args.alpha,
            temperature=args.temperature,
            feature=feature,
            train=training,
        )
    started = time.perf_counter()
    model = apply(student(task, args, seed), config, task)
    return {
        "variant": variant,
        "seed": seed,
        "accuracy": evaluate(model, task),
        "best_val_accuracy": report_of(model).values["best_val_accuracy"],
        "seconds": time.perf_counter() - started,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of test accuracy per variant, and the gain over none."""
    summary = {}
    for variant in VARIANTS:
        accuracies = [run["accuracy"] for run in runs if run["variant"] == variant]
        summary[variant] = {
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        }
    for variant in VARIANTS:
        summary[variant]["gain_over_none"] = summary[variant]["mean"] - summary["none"]["mean"]
    return summary


def markdown(report: dict[str, Any]) -> str:
    config, summary, runs = report["config"], report["summary"], report["rows"]
    seeds = sorted({run["seed"] for run in runs})
    accuracy = {(run["variant"], run["seed"]): run["accuracy"] for run in runs}
    table = harness.markdown_table(
        ["student", *(f"seed {s}" for s in seeds), "mean", "std", "gain"],
        (
            [
                variant,
                *(harness.pct(accuracy[variant, seed]) for seed in seeds),
                harness.pct(summary["variants"][variant]["mean"]),
                harness.pct(summary["variants"][variant]["std"]),
                f"{100 * summary['variants'][variant]['gain_over_none']:+.2f}",
            ]
            for variant in VARIANTS
        ),
    )
    checks = ", ".join(f"{k}={harness.yes(v)}" for k, v in summary["checks"].items())
    task, teacher = summary["task"], summary["teacher"]
    lines = [
        "# Knowledge distillation into a half-width student",
        "",
        f"Task `{task['name']}` ({task['train']} train / {task['test']} test). Teacher: "
        f"`{config['model']}` (width 1.0, {teacher['params']:,} params) trained "
        f"{config['teacher_epochs']} epochs, test accuracy {harness.pct(teacher['accuracy'])}%. "
        f"Student: width {config['width_mult']} ({summary['student_params']:,} params), "
        f"{config['epochs']} epochs, SGD lr {config['lr']}, the same seed-controlled "
        "initialization and data order for every variant. KD: alpha "
        f"{config['alpha']}, T {config['temperature']}.",
        "",
        *table,
        "",
        f"Checks: {checks}. Accuracies in %, on the test split; gain in points over `none`.",
        "",
        harness.machine_line(report),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = harness.load_task(args.task, smoke=args.smoke)
    print(f"[{STEM}] teacher: {args.model} x1.0, {args.teacher_epochs} epochs", file=sys.stderr)
    seed_everything(0)
    teacher = create_model(args.model, task.num_classes, task.in_channels, task.image_size)
    train(teacher, task, TrainConfig(epochs=args.teacher_epochs, lr=args.lr, progress=False))
    teacher.eval()
    runs = []
    for seed in range(args.seeds):
        for variant in VARIANTS:
            print(f"[{STEM}] student seed {seed}: {variant}", file=sys.stderr)
            runs.append(train_student(variant, teacher, task, args, seed))
    variants = summarize(runs)
    summary = {
        "task": {"name": task.name, "train": len(task.x_train), "test": len(task.x_test)},
        "teacher": {"accuracy": evaluate(teacher, task), "params": count_params(teacher)},
        "student_params": count_params(student(task, args, 0)),
        "variants": variants,
        "checks": {
            "logit_kd_beats_no_kd": variants["logits"]["gain_over_none"] > 0,
            "logit_and_attention_kd_beats_no_kd": variants["logits+attention"]["gain_over_none"]
            > 0,
        },
    }
    return harness.write_results(args, runs, summary, markdown)
