"""The in-memory task under its name from before ``Task`` became an interface.

``mobiledl.data.Task`` (and ``mobiledl.data.task.Task``) is ``mobiledl.core.task.TensorTask``,
so code that builds a task from tensors, ``Task(name=..., num_classes=..., x_train=...)``,
keeps working. New code imports ``TensorTask``, or ``Task`` (the interface) from
``mobiledl.core.task``.
"""

from __future__ import annotations

from mobiledl.core.task import SPLITS, TensorTask, top1_accuracy

Task = TensorTask

__all__ = ["SPLITS", "Task", "TensorTask", "top1_accuracy"]
