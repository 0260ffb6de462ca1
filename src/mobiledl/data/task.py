"""``Task``: the data, loss and metric a method needs to train or judge a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mobiledl.errors import UserError

SPLITS = ("train", "val", "test")


def top1_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose arg-max logit is the target class."""
    return (logits.argmax(dim=1) == targets).float().mean().item()


@dataclass
class Task:
    """Train/val/test tensors plus the loss and metric that judge a model on them.

    ``x_*`` are float32 tensors shaped ``(N, *input_shape)``, already normalized;
    ``y_*`` are int64 class indices in ``[0, num_classes)``. Data is held in memory:
    the embedded datasets and the on-device settings mobiledl targets are small.
    """

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    metric: Callable[[torch.Tensor, torch.Tensor], float] = top1_accuracy
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for split in SPLITS:
            x, y = self.split(split)
            if len(x) != len(y):
                raise UserError(
                    f"task '{self.name}': {split} split has {len(x)} inputs but {len(y)} labels"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise UserError(
                    f"task '{self.name}': {split} labels must lie in [0, {self.num_classes}), "
                    f"found {int(y.min())}..{int(y.max())}"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input without the batch dimension, e.g. ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of an image input."""
        return tuple(self.input_shape[1:3])  # type: ignore[return-value]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the ``train``, ``val`` or ``test`` split."""
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}'; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def loader(
        self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0
    ) -> DataLoader:
        """A ``DataLoader`` over one split; shuffling is seeded for reproducibility."""
        x, y = self.split(split)
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=generator
        )

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A real input batch (the first test samples), for tracing, export and profiling."""
        x = self.x_test if len(self.x_test) else self.x_train
        if len(x) >= batch_size:
            return x[:batch_size].clone()
        repeats = -(-batch_size // len(x))
        return x.repeat(repeats, *([1] * (x.dim() - 1)))[:batch_size].clone()
