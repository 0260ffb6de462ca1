"""Stop a training run whose loss or weights stop being finite, with one line saying where.

A NaN or infinite loss (or weight) never recovers: every later step and the saved model would
be NaN. The trainers call ``check_loss`` on every step and ``check_weights`` after every
epoch; the ``UserError`` names the epoch and step (counted from 1) and the likely cause.
"""

from __future__ import annotations

import torch
from torch import nn

from mobiledl.errors import UserError


def check_loss(loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """``UserError`` if ``loss`` is not finite (``epoch`` and ``step`` count from 0)."""
    if bool(torch.isfinite(loss.detach()).all()):
        return
    raise UserError(
        f"training diverged at epoch {epoch + 1}, step {step + 1}: the loss is "
        f"{loss.detach().float().flatten()[0].item()}; {_cause(lr)}"
    )


def check_weights(model: nn.Module, epoch: int, lr: float) -> None:
    """``UserError`` naming the first parameter of ``model`` holding NaN or infinite values."""
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter.detach()).all()):
            raise UserError(
                f"training diverged at epoch {epoch + 1}: parameter '{name}' is no longer "
                f"finite; {_cause(lr)}"
            )


def _cause(lr: float) -> str:
    return (
        f"the learning rate ({lr:g}) is probably too high (or the data holds extreme values); "
        "nothing was written"
    )
