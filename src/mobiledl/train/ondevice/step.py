"""One on-device training step, and its peak memory measured from PyTorch's allocator.

The step is the one ``mobiledl.train.ondevice.memory`` predicts: the model in the trainer's
modes (``training_modes``), forward under ``LeanAutograd`` (optionally through checkpointed
stages), backward, optimizer step. ``measure_training_step`` runs it for real on CPU and adds
up the allocator's events (``mobiledl.profile.allocator``), so prediction and measurement meet
only in the bytes.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.core.clone import clone_module
from mobiledl.errors import UserError
from mobiledl.profile.allocator import peak_allocation
from mobiledl.train.ondevice.lean import LeanAutograd, fused_layers, gradient_checkpointing
from mobiledl.train.ondevice.memory import OPTIMIZER_STATES, training_batch, training_modes

LossFn = Callable[[Tensor, Tensor], Tensor]


def make_optimizer(
    model: nn.Module, name: str = "momentum", lr: float = 0.01, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """``sgd`` (no state), ``momentum`` (SGD with momentum) or ``adam`` over trainable params."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters")
    if name not in OPTIMIZER_STATES:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}; got {name}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=momentum if name == "momentum" else 0.0)


def training_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn = F.cross_entropy,
    checkpoint_segments: int | None = None,
) -> Tensor:
    """``zero_grad``, lean forward and backward, optimizer step; returns the detached loss.

    The caller puts the model in its training modes (``training_modes``).
    """
    optimizer.zero_grad(set_to_none=True)
    return _forward_backward_update(model, x, y, optimizer, loss_fn, checkpoint_segments)


def _forward_backward_update(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    checkpoint_segments: int | None,
) -> Tensor:
    with fused_layers(model):
        with gradient_checkpointing(model, checkpoint_segments), LeanAutograd():
            loss = loss_fn(model(x), y)
        loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass(frozen=True)
class MeasuredStep:
    """Measured bytes of one training step.

    ``resident_bytes``: tensors alive when the step starts (weights, buffers, optimizer
    state, one batch of inputs and targets in the loader's buffers; not the dataset).
    ``allocated_peak_bytes``: the allocator's peak above that during forward, backward and the
    update. ``peak_bytes`` is their sum.
    """

    peak_bytes: int
    resident_bytes: int
    allocated_peak_bytes: int


def measure_training_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    optimizer: str = "momentum",
    checkpoint_segments: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> MeasuredStep:
    """Peak memory of a real training step on a copy of ``model`` (the model is untouched).

    A first step creates the optimizer state; the second, steady-state step is measured
    (gradients from the first are released before it starts, as ``zero_grad`` does).
    """
    model = clone_module(model).to(memory_format=torch.channels_last)
    x, y = training_batch(x), training_batch(y)  # one batch, not the dataset it was sliced from
    opt = make_optimizer(model, optimizer, lr=1e-4)
    with training_modes(model):
        training_step(model, x, y, opt, loss_fn, checkpoint_segments)
        opt.zero_grad(set_to_none=True)
        gc.collect()
        resident = _resident_bytes(model, opt, (x, y))
        _, peak = peak_allocation(
            lambda: _forward_backward_update(model, x, y, opt, loss_fn, checkpoint_segments)
        )
    return MeasuredStep(resident + peak.peak_bytes, resident, peak.peak_bytes)


def _resident_bytes(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[Tensor, ...]
) -> int:
    """Bytes of the distinct storages of weights, buffers, optimizer state and the batch."""
    tensors = [*model.parameters(), *model.buffers(), *batch]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, Tensor)]
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())
