"""Deep Compression storage: relative-index sparse bytes (with filler entries) and Huffman."""

import numpy as np
import pytest
import torch
from torch import nn

from mobiledl.compress.encode import (
    huffman_bytes,
    huffman_code_lengths,
    model_storage,
    relative_index_encoding,
    sparse_relative_index_bytes,
)
from mobiledl.errors import UserError


def test_gap_overflow_inserts_filler_zeros() -> None:
    weight = torch.zeros(30)
    weight[0], weight[20] = 1.0, 2.0
    symbols, positions = relative_index_encoding(weight, index_bits=3)
    assert positions.tolist() == [0, 8, 16, 20]
    assert symbols.tolist() == [0, 7, 7, 3]
    assert sparse_relative_index_bytes(weight, 3, 32) == 18  # 4 entries * 35 bits = 140 bits


def test_gaps_that_fit_need_no_filler() -> None:
    weight = torch.zeros(2, 8)
    weight[0, 3], weight[1, 3] = 1.0, -1.0  # flat positions 3 and 11: gaps 4 and 8
    symbols, _ = relative_index_encoding(weight, index_bits=3)
    assert symbols.tolist() == [3, 7]
    assert sparse_relative_index_bytes(weight, 3, 8) == 3  # 2 entries * 11 bits = 22 bits


def test_empty_and_dense_tensors() -> None:
    assert sparse_relative_index_bytes(torch.zeros(5), 4, 32) == 0
    assert sparse_relative_index_bytes(torch.ones(4), 4, 4) == 4


def test_huffman_lengths_on_a_dyadic_distribution() -> None:
    symbols = [0] * 8 + [1] * 4 + [2] * 2 + [3] * 2
    assert huffman_code_lengths(symbols) == {0: 1, 1: 2, 2: 3, 3: 3}
    assert huffman_bytes(np.array(symbols)) == 4  # 8 + 8 + 6 + 6 = 28 bits
    assert huffman_bytes(torch.tensor(symbols)) == 4


def test_huffman_edge_cases() -> None:
    assert huffman_code_lengths([5, 5, 5]) == {5: 1}
    assert huffman_bytes([]) == 0
    with pytest.raises(UserError, match="integer symbols"):
        huffman_bytes([0.5, 1.5])


def test_model_storage_sparse_weights_and_dense_biases() -> None:
    layer = nn.Linear(32, 4)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, 0] = 1.0  # flat positions 0, 32, 64, 96: gaps 1 then 32 (fits 5 bits)
    storage = model_storage(layer)
    assert storage.dense_bytes == (128 + 4) * 4
    assert storage.sparse_bytes == 4 * 37 // 8 + 1 + 16
    assert storage.compression == pytest.approx(storage.dense_bytes / storage.sparse_bytes)
