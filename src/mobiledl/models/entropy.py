"""Symbol streams written to and read from bytes: fixed-width bit packing and canonical
Huffman codes (Huffman 1952), as Deep Compression stores its cluster indices and
relative-index gaps (Han et al., ICLR 2016, Sec. 4), and the relative-index sparse format
itself (:func:`relative_index_encoding`; ``mobiledl.compress.encode`` counts its bytes).

A stream is described by a small dict (``{"a": alphabet, "n": count, "h": 0|1, "z": bytes}``)
kept in the file's header; its bytes follow in the file's data. A Huffman stream starts
with its code table, one ``CODE_LENGTH_BITS``-bit code length per alphabet symbol (a
canonical code is rebuilt from the lengths alone), then the codes, most significant bit
first. :func:`encode_stream` writes whichever of the two is smaller; :func:`decode_stream`
checks every count and length against the bytes it is given before it allocates.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Any

import numpy as np
import torch

from mobiledl.errors import UserError

#: Bits of each code length in a Huffman stream's table.
CODE_LENGTH_BITS = 5
#: Longest code a Huffman stream may use (decoded through a 2**MAX_CODE_BITS lookup table);
#: a stream whose optimal code is longer is written at fixed width.
MAX_CODE_BITS = 16
#: Largest alphabet a stream may have.
MAX_ALPHABET = 1 << 16


def code_lengths(values: np.ndarray, counts: np.ndarray) -> dict[int, int]:
    """Huffman's construction: repeatedly merge the two least frequent groups; every merge
    adds one bit to the code of each symbol in them. Ties go to the earlier-made group.
    A lone distinct symbol gets 1 bit."""
    if len(values) == 1:
        return {int(values[0]): 1}
    order = itertools.count()
    heap = [(int(c), next(order), [int(v)]) for v, c in zip(values, counts, strict=True)]
    heapq.heapify(heap)
    lengths = dict.fromkeys((int(v) for v in values), 0)
    while len(heap) > 1:
        count_a, _, group_a = heapq.heappop(heap)
        count_b, _, group_b = heapq.heappop(heap)
        for value in group_a + group_b:
            lengths[value] += 1
        heapq.heappush(heap, (count_a + count_b, next(order), group_a + group_b))
    return lengths


def relative_index_encoding(
    weight: np.ndarray | torch.Tensor, index_bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """The stored index symbols (``gap - 1``) and the flat positions of the stored entries,
    fillers included (their value is zero)."""
    if index_bits < 1:
        raise UserError(f"index_bits must be >= 1; got {index_bits}")
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu().numpy()
    positions = np.flatnonzero(weight)
    max_gap = 1 << index_bits
    previous = np.concatenate([[-1], positions[:-1]])[: len(positions)]
    fillers = (positions - previous - 1) // max_gap
    starts = np.repeat(previous, fillers)
    within = np.arange(fillers.sum()) - np.repeat(np.cumsum(fillers) - fillers, fillers) + 1
    stored = np.sort(np.concatenate([positions, starts + max_gap * within]))
    return np.diff(stored, prepend=-1) - 1, stored


def fixed_width(alphabet: int) -> int:
    """Bits per symbol of a fixed-width stream over ``alphabet`` symbols (at least 1)."""
    return max(1, math.ceil(math.log2(alphabet)))


def pack_fixed(symbols: np.ndarray, width: int) -> bytes:
    """``symbols`` at ``width`` bits each, least significant bit first."""
    planes = (symbols.astype(np.uint32)[:, None] >> np.arange(width, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_fixed(data: np.ndarray, count: int, width: int) -> np.ndarray:
    """The ``count`` symbols :func:`pack_fixed` wrote at ``width`` bits (``data`` is checked
    to be long enough by the caller)."""
    planes = np.unpackbits(data, count=count * width, bitorder="little").reshape(count, width)
    weights = (1 << np.arange(width, dtype=np.int64)).astype(np.int64)
    return planes.astype(np.int64) @ weights


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical prefix code of each symbol given its code length (0: symbol unused):
    symbols sorted by (length, symbol) take consecutive codes, shifted at each new length."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        codes[symbol], previous = code, int(lengths[symbol])
        code += 1
    return codes


def encode_stream(symbols: np.ndarray, alphabet: int) -> tuple[dict[str, int], bytes]:
    """The smaller of the fixed-width and the Huffman-coded stream of ``symbols`` (integers in
    ``0 .. alphabet - 1``), with its header description."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    fixed = pack_fixed(symbols, fixed_width(alphabet))
    header = {"a": alphabet, "n": int(symbols.size), "h": 0, "z": len(fixed)}
    coded = _huffman(symbols, alphabet)
    if coded is not None and len(coded) < len(fixed):
        return {**header, "h": 1, "z": len(coded)}, coded
    return header, fixed


def _huffman(symbols: np.ndarray, alphabet: int) -> bytes | None:
    if not symbols.size:
        return None
    values, counts = np.unique(symbols, return_counts=True)
    lengths = np.zeros(alphabet, dtype=np.int64)
    for value, length in code_lengths(values, counts).items():
        lengths[value] = length
    if lengths.max() > MAX_CODE_BITS:
        return None
    table = pack_fixed(lengths, CODE_LENGTH_BITS)
    codes, sizes = canonical_codes(lengths)[symbols], lengths[symbols]
    owner = np.repeat(np.arange(symbols.size), sizes)
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    bits = (codes[owner] >> (sizes[owner] - 1 - within)) & 1
    return table + np.packbits(bits.astype(np.uint8)).tobytes()


def decode_stream(header: Any, data: np.ndarray, where: str) -> np.ndarray:
    """The symbols of one stream; a one-line ``UserError`` naming ``where`` if the header or
    the bytes do not describe a valid stream."""
    alphabet, count, size = (_field(header, key, where) for key in ("a", "n", "z"))
    if not 1 <= alphabet <= MAX_ALPHABET or size != data.size:
        raise UserError(f"{where}: stream header does not match its {data.size} bytes")
    if not _field(header, "h", where):
        width = fixed_width(alphabet)
        if size * 8 < count * width:
            raise UserError(f"{where}: {count} symbols need more than the {size} bytes stored")
        symbols = unpack_fixed(data, count, width)
    else:
        symbols = _decode_huffman(data, alphabet, count, where)
    if symbols.size and int(symbols.max()) >= alphabet:
        raise UserError(f"{where}: a stored symbol is outside its alphabet of {alphabet}")
    return symbols


def _field(header: Any, key: str, where: str) -> int:
    value = header.get(key) if isinstance(header, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where}: stream field '{key}' must be an integer >= 0")
    return value


def _decode_huffman(data: np.ndarray, alphabet: int, count: int, where: str) -> np.ndarray:
    table_bytes = math.ceil(alphabet * CODE_LENGTH_BITS / 8)
    if data.size < table_bytes:
        raise UserError(f"{where}: Huffman stream is shorter than its code table")
    lengths = unpack_fixed(data[:table_bytes], alphabet, CODE_LENGTH_BITS)
    used = lengths[lengths > 0]
    if not used.size or used.max() > MAX_CODE_BITS or (0.5 ** used.astype(float)).sum() > 1:
        raise UserError(f"{where}: Huffman code table is not a valid prefix code")
    bits = np.unpackbits(data[table_bytes:])
    if count * int(used.min()) > bits.size:
        raise UserError(f"{where}: {count} symbols need more than the bytes stored")
    return _walk(bits, lengths, count, where)


def _walk(bits: np.ndarray, lengths: np.ndarray, count: int, where: str) -> np.ndarray:
    """Decode ``count`` symbols through a lookup table indexed by the next ``longest`` bits."""
    longest = int(lengths.max())
    symbol_of = np.full(1 << longest, -1, dtype=np.int64)
    length_of = np.zeros(1 << longest, dtype=np.int64)
    for symbol, code in enumerate(canonical_codes(lengths)):
        if lengths[symbol]:
            shift = longest - int(lengths[symbol])
            symbol_of[code << shift : (code + 1) << shift] = symbol
            length_of[code << shift : (code + 1) << shift] = lengths[symbol]
    padded = np.concatenate([bits, np.zeros(longest, dtype=np.uint8)]).astype(np.int64)
    windows = np.zeros(bits.size, dtype=np.int64)
    for offset in range(longest):
        windows = (windows << 1) | padded[offset : offset + bits.size]
    windows_list, symbols, sizes = windows.tolist(), symbol_of.tolist(), length_of.tolist()
    out, position = [0] * count, 0
    for index in range(count):
        if position >= len(windows_list) or symbols[windows_list[position]] < 0:
            raise UserError(f"{where}: Huffman stream ends or breaks after {index} symbols")
        window = windows_list[position]
        out[index], position = symbols[window], position + sizes[window]
    if position > bits.size:
        raise UserError(f"{where}: Huffman stream ends inside its last code")
    return np.asarray(out, dtype=np.int64)
