"""Tasks as the benchmarks load them: any task ``mobiledl`` takes (a built-in, a user's data
or separate split files), split as ``--split`` says; a smoke run keeps a few hundred samples."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.harness.cli import names
from mobiledl.data import Task, build_task
from mobiledl.data.prepare import parse_split
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.train import TrainConfig, train
from mobiledl.train import resume as train_resume

SMOKE_SIZES = {"train": 256, "val": 128, "test": 128}


def add_task_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--task SPEC`` (repeatable: a built-in name, a path to user data, or ``TRAIN,VAL,TEST``
    ``.npz`` files), ``--tasks`` (comma-separated built-ins; ``default`` in a full run) and
    ``--split``, the fractions that split user data; resolve them with ``resolve_tasks``."""
    parser.add_argument(
        "--task",
        action="append",
        default=None,
        metavar="SPEC",
        help="a task: built-in name, user data path, or TRAIN,VAL,TEST .npz files (repeatable)",
    )
    parser.add_argument("--tasks", default=None, help=f"comma-separated built-ins ({default})")
    parser.add_argument(
        "--split",
        default=None,
        metavar="TRAIN,VAL,TEST",
        help="fractions splitting each class of user data (default 0.6,0.2,0.2)",
    )


def resolve_tasks(args: argparse.Namespace, smoke: str, full: str) -> list[str]:
    """The task specs ``args`` asks for (``--task``s, else ``--tasks``, else ``smoke`` /
    ``full``), as ``args.task_specs``; ``--split`` is checked here, before any work."""
    if args.task and args.tasks:
        raise UserError("give --task (repeatable) or --tasks, not both")
    parse_split(args.split)
    default = smoke if args.smoke else full
    args.task_specs = list(args.task) if args.task else names(args.tasks or default)
    return args.task_specs


def load_task(
    name: str,
    image_size: int | None = None,
    seed: int = 0,
    smoke: bool = False,
    split: str | None = None,
) -> Task:
    """The task ``name`` (any spec ``build_task`` takes, split by ``split``); a smoke run
    keeps ``SMOKE_SIZES`` samples of each split (it runs every step, it does not learn)."""
    task = build_task(name, image_size=image_size, seed=seed, split=split)
    if smoke:
        for split, size in SMOKE_SIZES.items():
            x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
            setattr(task, f"x_{split}", x[:size])
            setattr(task, f"y_{split}", y[:size])
    return task


def task_summary(task: Task) -> dict[str, object]:
    """Name, input shape and split sizes of ``task``, for a report."""
    splits = {split: len(task.split(split)[0]) for split in SMOKE_SIZES}
    return {"name": task.name, "input_shape": list(task.input_shape), **splits}


def task_fingerprint(task: Task) -> str:
    """12 hex digits of ``mobiledl.train.resume.task_fingerprint``: a cache key that tells two
    user tasks of the same name (or the same data split differently) apart."""
    return train_resume.task_fingerprint(task)[:12]


def calibration_task(data: torch.Tensor, num_classes: int) -> Task:
    """A task whose training inputs are ``data`` (labels all 0, no other split): what the
    quantizer's calibration draws from when a benchmark times random-weight models."""
    labels, none = torch.zeros(len(data), dtype=torch.long), torch.empty(0, dtype=torch.long)
    return Task("random", num_classes, data, labels, data[:0], none, data[:0], none)


def train_baseline(name: str, task: Task, epochs: int, seed: int) -> nn.Module:
    """The zoo model ``name`` trained from scratch on ``task`` (best-on-validation weights),
    in eval mode."""
    torch.manual_seed(seed)
    model = create_model(name, task.num_classes, task.in_channels, task.image_size)
    train(model, task, TrainConfig(epochs=epochs, seed=seed, progress=False))
    return model.eval()
