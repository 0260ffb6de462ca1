"""Tasks: built-in datasets (``digits``, ``mnist1d``, ``mnist1d-tokens``, ``mnist5k``) and user
data by path.

``Task`` here is the in-memory ``TensorTask`` (its name from before ``Task`` became the
interface in ``mobiledl.core.task``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mobiledl.core.task import TensorTask
from mobiledl.data.builtin import BUILTINS
from mobiledl.data.prepare import ImageSize, parse_split
from mobiledl.data.task import Task, top1_accuracy
from mobiledl.data.user import load_split_files, load_user_task
from mobiledl.errors import UserError
from mobiledl.validate import check_seed, expect_path

__all__ = ["Task", "TensorTask", "build_task", "list_tasks", "load_user_task", "top1_accuracy"]


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return list(BUILTINS)


def build_task(
    spec: str | os.PathLike,
    image_size: ImageSize = None,
    seed: int = 0,
    split: str | Sequence[float] | None = None,
) -> TensorTask:
    """A task from a built-in name, a path to user data (image folder, .npz, IDX) or three
    comma-separated ``.npz`` files ``TRAIN,VAL,TEST`` holding the splits.

    ``split`` (``"TRAIN,VAL,TEST"`` fractions, default 0.6,0.2,0.2) splits each class; splits
    are deterministic for a ``seed``. ``image_size`` (``S`` or ``(H, W)``) resizes image inputs
    bilinearly (a task of other inputs refuses it).
    """
    name = os.fspath(expect_path(spec, "task (a built-in name or a path to user data)"))
    check_seed(seed)
    fractions = parse_split(split)
    if name in BUILTINS:
        return BUILTINS[name](image_size=image_size, seed=seed, split=fractions)
    if Path(name).exists():
        return load_user_task(name, image_size=image_size, seed=seed, split=fractions)
    if "," in name:
        if split is not None:
            raise UserError("--split does not apply to separate TRAIN,VAL,TEST files")
        return load_split_files(name.split(","), image_size=image_size)
    raise UserError(
        f"unknown task '{name}': not a built-in ({', '.join(BUILTINS)}) "
        "and no file or folder at that path"
    )
