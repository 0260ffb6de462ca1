"""Run calibration data through a model and capture what one layer sees.

Layer-wise PTQ methods (bias correction, AdaRound) need a layer's inputs as the quantized
network delivers them, and its float outputs as the float network computes them. The
forward pass stops right after the layer, so capturing early layers is cheap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from mobiledl.compress.quantize.quantizer import fake_quant_disabled

BATCH_SIZE = 64


class _Captured(Exception):
    """Raised by a hook to stop the forward pass once the layer has run."""


def batches(data: Tensor, batch_size: int = BATCH_SIZE) -> Iterator[Tensor]:
    """Consecutive slices of ``data`` along the first dimension."""
    for start in range(0, len(data), batch_size):
        yield data[start : start + batch_size]


@torch.no_grad()
def capture(
    model: nn.Module, layer: nn.Module, data: Tensor, output: bool, quantized: bool = True
) -> Tensor:
    """The inputs (``output=False``) or outputs of ``layer`` over ``data``, concatenated.

    With ``quantized=False`` every fake quantizer is bypassed (the float network).
    """
    captured: list[Tensor] = []

    def pre_hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if not output:
            captured.append(args[0].detach())
            raise _Captured

    def hook(module: nn.Module, args: tuple[Tensor, ...], result: Tensor) -> None:
        captured.append(result.detach())
        raise _Captured

    handles = [layer.register_forward_pre_hook(pre_hook), layer.register_forward_hook(hook)]
    was_training = model.training
    model.eval()
    try:
        with contextlib.nullcontext() if quantized else fake_quant_disabled(model):
            for batch in batches(data):
                with contextlib.suppress(_Captured):
                    model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.cat(captured)
