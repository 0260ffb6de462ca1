"""Channel statistics for data-aware factorization (Zhang et al. 2016).

Zhang, Zou, He and Sun, "Accelerating Very Deep Convolutional Networks for Classification
and Detection" (TPAMI 2016), observe that a layer's *responses* lie near a low-dimensional
subspace even when its weights are not low-rank: projecting the output channels onto the
top eigenvectors ``P`` of the response second moment ``E[y y^T]`` keeps most of the signal,
and ``y ~ P P^T W x`` factorizes the layer as ``(P^T W)`` followed by ``P``. The same
applies to a layer's input channels with ``E[x x^T]``. Trained small networks, whose
weights keep nearly flat spectra, gain the most.

``channel_moments`` runs calibration data through the unmodified model once and returns,
per layer, the uncentered second moments of its input and output channels (every spatial
position is a sample; the output is taken before the bias), in float64.

``recalibrate_batchnorm`` re-estimates BatchNorm running statistics of the factorized model
on the calibration data: the approximated layers shift their output distributions, and
stale statistics cost far more accuracy than the approximation itself ("adaptive BN", Li et
al. 2020, "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

BATCH_SIZE = 128


def channels_last(x: Tensor) -> Tensor:
    """``(N, C, H, W)`` or ``(..., C)`` as a ``(samples, C)`` matrix."""
    if x.dim() == 4:
        return x.transpose(0, 1).flatten(1).T
    return x.reshape(-1, x.shape[-1])


def channel_moments(
    model: nn.Module, layers: Mapping[str, nn.Conv2d | nn.Linear], data: Tensor
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (E[x x^T] over input channels, E[y y^T] over output channels)}``."""
    sums: dict[str, list[Tensor]] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if module.bias is not None:
                shape = (-1, 1, 1) if output.dim() == 4 else (-1,)
                output = output - module.bias.view(shape)
            x, y = channels_last(args[0]).double(), channels_last(output).double()
            moments = [x.T @ x, y.T @ y]
            previous = sums.get(name)
            sums[name] = (
                moments
                if previous is None
                else [a + b for a, b in zip(previous, moments, strict=True)]
            )
            counts[name] = counts.get(name, 0) + len(x)

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(data), BATCH_SIZE):
                model(data[start : start + BATCH_SIZE])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: (s[0] / counts[name], s[1] / counts[name]) for name, s in sums.items()}


def principal_directions(moment: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (descending, clamped at 0) and eigenvectors (columns) of a moment."""
    values, vectors = torch.linalg.eigh(moment)
    return values.flip(0).clamp(min=0), vectors.flip(1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Tensor) -> None:
    """Recompute every BatchNorm's running mean and variance as averages over ``data``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
    was_training = model.training
    model.train()
    try:
        for start in range(0, len(data), BATCH_SIZE):
            model(data[start : start + BATCH_SIZE])
    finally:
        model.train(was_training)
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
