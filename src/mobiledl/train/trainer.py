"""A training loop a reader understands in one sitting.

SGD (Nesterov momentum) or AdamW, a cosine learning-rate schedule with linear warm-up,
label smoothing, deterministic seeds, and best-on-validation checkpointing written
atomically. ``extra_loss`` adds further terms to the loss (knowledge distillation,
``mobiledl.compress.distill``, is such a term).

Any ``Task`` trains: batches come from ``task.loader`` and reach the model through
``call_model``, so inputs may be images, token ids, or tuples and dicts of tensors.

``train(..., checkpoint=path)`` writes an epoch checkpoint after every finished epoch and
resumes from it, ending bit-identical to an uninterrupted run (``mobiledl.train.resume``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mobiledl.core.config import MethodConfig
from mobiledl.core.inputs import Inputs, batch_size_of, call_model, check_inputs, slice_batch
from mobiledl.core.task import Task
from mobiledl.errors import UserError
from mobiledl.fileio import check_output_file
from mobiledl.resources import check_activation_memory, meta_batch
from mobiledl.train.divergence import check_loss, check_weights
from mobiledl.train.resume import (
    TrainingProgress,
    TrainingRun,
    active_checkpoint_directory,
    checkpoint_in,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from mobiledl.validate import (
    check_int,
    check_number,
    expect_config,
    expect_module,
    expect_task,
)

#: ``extra_loss(model, inputs, logits) -> scalar`` is added to the loss of every batch (a
#: sequence of terms: each, in order). A term that is an ``nn.Module`` trains its parameters
#: too (e.g. FitNets adapters); one with a ``task_weight`` attribute first scales the task's
#: loss by it (Hinton KD: ``alpha * KD + (1 - alpha) * task loss``).
ExtraLoss = Callable[[nn.Module, Inputs, torch.Tensor], torch.Tensor]
ExtraLosses = ExtraLoss | Sequence[ExtraLoss]
#: Samples per forward pass when predicting or evaluating.
EVAL_BATCH_SIZE = 256

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(MethodConfig):
    """Train a model on a task (the ``train`` method; also the fine-tuning inside others).

    - ``epochs``: passes over the training split (the best epoch on validation is kept).
    - ``batch_size``: samples per step.
    - ``optimizer``: ``sgd`` (Nesterov momentum) or ``adamw``.
    - ``lr``: peak learning rate; ``None`` picks 0.05 for SGD and 2e-3 for AdamW.
    - ``momentum``: SGD momentum.
    - ``weight_decay``: L2 penalty on weights (not on biases and norms).
    - ``warmup_epochs``: linear learning-rate warm-up before the cosine decay.
    - ``label_smoothing``: cross-entropy label smoothing in [0, 1); above 0, smoothed
      cross-entropy replaces the task's loss.
    - ``seed``: seeds shuffling and initialization.
    - ``kd_temperature`` / ``kd_alpha``: Hinton KD softening and weight when a teacher is given
      (``mobiledl train --teacher``; ``mobiledl.compress.distill.LogitDistillation``).
    - ``progress``: show a progress bar on stderr.
    """

    method: ClassVar[str] = "train"

    epochs: int = 30
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 0:
            raise UserError(f"epochs must be >= 0; got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr >= 0):
            raise UserError(f"lr must be a finite number >= 0; got {self.lr}")
        check_number(self.momentum, "momentum", 0.0, 1.0)
        for name in ("weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{name} must be a finite number >= 0; got {value}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"label_smoothing must lie in [0, 1); got {self.label_smoothing}")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise UserError(f"kd_alpha must lie in [0, 1]; got {self.kd_alpha}")
        if not (math.isfinite(self.kd_temperature) and self.kd_temperature > 0):
            raise UserError(f"kd_temperature must be > 0; got {self.kd_temperature}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.05 if self.optimizer == "sgd" else 2e-3


@dataclass
class TrainResult:
    """What training did: per-epoch history and the best validation accuracy."""

    best_val_accuracy: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so a run is repeatable on the same machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, inputs: Inputs, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on ``inputs``, computed in batches."""
    expect_module(model, "predict")
    check_inputs(inputs, "predict: inputs")
    check_int(batch_size, "predict: batch_size", 1)
    was_training = model.training
    model.eval()
    total = batch_size_of(inputs)
    outputs = [
        call_model(model, slice_batch(inputs, i, i + batch_size))
        for i in range(0, total, batch_size)
    ]
    model.train(was_training)
    return torch.cat(outputs)


@torch.no_grad()
def predict_split(
    model: nn.Module,
    task: Task,
    split: str = "test",
    batch_size: int = EVAL_BATCH_SIZE,
    samples: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` of ``model`` (in eval mode) over one split of any task, or over
    ``samples`` of them drawn at random (seeded, the same ones on every call)."""
    if task.num_samples(split) == 0:
        raise UserError(f"task '{task.name}' has an empty {split} split")
    was_training = model.training
    model.eval()
    outputs, targets, seen = [], [], 0
    for inputs, y in task.loader(split, batch_size, shuffle=samples is not None, seed=0):
        outputs.append(call_model(model, inputs))
        targets.append(y)
        seen += len(y)
        if samples is not None and seen >= samples:
            break
    model.train(was_training)
    return torch.cat(outputs)[:samples], torch.cat(targets)[:samples]


def evaluate(
    model: nn.Module, task: Task, split: str = "test", samples: int | None = None
) -> float:
    """The task's metric (top-1 accuracy for the built-ins) of ``model`` on one split (or on
    ``samples`` of it drawn at random, seeded)."""
    expect_module(model, "evaluate")
    expect_task(task, "evaluate")
    if samples is not None:
        check_int(samples, "evaluate: samples", low=1)
    return task.metric(*predict_split(model, task, split, samples=samples))


def train(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    *,
    on_best: Callable[[nn.Module, int, float], None] | None = None,
    extra_loss: ExtraLosses | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` in place and leave it holding its best-on-val weights.

    The loss is ``task.loss`` (see ``TrainConfig.label_smoothing``) and the terms of
    ``extra_loss`` (see ``ExtraLoss``). ``on_best(model, epoch, val_accuracy)`` is called whenever
    validation accuracy improves, e.g. to write a checkpoint atomically.

    ``checkpoint``: a file written atomically after every finished epoch; if it exists when
    training starts, training resumes after the epoch it holds and ends with exactly the
    weights and result of an uninterrupted run. A checkpoint of a different run (other config,
    task data, architecture, initial weights or loss terms) or an unreadable one is a
    ``CheckpointError`` (a ``UserError``). The finished run's checkpoint is left in place
    (training again returns at once); delete it once the result is saved. Inside
    ``mobiledl.train.resume.epoch_checkpoints(directory)`` a checkpoint is kept there without
    being asked for.

    ``config`` is required (``TrainConfig()`` for the defaults, 30 epochs): how long and how
    fast to train is the caller's decision, so ``None`` or a dict is a ``UserError``.
    """
    expect_module(model, "train")
    expect_task(task, "train")
    expect_config(config, TrainConfig, "train")
    if on_best is not None and not callable(on_best):
        raise UserError(f"train: on_best must be callable, got {type(on_best).__name__}")
    if checkpoint is not None and not isinstance(checkpoint, str | os.PathLike):
        raise UserError(f"train: checkpoint must be a path, got {type(checkpoint).__name__}")
    terms = _terms(extra_loss)
    example = task.example_input(1)
    if isinstance(example, torch.Tensor):  # inputs of other structures are not estimated
        batch = meta_batch(example, min(config.batch_size, task.num_samples("train")))
        what = f"training at batch size {len(batch)}"
        check_activation_memory(model, batch, what, training=True)
    path, fingerprint = _checkpoint_path(model, task, config, terms, checkpoint)
    seed_everything(config.seed)
    optimizer = _make_optimizer(model, config, terms)
    steps_per_epoch = math.ceil(task.num_samples("train") / config.batch_size)
    schedule = _cosine_with_warmup(
        config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    state = TrainingProgress(best_state=copy.deepcopy(model.state_dict()))
    run = TrainingRun(fingerprint, config.epochs, model, optimizer, scheduler, terms)
    if path is not None:
        resumed = load_checkpoint(path, run)
        if resumed is not None:
            state = resumed
            done = state.epoch + 1
            logger.info(f"resuming training from {path}: {done} of {config.epochs} epochs done")
    epochs = tqdm(
        range(state.epoch + 1, config.epochs),
        desc="train",
        disable=not config.progress,
        leave=False,
        initial=state.epoch + 1,
        total=config.epochs,
    )
    for epoch in epochs:
        loss = _train_one_epoch(model, task, config, optimizer, scheduler, epoch, terms)
        val_acc = evaluate(model, task, "val")
        state.history.append({"epoch": epoch, "train_loss": loss, "val_accuracy": val_acc})
        epochs.set_postfix(loss=f"{loss:.3f}", val=f"{val_acc:.4f}")
        state.epoch = epoch
        if val_acc > state.best_accuracy:
            state.best_accuracy, state.best_epoch = val_acc, epoch
            state.best_state = copy.deepcopy(model.state_dict())
            if on_best is not None:
                on_best(model, epoch, val_acc)
        if path is not None:
            save_checkpoint(path, run, state)
    model.load_state_dict(state.best_state)
    model.eval()
    return TrainResult(
        best_val_accuracy=state.best_accuracy, best_epoch=state.best_epoch, history=state.history
    )


def _checkpoint_path(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    terms: Sequence[ExtraLoss],
    checkpoint: str | os.PathLike[str] | None,
) -> tuple[Path | None, dict[str, str]]:
    """The epoch checkpoint to keep (given, or in the active ``epoch_checkpoints`` directory)
    and the run's fingerprint; ``(None, {})`` when none is kept."""
    directory = active_checkpoint_directory()
    if checkpoint is None and directory is None:
        return None, {}
    fingerprint = run_fingerprint(model, task, config, terms)
    if checkpoint is not None:
        return check_output_file(checkpoint), fingerprint
    return checkpoint_in(directory, fingerprint), fingerprint


def _train_one_epoch(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    terms: Sequence[ExtraLoss] = (),
) -> float:
    """One pass over the shuffled training split; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    loader = task.loader("train", config.batch_size, shuffle=True, seed=config.seed + epoch)
    for step, (inputs, y) in enumerate(loader):
        logits = call_model(model, inputs)
        loss = _with_terms(_task_loss(task, config, logits, y), terms, model, inputs, logits)
        check_loss(loss, epoch, step, config.learning_rate)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(y)
        count += len(y)
    check_weights(model, epoch, config.learning_rate)
    return total / max(count, 1)


def _terms(extra_loss: ExtraLosses | None) -> list[ExtraLoss]:
    if extra_loss is None:
        return []
    terms = list(extra_loss) if isinstance(extra_loss, list | tuple) else [extra_loss]
    for term in terms:
        if not callable(term):
            raise UserError(
                f"train: each extra_loss term must be callable, got {type(term).__name__}"
            )
    return terms


def _with_terms(
    loss: torch.Tensor,
    terms: Sequence[ExtraLoss],
    model: nn.Module,
    inputs: Inputs,
    logits: torch.Tensor,
) -> torch.Tensor:
    """The task's ``loss`` scaled by the terms' ``task_weight``s, plus each term in order."""
    for term in terms:
        if hasattr(term, "task_weight"):
            loss = term.task_weight * loss
    for term in terms:
        loss = loss + term(model, inputs, logits)
    return loss


def _task_loss(
    task: Task, config: TrainConfig, logits: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The task's loss; with label smoothing, smoothed cross-entropy (a classification loss)."""
    if config.label_smoothing:
        return F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    return task.loss(logits, y)


def _make_optimizer(
    model: nn.Module, config: TrainConfig, terms: Sequence[ExtraLoss] = ()
) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on biases and normalization parameters.

    Loss terms that are ``nn.Module``s contribute their parameters.
    """
    params = list(model.parameters())
    for term in terms:
        if isinstance(term, nn.Module):
            params += list(term.parameters())
    decay = [p for p in params if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in params if p.requires_grad and p.dim() <= 1]
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum, nesterov=True)


def _cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warm-up, then cosine decay to zero."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier
