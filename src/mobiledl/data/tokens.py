"""Sequence-classification tasks: real-valued sequences quantized into token ids.

Each value of a sequence becomes the index of the quantile bin it falls in, with the bin
edges taken from the training split alone (so validation and test data do not leak into
the vocabulary). Equal-frequency bins use every token about equally often.
"""

from __future__ import annotations

import numpy as np
import torch

from mobiledl.core.inputs import TOKENS
from mobiledl.core.task import TensorTask
from mobiledl.data.prepare import DEFAULT_SPLIT, Split, split_indices
from mobiledl.errors import UserError


def bin_edges(values: np.ndarray, vocab_size: int) -> np.ndarray:
    """The ``vocab_size - 1`` inner edges of equal-frequency bins of ``values``."""
    if vocab_size < 2:
        raise UserError(f"a token vocabulary needs at least 2 ids; got {vocab_size}")
    quantiles = np.arange(1, vocab_size) / vocab_size
    return np.quantile(values.astype(np.float64).ravel(), quantiles)


def quantize(values: np.ndarray, edges: np.ndarray) -> torch.Tensor:
    """Token ids (int64, same shape as ``values``): the bin each value falls in."""
    return torch.from_numpy(np.digitize(values, edges).astype(np.int64))


def make_token_task(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    vocab_size: int,
    seed: int,
    class_names: list[str],
    split: Split = DEFAULT_SPLIT,
) -> TensorTask:
    """A ``TensorTask`` of token ids from ``(N, L)`` sequences ``x`` with a fixed test split.

    Train and validation are split from ``(x, y)`` exactly as the image tasks split data
    with a test split of their own (``split_indices``), so the same samples land in the
    same splits as in the image form of the data.
    """
    if x.ndim != 2 or x_test.ndim != 2 or x.shape[1] != x_test.shape[1]:
        raise UserError(
            f"{name}: sequences must be (N, L) with one length; got {x.shape} and {x_test.shape}"
        )
    train, val = split_indices(y, seed, True, split)
    edges = bin_edges(x[train], vocab_size)
    labels = torch.as_tensor(y, dtype=torch.int64)
    return TensorTask(
        name=name,
        num_classes=len(class_names),
        x_train=quantize(x[train], edges),
        y_train=labels[train],
        x_val=quantize(x[val], edges),
        y_val=labels[val],
        x_test=quantize(x_test, edges),
        y_test=torch.as_tensor(y_test, dtype=torch.int64),
        class_names=list(class_names),
        input_kind=TOKENS,
        input_name="tokens",
        vocab_size=vocab_size,
    )
