"""Accuracy predictor (Cai et al., "Once-for-All", ICLR 2020, Sec. 3.3): a small MLP from the
architecture encoding (one-hot kernel and expand ratio per block slot, one-hot depth per
stage, one-hot resolution; :meth:`SearchSpace.encode`) to the accuracy measured on sub-networks
taken from the supernet. It lets the search score thousands of candidates without running them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mobiledl.automl.nas.evaluate import one_thread
from mobiledl.automl.nas.space import Arch, SearchSpace
from mobiledl.errors import UserError


class AccuracyPredictor(nn.Module):
    """``accuracy = base + MLP(encode(arch))`` (two hidden layers, ReLU)."""

    def __init__(self, space: SearchSpace, hidden: int = 64, base: float = 0.0) -> None:
        super().__init__()
        self.space = space
        inputs = len(space.encode(space.smallest()))
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.register_buffer("base", torch.tensor(float(base)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1) + self.base

    @torch.no_grad()
    def predict(self, archs: Sequence[Arch]) -> list[float]:
        if not archs:
            return []
        features = torch.tensor([self.space.encode(a) for a in archs])
        with one_thread():
            return [float(v) for v in self.eval()(features)]


def fit_accuracy_predictor(
    space: SearchSpace,
    archs: Sequence[Arch],
    accuracies: Sequence[float],
    epochs: int = 500,
    lr: float = 3e-3,
    seed: int = 0,
) -> AccuracyPredictor:
    """Train the MLP on measured ``(arch, accuracy)`` pairs (full-batch Adam, MSE)."""
    if len(archs) < 4:
        raise UserError("the accuracy predictor needs at least 4 measured sub-networks")
    torch.manual_seed(seed)
    y = torch.tensor(accuracies, dtype=torch.float32)
    model = AccuracyPredictor(space, base=float(y.mean()))
    x = torch.tensor([space.encode(a) for a in archs])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    with one_thread():
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            optimizer.step()
    return model.eval()


def rmse(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Root mean squared error."""
    diff = np.asarray(predicted) - np.asarray(measured)
    return float(np.sqrt(np.mean(diff**2)))
