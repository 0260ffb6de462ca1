"""The packed model file (format 2): a JSON header and every tensor in the smallest exact form.

Low-bit methods make weights that take few distinct values: k-means weight sharing (Deep
Compression, Han et al. ICLR 2016) 2**b per layer, BinaryConnect / XNOR-Net two per output
channel, ternary networks three. Stored as fp32 they take the same 4 bytes per weight as
before; this format stores each tensor in the smallest of these exact encodings:

- ``raw``: the values as they are (any dtype);
- ``fill``: a tensor of one value, stored as that value;
- ``bits``: ``uint8`` / ``bool`` tensors at the bit width their largest value needs;
- ``palette``: a float tensor with at most 256 distinct values (per tensor, or per output
  channel) as a float32 codebook plus one code per weight, bit-packed or Huffman-coded;
- ``sparse``: a palette tensor that is mostly zeros in Deep Compression's relative-index
  format (``mobiledl.compress.encode``): the gaps between nonzeros and their codes as two
  streams, each bit-packed or Huffman-coded (``mobiledl.models.entropy``);
- ``grid``: a weight on a linear ``b``-bit grid ``w = (q - z) * s`` (PTQ, QAT, mixed
  precision; Jacob et al. 2018) as its float32 scales and int32 zero points (one per output
  channel, or one) and one code ``q - qmin`` per weight, bit-packed at ``b`` bits or
  Huffman-coded. The writer is told the grid (``Grid``); it is used only where it gives
  back every value exactly.

Every encoding is lossless: loading gives back the identical tensors. The file is
``MAGIC``, a 4-byte little-endian header length, the zlib-compressed JSON header (record,
metadata and one entry per tensor with its byte count) and the tensors' bytes in entry
order. Reading checks every size against the file before anything is allocated and runs no
code from the file. A zip container (``torch.save``) would add about 1.3 KB to a file that
Deep Compression makes 5 KB.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobiledl.errors import UserError
from mobiledl.models.entropy import decode_stream, encode_stream, relative_index_encoding

MAGIC = b"MOBILEDL"
#: Longest header a file may claim, compressed and unpacked (a corrupt length cannot ask for
#: more memory).
MAX_HEADER_BYTES = 64 << 20
#: Most elements all tensors of one file may claim together (1 GB of fp32).
MAX_ELEMENTS = 1 << 28
#: Most distinct values a palette tensor has (codes fit one byte).
MAX_PALETTE = 256
#: Gap widths tried for the sparse encoding.
INDEX_BITS = range(2, 9)
#: zlib's preset dictionary for the header: typical record text (fixed: part of the format,
#: changing it makes older files unreadable). It halves a small model's header.
HEADER_DICTIONARY = (
    b'{"format":"mobiledl-model","version":2,"arch":{"name":"","num_classes":10,"in_channels":'
    b'1,"image_size":[8,8],"width_mult":1.0,"history":[]},"meta":{}}{"granularity":"element","'
    b'criterion":"l1","sparsity":0.5,"macs_ratio":null,"scope":"global","schedule":"oneshot","'
    b'steps":5,"finetune":{"epochs":0,"batch_size":64,"optimizer":"sgd","lr":null,"momentum":0'
    b'.9,"weight_decay":0.0005,"warmup_epochs":1.0,"label_smoothing":0.0,"seed":0,"kd_temperat'
    b'ure":4.0,"kd_alpha":0.9,"progress":false},"agp_ramp":0.75,"rewind_epochs":0.0,"exclude":'
    b'[],"num_batches":8,"slimming_epochs":0,"bn_l1":0.0001,"keep_masks":false,"overrides":[]}'
    b'{"bits":8,"layers":null,"finetune":{"epochs":0,"batch_size":64,"optimizer":"sgd","lr":0.'
    b'01,"momentum":0.9,"weight_decay":0.0005,"warmup_epochs":1.0,"label_smoothing":0.0,"seed"'
    b':0,"kd_temperature":4.0,"kd_alpha":0.9,"progress":false},"overrides":[]}{"name":"feature'
    b's.0.weight","dtype":"float32","shape":[],"codec":"sparse","k":16,"index_bits":5,"gaps":{'
    b'"a":32,"n":0,"h":1,"z":0},"codes":{"a":17,"n":0,"h":1,"z":0},"z":0}{"name":"features.0.b'
    b'ias","dtype":"float32","shape":[],"codec":"raw","z":0}'
)
_NUMPY = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": np.int16,  # no numpy bfloat16: the raw 16-bit patterns
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}
#: Float dtypes a palette encoding may hold (its codebook is float32).
_PALETTE_DTYPES = ("float32", "float64", "float16")


@dataclass(frozen=True)
class Grid:
    """The linear grid a weight sits on: ``w = (q - zero_point) * scale`` with integer codes
    ``q`` in ``[qmin, qmax]``; ``scale`` (float32) and ``zero_point`` (int) hold one entry per
    output channel (the weight's first dimension) or one for the whole tensor."""

    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int


def is_packed_file(path: Path) -> bool:
    """Whether ``path`` starts with the packed format's magic bytes."""
    with path.open("rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def write_packed(
    record: dict[str, Any], state: dict[str, torch.Tensor], grids: dict[str, Grid] | None = None
) -> bytes:
    """The bytes of a packed file holding the JSON-like ``record`` and the tensors; ``grids``
    names the linear grids some tensors sit on (tried as the ``grid`` encoding)."""
    entries, chunks = [], []
    grids = grids or {}
    for name, tensor in state.items():
        entry, data = encode_tensor(tensor.detach().cpu(), grids.get(name))
        entries.append({"name": name, **entry, "z": len(data)})
        chunks.append(data)
    try:
        text = json.dumps({**record, "tensors": entries}, separators=(",", ":"))
    except TypeError as exc:
        raise UserError(f"cannot save the model: its record is not JSON-like ({exc})") from None
    deflater = zlib.compressobj(9, zdict=HEADER_DICTIONARY)
    header = deflater.compress(text.encode()) + deflater.flush()
    return b"".join([MAGIC, struct.pack("<I", len(header)), header, *chunks])


def read_packed(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The record and the tensors of the packed file at ``path``, checked; a one-line
    ``UserError`` naming the file and what is wrong otherwise."""
    try:
        return _read(path)
    except UserError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise UserError(f"{path} is not a readable mobiledl model file ({reason})") from None


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    data = path.read_bytes()
    start = len(MAGIC) + 4
    if len(data) < start:
        raise UserError(f"{path}: packed model file is truncated")
    (length,) = struct.unpack("<I", data[len(MAGIC) : start])
    if length > min(MAX_HEADER_BYTES, len(data) - start):
        raise UserError(f"{path}: header claims {length:,} bytes; the file holds fewer")
    record = _header(data[start : start + length], path)
    entries = record.pop("tensors", None)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: header has no list of tensor entries")
    return record, _tensors(entries, memoryview(data)[start + length :], path)


def _header(compressed: bytes, path: Path) -> dict[str, Any]:
    try:
        inflater = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        text = inflater.decompress(compressed, MAX_HEADER_BYTES)
        record = json.loads(text)
    except (zlib.error, ValueError) as exc:
        raise UserError(f"{path}: header is not readable ({str(exc)[:80]})") from None
    if inflater.unconsumed_tail or not isinstance(record, dict):
        raise UserError(f"{path}: header is not a JSON object of at most {MAX_HEADER_BYTES} B")
    return record


def _tensors(entries: list[dict[str, Any]], data: memoryview, path: Path) -> dict[str, Any]:
    sizes = [entry.get("z") for entry in entries]
    if not all(isinstance(z, int) and z >= 0 for z in sizes) or sum(sizes) != len(data):
        raise UserError(f"{path}: tensor sizes do not add up to the {len(data):,} data bytes")
    claimed = sum(math.prod(_shape(entry, path)) for entry in entries)
    if claimed > MAX_ELEMENTS:
        raise UserError(f"{path}: tensors claim {claimed:,} elements (at most {MAX_ELEMENTS:,})")
    state, offset = {}, 0
    for entry in entries:
        name = entry.get("name")
        if not isinstance(name, str) or name in state:
            raise UserError(f"{path}: tensor entry has a missing or repeated name {name!r:.60}")
        chunk = np.frombuffer(data[offset : offset + entry["z"]], dtype=np.uint8)
        state[name] = decode_tensor(entry, chunk, f"{path}: tensor '{name[:60]}'")
        offset += entry["z"]
    return state


def _shape(entry: dict[str, Any], path: Path) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise UserError(f"{path}: tensor '{str(entry.get('name'))[:60]}' has an invalid shape")
    return shape


# ---------------------------------------------------------------- encoding one tensor


def encode_tensor(tensor: torch.Tensor, grid: Grid | None = None) -> tuple[dict[str, Any], bytes]:
    """The smallest exact encoding of ``tensor``: its header entry and its bytes; ``grid``, the
    linear grid it is said to sit on, is tried too."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if dtype not in _NUMPY:
        raise UserError(f"cannot save a {tensor.dtype} tensor in a model file")
    base = {"dtype": dtype, "shape": list(tensor.shape)}
    raw = _raw_bytes(tensor, dtype)
    candidates = [({**base, "codec": "raw"}, raw)]
    flat = tensor.reshape(-1)
    if flat.numel() and bool((flat == flat[0]).all()) and dtype != "bfloat16":
        candidates.append(({**base, "codec": "fill", "value": flat[0].item()}, b""))
    elif dtype in ("uint8", "bool") and flat.numel():
        candidates.append(_bits(flat, base))
    elif dtype in _PALETTE_DTYPES and flat.numel() and bool(torch.isfinite(flat).all()):
        candidates.extend(_palettes(tensor, base))
        if grid is not None and dtype == "float32":
            candidates.extend(_on_grid(tensor, grid, base))
    return min(candidates, key=lambda candidate: len(candidate[1]))


def _raw_bytes(tensor: torch.Tensor, dtype: str) -> bytes:
    if dtype == "bfloat16":
        tensor = tensor.view(torch.int16)
    return tensor.contiguous().numpy().astype(_little(dtype), copy=False).tobytes()


def _little(dtype: str) -> np.dtype:
    return np.dtype(_NUMPY[dtype]).newbyteorder("<")


def _bits(flat: torch.Tensor, base: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    values = flat.to(torch.uint8).numpy()
    header, data = encode_stream(values, int(values.max()) + 1)
    return {**base, "codec": "bits", "codes": header}, data


def _palettes(tensor: torch.Tensor, base: dict[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
    """Palette encodings of a float tensor with few distinct values (per tensor, per row, and
    sparse when most values are zero)."""
    values = tensor.detach().float().numpy().reshape(-1)
    if not np.array_equal(values.astype(_NUMPY[base["dtype"]]), tensor.numpy().reshape(-1)):
        return []  # float64 values fp32 cannot hold exactly
    found = []
    palette, codes = np.unique(values, return_inverse=True)
    if palette.size <= MAX_PALETTE:
        header, data = encode_stream(codes, palette.size)
        found.append(
            ({**base, "codec": "palette", "k": palette.size, "codes": header}, _f32(palette) + data)
        )
        if palette[0] <= 0 <= palette[-1] and 0 in palette:
            found.append(_sparse(values, palette, codes, base))
    rows = tensor.shape[0] if tensor.dim() >= 2 else 1
    if rows > 1 and palette.size <= MAX_PALETTE * rows:  # else some row has too many values
        found.extend(_row_palette(values.reshape(rows, -1), base))
    return found


def row_palettes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """One palette per row of a 2-D array (per output channel of a weight): the ``(rows,
    width)`` table, each row padded with its last value, and the codes into each row's
    palette, flat in row order; ``None`` when some row has more than ``MAX_PALETTE`` values
    or the table would be as large as the array."""
    uniques = [np.unique(row, return_inverse=True) for row in rows]
    width = max(palette.size for palette, _ in uniques)
    if width > MAX_PALETTE or width * len(rows) >= rows.size:
        return None
    table = np.stack([np.pad(p, (0, width - p.size), mode="edge") for p, _ in uniques])
    return table, np.concatenate([inverse for _, inverse in uniques])


def _row_palette(rows: np.ndarray, base: dict[str, Any]) -> list[tuple[dict[str, Any], bytes]]:
    """One palette per output channel (binary weights: two values per channel)."""
    found = row_palettes(rows)
    if found is None:
        return []
    table, codes = found
    header, data = encode_stream(codes, table.shape[1])
    return [({**base, "codec": "rows", "k": table.shape[1], "codes": header}, _f32(table) + data)]


def _on_grid(
    tensor: torch.Tensor, grid: Grid, base: dict[str, Any]
) -> list[tuple[dict[str, Any], bytes]]:
    """The ``grid`` encoding, if ``grid`` gives back every value of ``tensor`` exactly."""
    rows = grid.scale.size
    levels = grid.qmax - grid.qmin + 1
    if grid.zero_point.size != rows or not 1 < levels <= MAX_PALETTE or tensor.dim() < 1:
        return []
    if rows > 1 and rows != tensor.shape[0]:
        return []
    values = tensor.numpy().reshape(rows, -1)
    scale = grid.scale.astype("<f4").reshape(rows, 1)
    zero_point = grid.zero_point.astype(np.int64).reshape(rows, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.clip(np.rint(values / scale) + zero_point, grid.qmin, grid.qmax)
    codes = np.nan_to_num(codes).astype(np.int64)
    if not np.array_equal(_grid_values(codes, scale, zero_point), values):
        return []
    header, data = encode_stream(codes.reshape(-1) - grid.qmin, levels)
    entry = {**base, "codec": "grid", "rows": rows, "qmin": grid.qmin, "k": levels}
    tables = scale.tobytes() + zero_point.astype("<i4").tobytes()
    return [({**entry, "codes": header}, tables + data)]


def _grid_values(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """``(q - z) * s`` in float32, as the fake quantizers compute it."""
    return (codes - zero_point).astype(np.float32) * scale


def _sparse(
    values: np.ndarray, palette: np.ndarray, codes: np.ndarray, base: dict[str, Any]
) -> tuple[dict[str, Any], bytes]:
    """Deep Compression's sparse format: relative-index gaps and the nonzeros' codes, with
    the gap width that gives the fewest bytes."""
    zero = int(np.flatnonzero(palette == 0)[0])
    nonzero = np.delete(palette, zero)
    shifted = np.where(codes > zero, codes - 1, codes)  # codes into ``nonzero``
    mask = values != 0
    best: tuple[dict[str, Any], bytes] | None = None
    for index_bits in INDEX_BITS:
        gaps, stored = relative_index_encoding(mask, index_bits)
        filler = nonzero.size  # the code of a filler entry, decoded as zero
        symbols = np.where(values[stored] != 0, shifted[stored], filler)
        gap_header, gap_data = encode_stream(gaps, 1 << index_bits)
        code_header, code_data = encode_stream(symbols, filler + 1)
        entry = {**base, "codec": "sparse", "k": int(nonzero.size), "index_bits": index_bits}
        entry.update(gaps=gap_header, codes=code_header)
        candidate = (entry, _f32(nonzero) + gap_data + code_data)
        if best is None or len(candidate[1]) < len(best[1]):
            best = candidate
    assert best is not None
    return best


def _f32(values: np.ndarray) -> bytes:
    return values.astype("<f4").tobytes()


# ---------------------------------------------------------------- decoding one tensor


def decode_tensor(entry: dict[str, Any], data: np.ndarray, where: str) -> torch.Tensor:
    """The tensor one header entry and its bytes describe (sizes checked first)."""
    dtype, shape, codec = entry.get("dtype"), entry.get("shape"), entry.get("codec")
    if dtype not in _NUMPY:
        raise UserError(f"{where} has no valid dtype")
    count = math.prod(shape)
    if codec == "raw":
        values = _decode_raw(data, dtype, count, where)
    elif codec == "fill":
        values = _decode_fill(entry.get("value"), dtype, count, where)
    elif codec == "bits":
        values = decode_stream(entry.get("codes"), data, where)
        if dtype == "bool" and values.size and values.max() > 1:
            raise UserError(f"{where} holds values other than 0/1 for a bool tensor")
    elif codec in ("palette", "rows", "sparse"):
        values = _decode_palette(entry, codec, data, count, shape, where)
    elif codec == "grid":
        values = _decode_grid(entry, data, count, shape, where)
    else:
        raise UserError(f"{where} has an unknown codec {codec!r:.20}")
    if values.size != count:
        raise UserError(f"{where} decodes to {values.size} values; its shape needs {count}")
    tensor = torch.from_numpy(np.ascontiguousarray(values).astype(_NUMPY[dtype])).reshape(shape)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _decode_raw(data: np.ndarray, dtype: str, count: int, where: str) -> np.ndarray:
    itemsize = np.dtype(_NUMPY[dtype]).itemsize
    if data.size != count * itemsize:
        raise UserError(f"{where} needs {count * itemsize} bytes; {data.size} are stored")
    return data.view(_little(dtype))


def _decode_fill(value: Any, dtype: str, count: int, where: str) -> np.ndarray:
    if isinstance(value, bool) and dtype != "bool" or not isinstance(value, int | float):
        raise UserError(f"{where} has an invalid fill value")
    return np.full(count, value, dtype=_NUMPY[dtype])


def _decode_palette(
    entry: dict[str, Any], codec: str, data: np.ndarray, count: int, shape: list[int], where: str
) -> np.ndarray:
    k = entry.get("k")
    rows = shape[0] if codec == "rows" and shape else 1
    if not isinstance(k, int) or not 0 <= k <= MAX_PALETTE or data.size < 4 * k * rows:
        raise UserError(f"{where} has an invalid palette")
    table = data[: 4 * k * rows].view("<f4").reshape(rows, k)
    rest = data[4 * k * rows :]
    if codec == "sparse":
        return _decode_sparse(entry, table[0], rest, count, where)
    codes = _stream(entry.get("codes"), rest, where, alphabet=k)
    if codes.size != count or rows * (count // max(rows, 1)) != count:
        raise UserError(f"{where} stores {codes.size} codes; its shape needs {count}")
    if codec == "rows":
        return np.take_along_axis(table, codes.reshape(rows, -1), axis=1).reshape(-1)
    return table[0][codes]


def _decode_grid(
    entry: dict[str, Any], data: np.ndarray, count: int, shape: list[int], where: str
) -> np.ndarray:
    rows, qmin, levels = entry.get("rows"), entry.get("qmin"), entry.get("k")
    fields = (rows, qmin, levels)
    if not all(isinstance(f, int) and not isinstance(f, bool) for f in fields):
        raise UserError(f"{where} has an invalid grid")
    if not (1 < levels <= MAX_PALETTE and abs(qmin) <= MAX_PALETTE and rows >= 1):
        raise UserError(f"{where} has an invalid grid")
    if rows > 1 and (not shape or shape[0] != rows) or count % rows or data.size < 8 * rows:
        raise UserError(f"{where}: its grid of {rows} rows does not fit its shape")
    scale = data[: 4 * rows].view("<f4").reshape(rows, 1)
    zero_point = data[4 * rows : 8 * rows].view("<i4").astype(np.int64).reshape(rows, 1)
    codes = _stream(entry.get("codes"), data[8 * rows :], where, alphabet=levels)
    if codes.size != count:
        raise UserError(f"{where} stores {codes.size} codes; its shape needs {count}")
    shifted = codes.astype(np.int64).reshape(rows, -1) + qmin
    return _grid_values(shifted, scale, zero_point).reshape(-1)


def _decode_sparse(
    entry: dict[str, Any], nonzero: np.ndarray, data: np.ndarray, count: int, where: str
) -> np.ndarray:
    gap_header = entry.get("gaps")
    gap_size = gap_header.get("z") if isinstance(gap_header, dict) else None
    if not isinstance(gap_size, int) or not 0 <= gap_size <= data.size:
        raise UserError(f"{where} has an invalid gap stream")
    index_bits = entry.get("index_bits")
    if index_bits not in INDEX_BITS:
        raise UserError(f"{where} has an invalid gap width")
    gaps = _stream(gap_header, data[:gap_size], where, alphabet=1 << index_bits)
    codes = _stream(entry.get("codes"), data[gap_size:], where, alphabet=nonzero.size + 1)
    positions = np.cumsum(gaps + 1) - 1
    if gaps.size != codes.size or (positions.size and positions[-1] >= count):
        raise UserError(f"{where}: its sparse entries do not fit its shape")
    values = np.zeros(count, dtype=np.float32)
    values[positions] = np.append(nonzero, np.float32(0))[codes]
    return values


def _stream(header: Any, data: np.ndarray, where: str, alphabet: int) -> np.ndarray:
    if not isinstance(header, dict) or header.get("z") != data.size:
        raise UserError(f"{where} has a stream whose size does not match its bytes")
    if header.get("a") != alphabet:
        raise UserError(
            f"{where} has a code stream over {header.get('a')!r:.12} symbols, not {alphabet}"
        )
    return decode_stream(header, data, where)
