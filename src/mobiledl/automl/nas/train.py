"""Progressive shrinking (Cai et al., "Once-for-All", ICLR 2020, Sec. 3.2).

The full network (largest kernel, depth and expand ratio) is trained first; then the space
is opened one dimension at a time — elastic kernel, then depth (deepest two values, then
all), then expand ratio (largest two, then all; channels are sorted by importance before
each expand phase) — with elastic resolution throughout. Each step follows the sandwich
rule with in-place distillation (Yu et al., "BigNAS", ECCV 2020): the largest network of the
current phase learns from the labels, and the smallest plus ``sandwich`` random networks of
the phase learn from its (detached) logits and the labels; gradients of all are summed
before one optimizer step.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mobiledl.automl.nas.elastic import OFASupernet, sort_channels
from mobiledl.automl.nas.space import Arch, SearchSpace
from mobiledl.compress.distill import logit_distillation_loss
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.train.trainer import seed_everything

logger = logging.getLogger(__name__)


@dataclass
class ShrinkConfig:
    """Epochs of each phase and the optimisation settings of progressive shrinking (the
    defaults of ``mobiledl nas train``)."""

    full_epochs: int = 15
    kernel_epochs: int = 6
    depth_epochs: int = 6
    expand_epochs: int = 6
    batch_size: int = 128
    lr: float = 0.1
    shrink_lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-5
    sandwich: int = 1
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        epochs = (self.full_epochs, self.kernel_epochs, self.depth_epochs, self.expand_epochs)
        if min(epochs) < 0:
            raise UserError("phase epochs must be >= 0")
        if self.batch_size < 1 or self.sandwich < 0:
            raise UserError("batch_size must be >= 1 and sandwich >= 0")


@dataclass
class Phase:
    """One phase of progressive shrinking: the sub-space it samples from."""

    name: str
    space: SearchSpace
    epochs: int
    lr: float
    sort_first: bool = False


@dataclass
class ShrinkResult:
    """Mean training loss of every epoch, by phase."""

    history: list[dict[str, float | str]] = field(default_factory=list)


def phases(space: SearchSpace, config: ShrinkConfig) -> list[Phase]:
    """full -> kernel -> depth (2 steps) -> expand (2 steps), each opening one dimension."""
    k, e, d = space.kernel_sizes, space.expand_ratios, space.depths
    out = [
        Phase(
            "full",
            space.restrict(kernel_sizes=k[-1:], expand_ratios=e[-1:], depths=d[-1:]),
            config.full_epochs,
            config.lr,
        ),
        Phase(
            "kernel",
            space.restrict(expand_ratios=e[-1:], depths=d[-1:]),
            config.kernel_epochs,
            config.shrink_lr,
        ),
    ]
    out += _split(
        "depth",
        [space.restrict(expand_ratios=e[-1:], depths=d[-2:]), space.restrict(expand_ratios=e[-1:])],
        config.depth_epochs,
        config,
    )
    expand = _split(
        "expand", [space.restrict(expand_ratios=e[-2:]), space], config.expand_epochs, config
    )
    for phase in expand:
        phase.sort_first = True
    return [phase for phase in out + expand if phase.epochs > 0]


def _split(name: str, spaces: list[SearchSpace], epochs: int, config: ShrinkConfig) -> list[Phase]:
    first = epochs // 2
    return [
        Phase(f"{name}-1", spaces[0], first, config.shrink_lr),
        Phase(f"{name}-2", spaces[1], epochs - first, config.shrink_lr),
    ]


def progressive_shrink(
    supernet: OFASupernet, task: TensorTask, config: ShrinkConfig | None = None
) -> ShrinkResult:
    """Train ``supernet`` in place on ``task`` through all phases of progressive shrinking."""
    config = config or ShrinkConfig()
    seed_everything(config.seed)
    rng = random.Random(config.seed)
    result = ShrinkResult()
    for phase in phases(supernet.space, config):
        if phase.sort_first:
            sort_channels(supernet)
        losses = _train_phase(supernet, task, phase, config, rng)
        for epoch, loss in enumerate(losses):
            result.history.append({"phase": phase.name, "epoch": epoch, "loss": loss})
    supernet.eval()
    return result


def _train_phase(
    supernet: OFASupernet,
    task: TensorTask,
    phase: Phase,
    config: ShrinkConfig,
    rng: random.Random,
) -> list[float]:
    y = task.y_train
    steps = math.ceil(len(y) / config.batch_size)
    optimizer = _optimizer(supernet, phase.lr, config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, phase.epochs * steps)
    losses = []
    epochs = tqdm(range(phase.epochs), desc=phase.name, disable=not config.progress, leave=False)
    for epoch in epochs:
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        supernet.train()
        for start in range(0, len(y), config.batch_size):
            index = order[start : start + config.batch_size]
            total += _sandwich_step(supernet, task, index, phase.space, config, rng)
            optimizer.step()
            scheduler.step()
        losses.append(total / steps)
        epochs.set_postfix(loss=f"{losses[-1]:.3f}")
        logger.info(
            f"progressive shrinking: {phase.name} epoch {epoch + 1}/{phase.epochs} "
            f"loss {losses[-1]:.3f}"
        )
    return losses


def _sandwich_step(
    supernet: OFASupernet,
    task: TensorTask,
    index: torch.Tensor,
    space: SearchSpace,
    config: ShrinkConfig,
    rng: random.Random,
) -> float:
    """Backward of the largest, the smallest and ``sandwich`` random networks of ``space``."""
    supernet.zero_grad(set_to_none=True)
    x, y = task.x_train[index], task.y_train[index]
    largest = space.largest()
    logits = supernet(x, largest)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    soft = logits.detach()
    total = loss.item()
    for arch in [space.smallest(), *(space.sample(rng) for _ in range(config.sandwich))]:
        total += _student_loss(supernet, x, arch, soft, y, config)
    return total


def _student_loss(
    supernet: OFASupernet,
    x: torch.Tensor,
    arch: Arch,
    soft: torch.Tensor,
    y: torch.Tensor,
    config: ShrinkConfig,
) -> float:
    logits = supernet(x, arch)
    kd = logit_distillation_loss(logits, soft, config.kd_temperature)
    loss = config.kd_alpha * kd + (1 - config.kd_alpha) * F.cross_entropy(logits, y)
    loss.backward()
    return loss.item()


def _optimizer(supernet: OFASupernet, lr: float, config: ShrinkConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum; no weight decay on norms, biases or kernel transforms."""
    decay, no_decay = [], []
    for name, param in supernet.named_parameters():
        (no_decay if param.dim() <= 1 or "transforms" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=True)
