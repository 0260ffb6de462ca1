"""Tasks as the benchmarks load them: a smoke run keeps a few hundred samples."""

from __future__ import annotations

from mobiledl.data import Task, build_task

SMOKE_SIZES = {"train": 256, "val": 128, "test": 128}


def load_task(name: str, image_size: int | None = None, seed: int = 0, smoke: bool = False) -> Task:
    """The built-in task ``name``; a smoke run keeps ``SMOKE_SIZES`` samples of each split
    (it runs every step, it does not learn)."""
    task = build_task(name, image_size=image_size, seed=seed)
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
