"""A three-class Gaussian-blob task of 1x4x4 inputs and a tiny LeNet-5 trained on it: the
small float model the mixed-precision tests quantize."""

from __future__ import annotations

import torch
from torch import nn

from mobiledl.data import Task
from mobiledl.models import create_model
from mobiledl.train import TrainConfig, train


def blobs_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 1, 4, 4, generator=generator) * 2
    y = torch.arange(240) % 3
    x = centers[y] + torch.randn(240, 1, 4, 4, generator=generator)
    return Task("blobs", 3, x[:160], y[:160], x[160:200], y[160:200], x[200:], y[200:])


def trained_lenet5(task: Task) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet5", num_classes=3, in_channels=1, image_size=4, width_mult=0.25)
    train(model, task, TrainConfig(epochs=3, progress=False))
    return model
