"""Shared by the engine tests: the digits task and zoo models trained briefly on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobiledl.core.task import Task
from mobiledl.data import build_task
from mobiledl.models import create_model


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", seed=0)


def trained(name: str, task: Task, steps: int = 30) -> nn.Module:
    """A zoo model after ``steps`` SGD steps on ``task`` (200 steps: about 99% test accuracy
    for resnet20 on digits, so top-1 agreement means something)."""
    torch.manual_seed(0)
    model = create_model(name, task.num_classes, task.in_channels, task.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(steps):
        start = (step * 64) % (len(task.x_train) - 64)
        x, y = task.x_train[start : start + 64], task.y_train[start : start + 64]
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
