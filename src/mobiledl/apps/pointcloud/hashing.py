"""Coordinate hashing: voxel coordinates as int64 keys and a hash table over them.

Sparse convolution needs, for every site and kernel offset, the row of the neighbouring site
if it is active. Choy et al. ("4D Spatio-Temporal ConvNets: Minkowski Convolutional Neural
Networks", CVPR 2019) and Tang et al. ("Searching Efficient 3D Architectures with Sparse
Point-Voxel Convolution", ECCV 2020, torchsparse) answer it with a hash table of the active
coordinates instead of a dense grid of the scene. Here, in vectorized PyTorch:

- ``pack``: ``(batch, x, y, z)`` -> one int64 key, 16 bits per axis in offset binary, so a
  kernel offset is a constant added to the key (``offset_keys``) and never wraps while
  ``|coordinate| < COORD_LIMIT``;
- ``CoordHash``: a table of ``>= 8 N`` slots addressed by a Fibonacci hash of the key; a slot
  keeps its lowest row, the few keys that collide go to a sorted spill list;
- ``CoordHash.pairs``: every ``(offset, query, row)`` with ``key + delta`` present, for all
  offsets at once: one hash, one table gather and one ``nonzero`` over ``K x Q`` candidates,
  the exact key comparisons only on the occupied slots.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mobiledl.errors import UserError

FIELD_BITS = 16
HALF = 1 << (FIELD_BITS - 1)
FIELD_MASK = (1 << FIELD_BITS) - 1
#: Coordinates must lie in ``(-COORD_LIMIT, COORD_LIMIT)``: the rest of a field is the reach
#: of kernel offsets and strides.
COORD_LIMIT = HALF - 1024
MAX_BATCH = HALF - 1
#: Weights of (batch, x, y, z) in a key.
PLACES = torch.tensor([1 << 48, 1 << 32, 1 << 16, 1], dtype=torch.int64, device="cpu")  # not meta
BIAS = HALF * ((1 << 32) + (1 << 16) + 1)
#: 2^64 / golden ratio, as a signed int64 (Knuth's multiplicative hashing).
GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
#: Table slots per key (load factor 1/8: few collisions, most probes hit an empty slot).
SLOTS_PER_KEY = 8


def check_coords(coords: Tensor, what: str = "coordinates") -> None:
    """``UserError`` unless ``coords`` is an integer ``(N, 4)`` tensor of packable values."""
    if coords.dim() != 2 or coords.shape[1] != 4 or coords.dtype not in (torch.int32, torch.int64):
        raise UserError(
            f"{what} must be an int32/int64 (N, 4) tensor of (batch, x, y, z); got "
            f"{coords.dtype} {tuple(coords.shape)}"
        )
    if coords.numel() == 0:
        return
    low, high = (part.tolist() for part in torch.aminmax(coords, dim=0))
    if max(high[1:]) >= COORD_LIMIT or min(low[1:]) <= -COORD_LIMIT:
        raise UserError(f"{what} must lie within +-{COORD_LIMIT - 1} voxels; use a larger voxel")
    if low[0] < 0 or high[0] > MAX_BATCH:
        raise UserError(f"batch indices of {what} must lie in [0, {MAX_BATCH}]")


def pack(coords: Tensor) -> Tensor:
    """int64 keys of integer ``(batch, x, y, z)`` rows (order-preserving: batch, x, y, z)."""
    return (coords.long() * PLACES).sum(1) + BIAS


def unpack(keys: Tensor) -> Tensor:
    """The ``(N, 4)`` int64 coordinates of ``pack``'s keys."""
    fields = [(keys >> shift) & FIELD_MASK for shift in (32, 16, 0)]
    return torch.stack([keys >> 48, *(field - HALF for field in fields)], dim=1)


def offset_keys(offsets: Tensor) -> Tensor:
    """What each ``(dx, dy, dz)`` row of ``offsets`` adds to a key."""
    return (offsets.long() * PLACES[1:]).sum(1)


class CoordHash:
    """A hash table of unique int64 keys (see the module docstring); rows are key indices."""

    def __init__(self, keys: Tensor) -> None:
        self.keys = keys
        self.size = keys.numel()
        self.bits = max(4, (SLOTS_PER_KEY * self.size - 1).bit_length())
        if self.size >= 1 << 31:
            raise UserError(f"{self.size} active sites are more than a hash table holds (2^31)")
        slots = self._slots(keys * GOLDEN)
        rows = torch.arange(1, self.size + 1)
        # Per slot: its lowest row + 1 (deterministic), negated when more keys share the
        # slot (those others are in the spill list); 0 when empty.
        table = torch.zeros(1 << self.bits, dtype=torch.int64)
        table.scatter_reduce_(0, slots, rows, "amin", include_self=False)
        spilled = (table.index_select(0, slots) != rows).nonzero().squeeze(1)
        crowded = slots.index_select(0, spilled)
        table.index_put_((crowded,), -table.index_select(0, crowded))
        self.table = table.int()  # int32: half the bytes of the gathers over all queries
        self.spill_keys, order = torch.sort(keys.index_select(0, spilled))
        self.spill_rows = spilled.index_select(0, order)

    def _slots(self, hashed: Tensor) -> Tensor:
        """The table slots of hashed keys (top bits; computed in place)."""
        return hashed.bitwise_right_shift_(64 - self.bits).bitwise_and_((1 << self.bits) - 1)

    def pairs(self, queries: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(offset, query, row)``: every offset index ``k`` and query index ``i`` with
        ``queries[i] + deltas[k]`` stored at ``row``, ordered by ``k`` then ``i``."""
        wanted = (queries.unsqueeze(0) + deltas.unsqueeze(1)).view(-1)
        entries = self.table.index_select(0, self._slots(wanted * GOLDEN))
        candidate = entries.nonzero().squeeze(1)
        row, hit = self._resolve(
            wanted.index_select(0, candidate), entries.index_select(0, candidate)
        )
        found = hit.nonzero().squeeze(1)
        flat = candidate.index_select(0, found)
        offset = torch.div(flat, queries.numel(), rounding_mode="floor")
        return offset, flat - offset * queries.numel(), row.index_select(0, found)

    def _resolve(self, wanted: Tensor, entry: Tensor) -> tuple[Tensor, Tensor]:
        """Each ``wanted`` key's row given its slot's table entry, and whether it is there."""
        row = entry.abs().long() - 1
        hit = self.keys.index_select(0, row) == wanted
        crowded = (entry < 0).nonzero().squeeze(1)
        if crowded.numel():
            keys = wanted.index_select(0, crowded)
            place = torch.searchsorted(self.spill_keys, keys).clamp_(
                max=self.spill_keys.numel() - 1
            )
            spilled = (self.spill_keys.index_select(0, place) == keys).nonzero().squeeze(1)
            row.index_copy_(
                0,
                crowded.index_select(0, spilled),
                self.spill_rows.index_select(0, place.index_select(0, spilled)),
            )
            hit.index_fill_(0, crowded.index_select(0, spilled), True)
        return row, hit

    def find(self, queries: Tensor) -> Tensor:
        """The row of every query key, -1 where it is absent."""
        found = torch.full_like(queries, -1)
        _, query, row = self.pairs(queries, torch.zeros(1, dtype=torch.int64))
        return found.index_copy_(0, query, row)
