"""The on-device training loop: lean steps, frozen-statistics batch norms, best-on-val weights.

``fine_tune`` trains whatever ``requires_grad`` marks trainable with ``training_step`` (lean
autograd, fused frozen layers, channels-last activations; optional gradient checkpointing) and
a cosine learning rate, keeps the weights of the best validation epoch, and leaves the model in
eval mode and its original memory layout. TinyTL, sparse update and the baselines all train
with it, so their memory and accuracy are compared on the same engine.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.train.divergence import check_loss
from mobiledl.train.ondevice.memory import training_layout, training_modes
from mobiledl.train.ondevice.step import make_optimizer, training_step
from mobiledl.train.trainer import evaluate, seed_everything


@dataclass(frozen=True)
class FineTuneConfig:
    """Epochs (or a step limit), batch size, optimizer, learning rate, checkpoint segments."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "momentum"
    lr: float = 0.01
    checkpoint_segments: int | None = None
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1; got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1; got {self.batch_size}")
        if self.lr <= 0:
            raise UserError(f"learning rate must be > 0; got {self.lr}")


def fine_tune(model: nn.Module, task: TensorTask, config: FineTuneConfig) -> list[dict[str, float]]:
    """Train ``model`` in place; returns per-epoch ``{epoch, train_loss, val_accuracy}``.

    With ``max_steps`` training stops after that many steps (the last epoch is partial).
    """
    seed_everything(config.seed)
    model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config.optimizer, config.lr)
    steps_per_epoch = math.ceil(len(task.x_train) / config.batch_size)
    total = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
    )
    history: list[dict[str, float]] = []
    best, best_state, step = -1.0, None, 0
    for epoch in range(config.epochs):
        loss, step = _epoch(model, task, config, optimizer, scheduler, epoch, step, total)
        accuracy = evaluate(model, task, "val")
        history.append({"epoch": epoch, "train_loss": loss, "val_accuracy": accuracy})
        if accuracy > best:
            best, best_state = accuracy, copy.deepcopy(model.state_dict())
        if step >= total:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history


def _epoch(
    model: nn.Module,
    task: TensorTask,
    config: FineTuneConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    step: int,
    total: float,
) -> tuple[float, int]:
    """One pass over the shuffled training split (or up to ``total`` steps): mean loss, steps."""
    loader = task.loader("train", config.batch_size, shuffle=True, seed=config.seed + epoch)
    loss_sum, count = 0.0, 0
    with training_modes(model):
        for x, y in loader:
            if step >= total:
                break
            x = training_layout(x)  # the loader's batch is released: one batch is held
            loss = training_step(model, x, y, optimizer, task.loss, config.checkpoint_segments)
            check_loss(loss, epoch, step, config.lr)
            scheduler.step()
            step += 1
            loss_sum += loss.item() * len(x)
            count += len(x)
    return loss_sum / max(count, 1), step
