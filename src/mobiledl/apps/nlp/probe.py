"""Judge a sentence encoder without training it: a linear probe on frozen embeddings.

The probe is a logistic regression fitted on the train split's embeddings and scored on the
test split (the SentEval protocol, Conneau & Kiela 2018); the encoder's weights never move,
so the probe measures how much of the task the embeddings still carry after compression.
``mean_cosine`` compares two encoders' embeddings of the same sentences.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from mobiledl.errors import UserError

#: ``(input_ids, attention_mask) -> (N, hidden)`` embeddings: a module or an engine runner.
Embedder = Callable[[Tensor, Tensor], Tensor | np.ndarray]

PROBE_C = 1.0
PROBE_ITERATIONS = 2000


@torch.no_grad()
def embed(embedder: Embedder, inputs: dict[str, Tensor], batch_size: int = 64) -> np.ndarray:
    """``(N, hidden)`` embeddings of a split's ``input_ids`` / ``attention_mask``, in order.

    Texts are batched by length (shortest first) and each batch is cut to its longest text,
    so a batch of short texts does not run over the padding of the longest one.
    """
    mask = inputs["attention_mask"]
    if len(mask) == 0:
        raise UserError("no texts to embed")
    lengths = mask.sum(1)
    order = lengths.argsort(stable=True)
    pieces = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        width = max(2, int(lengths[index].max()))
        result = embedder(inputs["input_ids"][index, :width], mask[index, :width])
        pieces.append(np.asarray(result.numpy() if isinstance(result, Tensor) else result))
    out = np.empty((len(mask), pieces[0].shape[1]), np.float32)
    out[order.numpy()] = np.concatenate(pieces)
    return out


def probe_accuracy(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], seed: int = 0
) -> float:
    """Test accuracy of a logistic regression fitted on the train embeddings."""
    classifier = LogisticRegression(C=PROBE_C, max_iter=PROBE_ITERATIONS, random_state=seed)
    classifier.fit(*train)
    return float(classifier.score(*test))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows of two embedding matrices."""
    if a.shape != b.shape:
        raise UserError(f"cannot compare embeddings of shapes {a.shape} and {b.shape}")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = (a64 * b64).sum(1)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.mean(dots / np.maximum(norms, 1e-12)))
