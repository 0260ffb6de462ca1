"""Knowledge distillation: does a half-width student learn better from the full model?

On MNIST-1D (Greydanus 2020), a ResNet-20 teacher is trained once; then the same
half-width student (``width_mult=0.5``) is trained from scratch with an identical budget
(epochs, optimizer, learning rate, batch size, data order) in three ways, for each seed:

- ``none``: cross-entropy only;
- ``logits``: Hinton et al. 2015 logit distillation (alpha 0.9, T 4);
- ``logits+attention``: plus attention transfer on the three stage outputs (Zagoruyko and
  Komodakis 2017, beta 1000).

The target: the mean test accuracy over the seeds of a KD student beats the no-KD student.

    python benchmarks/distill.py                    # full run, writes results/
    python benchmarks/distill.py --smoke --out tmp  # seconds: tiny data, one epoch

Writes ``distill.json`` and ``distill.md`` (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mobiledl.data import Task, build_task  # noqa: E402
from mobiledl.errors import UserError  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model  # noqa: E402
from mobiledl.profile import count_params  # noqa: E402
from mobiledl.train import (  # noqa: E402
    FeatureDistiller,
    TrainConfig,
    evaluate,
    seed_everything,
    train,
)

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "distill"
VARIANTS = ("none", "logits", "logits+attention")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--width-mult", type=float, default=0.5, help="student width")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default 30")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default 20)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--train-threads", type=int, default=1, help="PyTorch threads")
    parser.add_argument("--smoke", action="store_true", help="tiny data, one epoch, one seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    args.teacher_epochs = args.teacher_epochs or (1 if args.smoke else 30)
    args.epochs = args.epochs or (1 if args.smoke else 20)
    args.seeds = 1 if args.smoke else args.seeds
    if args.seeds < 1 or not 0 < args.width_mult < 1:
        raise UserError("--seeds must be >= 1 and --width-mult in (0, 1)")
    return args


def load_task(args: argparse.Namespace) -> Task:
    task = build_task(args.task, seed=0)
    if args.smoke:
        task.x_train, task.y_train = task.x_train[:256], task.y_train[:256]
        task.x_val, task.y_val = task.x_val[:128], task.y_val[:128]
        task.x_test, task.y_test = task.x_test[:128], task.y_test[:128]
    return task


def student(task: Task, args: argparse.Namespace, seed: int) -> nn.Module:
    seed_everything(seed)
    return create_model(
        args.model, task.num_classes, task.in_channels, task.image_size, args.width_mult
    )


def train_student(
    variant: str, teacher: nn.Module, task: Task, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One student, one variant, one seed: the same budget for every variant."""
    model = student(task, args, seed)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        seed=seed,
        kd_alpha=args.alpha,
        kd_temperature=args.temperature,
        progress=False,
    )
    started = time.perf_counter()
    if variant == "none":
        result = train(model, task, config)
    elif variant == "logits":
        result = train(model, task, config, teacher=teacher)
    else:
        example = task.example_input(1)
        with FeatureDistiller(model, teacher, example, "attention") as distiller:
            result = train(model, task, config, teacher=teacher, extra_loss=distiller)
    return {
        "variant": variant,
        "seed": seed,
        "accuracy": evaluate(model, task),
        "best_val_accuracy": result.best_val_accuracy,
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
    config, summary = report["config"], report["summary"]
    seeds = sorted({run["seed"] for run in report["runs"]})
    lines = [
        "# Knowledge distillation into a half-width student",
        "",
        f"Task `{report['task']['name']}` ({report['task']['train']} train / "
        f"{report['task']['test']} test). Teacher: `{config['model']}` (width 1.0, "
        f"{report['teacher']['params']:,} params) trained {config['teacher_epochs']} epochs, test "
        f"accuracy {100 * report['teacher']['accuracy']:.2f}%. Student: width "
        f"{config['width_mult']} ({report['student_params']:,} params), {config['epochs']} "
        f"epochs, SGD lr {config['lr']}, the same seed-controlled initialization and data order "
        f"for every variant. KD: alpha {config['alpha']}, T {config['temperature']}.",
        "",
        "| student | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | gain |",
        "|" + "---|" * (4 + len(seeds)),
    ]
    for variant in VARIANTS:
        cells = [
            f"{100 * run['accuracy']:.2f}"
            for seed in seeds
            for run in report["runs"]
            if run["variant"] == variant and run["seed"] == seed
        ]
        row = summary[variant]
        lines.append(
            f"| {variant} | " + " | ".join(cells) + f" | {100 * row['mean']:.2f} | "
            f"{100 * row['std']:.2f} | {100 * row['gain_over_none']:+.2f} |"
        )
    verdict = ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in report["checks"].items())
    lines += [
        "",
        f"Checks: {verdict}. Accuracies in %, on the test split; gain in points over `none`.",
        "",
        f"Total wall time {report['seconds']:.0f} s on {report['machine']['cpu_count']} cores "
        f"(torch {report['machine']['torch']}, {config['train_threads']} training thread).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.train_threads)
    started = time.perf_counter()
    task = load_task(args)
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
    summary = summarize(runs)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "benchmark": STEM,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "config": config,
        "task": {"name": task.name, "train": len(task.x_train), "test": len(task.x_test)},
        "teacher": {"accuracy": evaluate(teacher, task), "params": count_params(teacher)},
        "student_params": count_params(student(task, args, 0)),
        "runs": runs,
        "summary": summary,
        "checks": {
            "logit_kd_beats_no_kd": summary["logits"]["gain_over_none"] > 0,
            "logit_and_attention_kd_beats_no_kd": summary["logits+attention"]["gain_over_none"] > 0,
        },
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(args.out / f"{STEM}.json", report)
    write_text_atomic(args.out / f"{STEM}.md", markdown(report))
    return report


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
