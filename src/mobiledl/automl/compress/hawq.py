"""Hessian-aware bit sensitivity: HAWQ (Dong et al. 2019, "HAWQ: Hessian AWare Quantization
of Neural Networks with Mixed-Precision") as refined in HAWQ-V2 (Dong et al. 2020).

A layer whose loss surface is sharp (large Hessian eigenvalues) loses more from the same
weight perturbation. HAWQ-V2 measures the sharpness of layer ``i`` by the average Hessian
eigenvalue ``Tr(H_i) / n_i`` of its weight block and scores a bit width ``b`` by

    Omega_i(b) = Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2,

which, halved, is the second-order Taylor estimate ``0.5 dW^T H dW`` of the loss increase
when ``H_i`` is replaced by its mean eigenvalue. The trace comes from Hutchinson's estimator
(Hutchinson 1990; Avron and Toledo 2011): ``Tr(H) = E[v^T H v]`` for Rademacher ``v``, with
``H v`` by differentiating ``g . v`` once more (Pearlmutter 1994), so the Hessian is never
formed. Each block is probed on its own by default (``hessian_traces``'s ``joint``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mobiledl.compress.quantize.mixed import quantize_weight, select_layers
from mobiledl.compress.quantize.progress import progress
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError

#: Training samples the loss's Hessian is taken over, and Hutchinson probes by default.
HESSIAN_SAMPLES = 256
HUTCHINSON_PROBES = 32
BATCH_SIZE = 256


@dataclass
class HessianTraces:
    """``trace[name]``: Hutchinson's estimate of ``Tr(H)`` of that layer's weight block;
    ``stderr[name]`` its standard error over the ``probes`` (Rademacher vectors);
    ``weights[name]``: the block's size ``n``. Over ``samples`` training inputs."""

    trace: dict[str, float]
    stderr: dict[str, float]
    weights: dict[str, int]
    probes: int
    samples: int

    def mean_eigenvalue(self, name: str) -> float:
        return self.trace[name] / self.weights[name]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def hessian_traces(
    model: nn.Module,
    task: TensorTask,
    layers: Sequence[str] | None = None,
    samples: int = HESSIAN_SAMPLES,
    probes: int = HUTCHINSON_PROBES,
    seed: int = 0,
    joint: bool = False,
    show_progress: bool = False,
) -> HessianTraces:
    """Per-layer Hessian traces of ``task``'s training loss on its first ``samples`` training
    inputs (the model in eval mode, so BatchNorm uses its running statistics, as HAWQ does).

    By default each layer is probed on its own (a Rademacher vector on its weights, zero
    elsewhere): one double-backward per layer and probe, reusing one first backward per
    batch. ``joint=True`` probes all layers with one vector (one double-backward per probe),
    which is unbiased too but adds the cross terms' variance, large for a layer whose own
    trace is small next to its neighbours'."""
    if samples < 1 or probes < 2:
        raise UserError(
            f"Hessian traces need samples >= 1 and probes >= 2; got {samples}, {probes}"
        )
    chosen = select_layers(model, layers)
    if not chosen:
        raise UserError("Hessian traces: the model has no Conv2d or Linear layer")
    names = list(chosen)
    params = [chosen[name].weight for name in names]
    x, y = task.x_train[:samples], task.y_train[:samples]
    estimates = torch.zeros(probes, len(names), dtype=torch.float64)
    batches = range(0, len(x), BATCH_SIZE)
    steps = progress(range(len(batches) * probes), "Hutchinson probes") if show_progress else None
    ticks = iter(steps) if steps is not None else None
    was_training = model.training
    model.eval()
    try:
        for start in batches:
            xb, yb = x[start : start + BATCH_SIZE], y[start : start + BATCH_SIZE]
            loss = task.loss(model(xb), yb) * (len(xb) / len(x))
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for probe in range(probes):
                vectors = _rademacher(params, seed * 1_000_003 + probe)
                estimates[probe] += _quadratic_forms(grads, params, vectors, joint)
                if ticks is not None:
                    next(ticks, None)
    finally:
        model.train(was_training)
    mean, std = estimates.mean(0), estimates.std(0)
    return HessianTraces(
        trace={name: float(mean[i]) for i, name in enumerate(names)},
        stderr={name: float(std[i]) / math.sqrt(probes) for i, name in enumerate(names)},
        weights={name: chosen[name].weight.numel() for name in names},
        probes=probes,
        samples=len(x),
    )


def _rademacher(params: list[nn.Parameter], seed: int) -> list[Tensor]:
    """Random signs shaped as each parameter, the same for the same ``seed`` (every batch
    of a probe must see the same vector)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int8).to(p.dtype) * 2 - 1)
        for p in params
    ]


def _quadratic_forms(
    grads: Sequence[Tensor], params: list[nn.Parameter], vectors: list[Tensor], joint: bool
) -> Tensor:
    """``v_i^T (H v)_i`` for each layer ``i``: with ``v`` on all layers (``joint``) or on layer
    ``i`` alone, ``H v`` being the gradient of ``g . v`` (Pearlmutter 1994)."""
    if joint:
        dot = sum((g * v).sum() for g, v in zip(grads, vectors, strict=True))
        products = torch.autograd.grad(dot, params, retain_graph=True)
        pairs = zip(vectors, products, strict=True)
        return torch.tensor([float((v.double() * hv.double()).sum()) for v, hv in pairs])
    forms = []
    for g, p, v in zip(grads, params, vectors, strict=True):
        (hv,) = torch.autograd.grad((g * v).sum(), p, retain_graph=True)
        forms.append(float((v.double() * hv.double()).sum()))
    return torch.tensor(forms, dtype=torch.float64)


@torch.no_grad()
def hawq_costs(
    model: nn.Module, traces: HessianTraces, bits: Sequence[int]
) -> dict[str, list[float]]:
    """HAWQ-V2's estimated loss increase ``0.5 * Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2`` of
    each traced layer at each width in ``bits`` (module docstring). A negative trace (the
    estimate of a layer near a saddle) is clamped to 0: no width then costs anything."""
    layers = select_layers(model, list(traces.trace))
    costs: dict[str, list[float]] = {}
    for name, layer in layers.items():
        weight = layer.weight.detach()
        sharpness = max(traces.mean_eigenvalue(name), 0.0)
        costs[name] = [
            0.5 * sharpness * float((quantize_weight(weight, b) - weight).double().square().sum())
            for b in bits
        ]
    return costs
