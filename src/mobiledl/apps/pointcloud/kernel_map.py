"""Kernel maps: for every kernel offset the (input row, output row) pairs of a convolution.

Sparse convolution (Graham et al., CVPR 2018; Choy et al., CVPR 2019) computes each active
output site from the active input sites under its kernel. The map lists, per kernel offset,
which input row feeds which output row; it is built once from the coordinates' hash table
(``hashing.CoordHash``, no dense grid of the scene) and cached on the tensors' shared
``MapCache`` (the torchsparse design, Tang et al. 2020), so every layer with the same stride,
kernel and dilation reuses it:

- ``"sub"``, submanifold (Graham et al. 2018): outputs are the input sites; offset ``-d``
  holds the pairs of ``d`` swapped, so only half the offsets are looked up, and the centre is
  the identity (a plain matmul, no gather);
- ``"down"``, strided: outputs are the input coordinates floored to the new stride; each
  output looks up the inputs at ``output + d * input stride`` (Conv3d with padding
  ``(k - 1) // 2 * dilation``);
- ``"up"``, transposed: the downsampling map of the finer coordinates, reversed.

The pairs are stored grouped by offset and padded to the largest group, ``(G, M)``, so a
convolution is one gather, one batched GEMM and one scatter-add (``conv.apply_kernel_map``).
Input padding points at a zero row appended to the features (row ``n_in``), output padding at
row 0 (it adds exact zeros).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from mobiledl.apps.pointcloud.hashing import offset_keys, pack, unpack
from mobiledl.apps.pointcloud.sparse import MapCache, MapKey, SparseTensor
from mobiledl.errors import UserError

KINDS = ("sub", "down", "up")


@dataclass(frozen=True)
class KernelMap:
    """Pairs grouped by kernel offset (see the module docstring)."""

    weight_index: Tensor  # (G,) the kernel offset (weight row) of each group
    in_rows: Tensor  # (G, M) input rows, padding n_in
    out_rows: Tensor  # (G, M) output rows, padding 0
    counts: Tensor  # (G,) pairs in each group
    n_in: int
    n_out: int
    identity: int | None  # the offset applied as a plain matmul (submanifold centre)

    @functools.cached_property
    def weight_runs(self) -> tuple[tuple[int, int, int], ...]:
        """``(first group, end group, first weight row)`` of each run of groups whose weight
        rows are consecutive: the weights of a run are a view, never a copy."""
        runs: list[list[int]] = []
        for group, row in enumerate(self.weight_index.tolist()):
            if runs and runs[-1][1] == group and runs[-1][2] + group - runs[-1][0] == row:
                runs[-1][1] = group + 1
            else:
                runs.append([group, group + 1, row])
        return tuple((start, end, row) for start, end, row in runs)

    @property
    def pairs(self) -> int:
        """Input-output pairs, the centre's included: MACs = pairs * C_in * C_out."""
        return int(self.counts.sum()) + (self.n_in if self.identity is not None else 0)

    def reversed(self) -> KernelMap:
        """The map of the transposed convolution: outputs become inputs and back."""
        pad = torch.arange(self.in_rows.shape[1]) >= self.counts.unsqueeze(1)
        return KernelMap(
            self.weight_index,
            torch.where(pad, self.n_out, self.out_rows),
            torch.where(pad, 0, self.in_rows),
            self.counts,
            self.n_out,
            self.n_in,
            None,
        )


@functools.lru_cache(maxsize=64)
def offset_deltas(kernel_size: int, reach: int) -> Tensor:
    """The key deltas of ``kernel_offsets(kernel_size, reach)`` (cached: maps of one kernel
    share them)."""
    return offset_keys(kernel_offsets(kernel_size, reach))


def kernel_offsets(kernel_size: int, dilation: int = 1) -> Tensor:
    """``(K, 3)`` offsets ``(dx, dy, dz)`` in Conv3d weight order (``K = kernel_size ** 3``);
    per axis ``(t - (kernel_size - 1) // 2) * dilation`` for ``t < kernel_size``."""
    axis = (torch.arange(kernel_size) - (kernel_size - 1) // 2) * dilation
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def kernel_map(
    x: SparseTensor, kind: str, kernel_size: int, stride: int = 1, dilation: int = 1
) -> KernelMap:
    """The cached map of a ``kind`` convolution applied to ``x`` (built on first use)."""
    if kind not in KINDS:
        raise UserError(f"unknown kernel map kind '{kind}'; choose one of {', '.join(KINDS)}")
    return _cached(x.cache, (kind, x.stride, kernel_size, stride, dilation))


def _cached(cache: MapCache, key: MapKey) -> KernelMap:
    if key not in cache.kernel_maps:
        cache.kernel_maps[key] = _build(cache, *key)
    return cache.kernel_maps[key]


def _build(
    cache: MapCache, kind: str, at: int, kernel_size: int, stride: int, dilation: int
) -> KernelMap:
    if kind != "up":
        cache.builds += 1
    if kind == "sub":
        return submanifold_map(cache, at, kernel_size, dilation)
    if kind == "down":
        return downsample_map(cache, at, kernel_size, stride, dilation)
    fine = at // stride
    if at % stride or fine not in cache.coords:
        raise UserError(
            f"a stride-{stride} transposed conv at stride {at} has no finer coordinates to "
            "return to (only the coordinates a strided conv came from)"
        )
    return _cached(cache, ("down", fine, kernel_size, stride, dilation)).reversed()


def submanifold_map(cache: MapCache, at: int, kernel_size: int, dilation: int = 1) -> KernelMap:
    """Outputs = inputs (the sites at stride ``at``); pairs looked up for half the offsets,
    mirrored for the other half."""
    if kernel_size % 2 == 0:
        raise UserError(f"a submanifold convolution needs an odd kernel size; got {kernel_size}")
    table = cache.hash_of(at)
    deltas = offset_deltas(kernel_size, dilation * at)
    half = deltas.numel() // 2
    offset, out, inp = table.pairs(table.keys, deltas[:half])
    # Offset k's pairs, swapped, are those of the mirrored offset K - 1 - k: group
    # 2 half - 1 - k, so the groups' weight rows run 0 .. half - 1, half + 1 .. K - 1.
    parts = [(offset, inp, out), (2 * half - 1 - offset, out, inp)]
    weight_index = torch.cat([torch.arange(half), torch.arange(half + 1, deltas.numel())])
    return _grouped(weight_index, parts, half, table.size, table.size, identity=half)


def downsample_map(
    cache: MapCache, at: int, kernel_size: int, stride: int, dilation: int = 1
) -> KernelMap:
    """Outputs = the sites at stride ``at`` floored to ``at * stride``; every offset looked up
    from every output."""
    coarse = at * stride
    if coarse not in cache.coords:
        cache.coords[coarse] = floored(cache.coords[at], coarse)
    deltas = offset_deltas(kernel_size, dilation * at)
    fine, outputs = cache.hash_of(at), cache.hash_of(coarse)
    offset, out, inp = fine.pairs(outputs.keys, deltas)
    count = deltas.numel()
    return _grouped(torch.arange(count), [(offset, inp, out)], count, fine.size, outputs.size, None)


def floored(coords: Tensor, stride: int) -> Tensor:
    """The unique coordinates of ``coords`` floored to multiples of ``stride`` (sorted)."""
    sites = torch.div(coords[:, 1:], stride, rounding_mode="floor") * stride
    return unpack(torch.unique(pack(torch.cat([coords[:, :1], sites], dim=1))))


def _grouped(
    weight_index: Tensor,
    parts: list[tuple[Tensor, Tensor, Tensor]],
    groups: int,
    n_in: int,
    n_out: int,
    identity: int | None,
) -> KernelMap:
    """Pad pairs ``(group, input row, output row)`` into ``(G, M)`` tables. ``parts`` share
    one order within each group of the first ``groups``; a second part (the mirrored half)
    holds them in the reverse group order."""
    first = parts[0][0]
    counts = torch.bincount(first, minlength=groups)
    width = int(counts.max()) if first.numel() else 0
    position = torch.arange(first.numel()) - (torch.cumsum(counts, 0) - counts).index_select(
        0, first
    )
    total = weight_index.numel()
    in_rows = torch.full((total * width,), n_in, dtype=torch.int64)
    out_rows = torch.zeros(total * width, dtype=torch.int64)
    for group, inp, out in parts:
        flat = group * width + position
        in_rows.index_copy_(0, flat, inp)
        out_rows.index_copy_(0, flat, out)
    counts = torch.cat([counts, counts.flip(0)][: len(parts)])
    return KernelMap(
        weight_index, in_rows.view(total, width), out_rows.view(total, width), counts, n_in, n_out,
        identity,
    )  # fmt: skip
