"""``Task``: the data, loss and metric a method needs to train or judge a model.

``Task`` is the interface (DESIGN.md, "Core objects"): named splits that yield batches
``(inputs, targets)`` of any structure (see ``mobiledl.core.inputs``: image batches, clips
``(N, T, C, H, W)``, token ids with masks, point sets), a loss, a metric and an example
input. Nothing that trains, evaluates, profiles or deploys a model needs more than this.

``TensorTask`` is the in-memory implementation every built-in task uses: one tensor of
inputs and one of class labels per split. Image classification is a ``TensorTask`` with
float ``(N, C, H, W)`` inputs; sequence classification one with int64 ``(N, L)`` token ids.

A task of your own subclasses ``Task``: set ``name``, ``num_classes`` and ``input_kind``,
implement ``loader``, ``num_samples`` and ``example_input``; override ``input_specs`` to
name the inputs or give integer inputs their range, and ``loss`` / ``metric`` if
cross-entropy and top-1 accuracy do not fit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mobiledl.core.inputs import IMAGE, TOKENS, Inputs, InputSpec, kind_label, specs_of
from mobiledl.errors import UserError

SPLITS = ("train", "val", "test")

#: One batch: the model's inputs and the targets the loss and metric compare outputs with.
Batch = tuple[Inputs, torch.Tensor]


def top1_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose arg-max logit is the target class."""
    return (logits.argmax(dim=1) == targets).float().mean().item()


class Task(ABC):
    """Batches of a train, val and test split, plus the loss and metric that judge a model.

    - ``name``: what results call the task; ``num_classes``: outputs a classifier needs.
    - ``input_kind``: what the inputs are (``"image"``, ``"tokens"``, or a kind of your own);
      a method that only handles some kinds refuses the others with a clear error.
    - ``loader(split, ...)`` yields ``(inputs, targets)`` batches; ``num_samples(split)``
      counts the split's samples.
    - ``example_input(batch_size)`` is a real batch of inputs (for tracing, export and
      profiling); ``input_specs()`` describes the inputs without data.
    """

    name: str
    num_classes: int
    input_kind: str
    splits: tuple[str, ...] = SPLITS

    @abstractmethod
    def loader(
        self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0
    ) -> Iterable[Batch]:
        """Batches of one split; shuffling, if asked for, is seeded by ``seed``."""

    @abstractmethod
    def num_samples(self, split: str) -> int:
        """Number of samples in one split."""

    @abstractmethod
    def example_input(self, batch_size: int = 1) -> Inputs:
        """A real batch of ``batch_size`` inputs."""

    def input_specs(self) -> tuple[InputSpec, ...]:
        """The inputs' names, shapes (dynamic batch), dtypes and integer ranges."""
        return specs_of(self.example_input(1))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (default: cross-entropy)."""
        return F.cross_entropy(outputs, targets)

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The score of outputs over a whole split (default: top-1 accuracy)."""
        return top1_accuracy(outputs, targets)

    def check_split(self, split: str) -> None:
        """``UserError`` unless ``split`` is one of ``splits``."""
        if split not in self.splits:
            raise UserError(f"unknown split '{split}'; choose one of {', '.join(self.splits)}")


@dataclass
class TensorTask(Task):
    """Train/val/test tensors plus the loss and metric that judge a model on them.

    ``x_*`` are the inputs, ``(N, *input_shape)``: normalized float32 images ``(N, C, H, W)``
    for ``input_kind="image"``, int64 token ids ``(N, L)`` in ``[0, vocab_size)`` for
    ``"tokens"``. ``y_*`` are int64 class indices in ``[0, num_classes)``. Data is held in
    memory: the embedded datasets and the on-device settings mobiledl targets are small.
    ``input_name`` names the input in ``input_specs`` (and so in exported graphs).
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
    input_kind: str = IMAGE
    input_name: str = "input"
    vocab_size: int | None = None

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
        if self.input_kind == TOKENS:
            self._check_tokens()

    def _check_tokens(self) -> None:
        if self.vocab_size is None or self.vocab_size < 1:
            raise UserError(f"task '{self.name}': token inputs need a vocab_size >= 1")
        for split in SPLITS:
            x = self.split(split)[0]
            if x.dtype.is_floating_point or x.dim() != 2:
                raise UserError(
                    f"task '{self.name}': token ids must be an integer (N, L) tensor; the "
                    f"{split} split is {str(x.dtype).removeprefix('torch.')} {list(x.shape)}"
                )
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise UserError(
                    f"task '{self.name}': {split} token ids must lie in [0, {self.vocab_size})"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input without the batch dimension, e.g. ``(1, 8, 8)`` or ``(40,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_channels(self) -> int:
        """Channels of an image input; ``UserError`` for other kinds of input."""
        return self._image_shape()[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of an image input; ``UserError`` for other kinds of input."""
        return tuple(self._image_shape()[1:3])  # type: ignore[return-value]

    def _image_shape(self) -> tuple[int, ...]:
        if self.input_kind != IMAGE:
            raise UserError(
                f"task '{self.name}' gives {kind_label(self.input_kind)}, not images "
                "(no channels or image size)"
            )
        return self.input_shape

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the ``train``, ``val`` or ``test`` split."""
        self.check_split(name)
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def num_samples(self, split: str) -> int:
        return len(self.split(split)[1])

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

    def input_specs(self) -> tuple[InputSpec, ...]:
        high = self.vocab_size if self.input_kind == TOKENS else None
        shape = (None, *self.input_shape)
        return (InputSpec(self.input_name, shape, self.x_train.dtype, high),)
