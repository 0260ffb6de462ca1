"""Storage size of compressed weights: a sparse format with relative indices and Huffman coding
(Han et al. 2016, "Deep Compression", Sec. 2 and 4).

Sparse format: the non-zeros of a tensor, in row-major order over the flattened tensor, each
stored as (index gap, value). The gap to the previous stored entry lies in ``1 .. 2**bits``
and is stored as ``gap - 1`` (the run of zeros before the entry) in ``index_bits`` bits.
When a gap is larger, a filler entry with value zero is stored ``2**bits`` positions after
the previous one, as many times as needed (Deep Compression, Fig. 2). One stream covers the
whole tensor, so no row pointers are needed: the decoder knows the shape. Deep Compression
uses 8-bit gaps for convolutions and 5-bit gaps for fully connected layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from mobiledl.errors import UserError
from mobiledl.models.entropy import code_lengths, relative_index_encoding

Symbols = Sequence[int] | np.ndarray | torch.Tensor
CONV_INDEX_BITS = 8
FC_INDEX_BITS = 5


def sparse_relative_index_bytes(weight: torch.Tensor, index_bits: int, value_bits: int) -> int:
    """Bytes of ``weight`` in the relative-index sparse format: every stored entry (non-zero
    or filler) costs ``index_bits + value_bits`` bits; the total is rounded up to bytes."""
    if value_bits < 1:
        raise UserError(f"value_bits must be >= 1; got {value_bits}")
    symbols, _ = relative_index_encoding(weight, index_bits)
    return math.ceil(len(symbols) * (index_bits + value_bits) / 8)


def dense_bytes(tensor: torch.Tensor, value_bits: int = 32) -> int:
    """Bytes of ``tensor`` stored densely at ``value_bits`` bits per element."""
    return math.ceil(tensor.numel() * value_bits / 8)


@dataclass
class StorageReport:
    """Weight storage of a model, dense versus with sparse layers in the relative-index format.

    ``sparse_bytes`` stores each convolution / linear weight in the sparse format or densely,
    whichever is smaller, and every other parameter (biases, norms) densely.
    """

    dense_bytes: int
    sparse_bytes: int

    @property
    def compression(self) -> float:
        return self.dense_bytes / self.sparse_bytes if self.sparse_bytes else math.inf

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "compression": self.compression}


def model_storage(
    model: nn.Module,
    value_bits: int = 32,
    conv_index_bits: int = CONV_INDEX_BITS,
    fc_index_bits: int = FC_INDEX_BITS,
) -> StorageReport:
    """Dense and sparse-format bytes of all parameters of ``model``."""
    dense = sparse = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            size = dense_bytes(param, value_bits)
            dense += size
            bits = _index_bits(module, name, conv_index_bits, fc_index_bits)
            if bits is not None:
                size = min(size, sparse_relative_index_bytes(param, bits, value_bits))
            sparse += size
    return StorageReport(dense_bytes=dense, sparse_bytes=sparse)


def _index_bits(module: nn.Module, name: str, conv_bits: int, fc_bits: int) -> int | None:
    if name != "weight":
        return None
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return conv_bits
    return fc_bits if isinstance(module, nn.Linear) else None


def _as_array(symbols: Symbols) -> np.ndarray:
    if isinstance(symbols, torch.Tensor):
        symbols = symbols.detach().cpu().numpy()
    array = np.asarray(symbols).ravel()
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"Huffman coding takes integer symbols; got dtype {array.dtype}")
    return array


def huffman_code_lengths(symbols: Symbols) -> dict[int, int]:
    """Code length in bits of each distinct symbol in an optimal prefix code (Huffman 1952)
    for the symbols' empirical frequencies. A lone distinct symbol gets 1 bit."""
    values, counts = np.unique(_as_array(symbols), return_counts=True)
    return code_lengths(values, counts)


def huffman_bytes(symbols: Symbols) -> int:
    """Bytes of the Huffman-coded symbol stream (the code table is not counted)."""
    values, counts = np.unique(_as_array(symbols), return_counts=True)
    if not len(values):
        return 0
    lengths = code_lengths(values, counts)
    bits = sum(int(c) * lengths[int(v)] for v, c in zip(values, counts, strict=True))
    return math.ceil(bits / 8)
