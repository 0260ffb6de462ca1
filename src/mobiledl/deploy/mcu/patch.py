"""Patch-based inference (MCUNetV2, Lin et al. 2021, "MCUNetV2: Memory-Efficient Patch-based
Inference for Tiny Deep Learning"): run the first ops of a graph tile by tile, then the rest
layer by layer.

The early layers of a CNN hold the largest activations; computed one spatial patch at a time,
only a patch of each is live, plus the full output of the last patched op (the split tensor),
which the layer-by-layer part then reads. ``patch_regions`` splits the split tensor into a
grid of tiles and walks back through the patched ops: a conv's input region is its output
region times the stride, widened by the kernel and clipped to the tensor; a tensor read by
several ops needs the union of their regions. The overlap between neighbouring tiles is
computed twice (the MAC overhead); the zero padding of a conv applies only where a region
reaches the image border, so every tile computes exactly the values layer-by-layer inference
computes, and the output is bit-identical (``run_patch_based``).

``patch_memory`` gives the patch stage's peak (the full split tensor plus the largest tile's
planned arena: each tile is a small graph of tile-sized tensors, ``tile_graph``, planned with
in-place depthwise and its output written straight into the split tensor), the layer-by-layer
stage's planned arena and the MACs; ``run_patch_based_in_arena`` runs both stages in one byte
arena of that size, which proves the plan (bit-identical output); ``search_patch`` picks the
split and grid that minimise the peak under a MAC overhead budget. The input image is counted
tile by tile (a camera or flash read fetches the tile's rows), as in MCUNetV2.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mobiledl.deploy.mcu.arena import POISON, ArenaExecutor
from mobiledl.deploy.mcu.graph import Graph, Op, Tensor
from mobiledl.deploy.mcu.planner import MemoryPlan, plan_memory
from mobiledl.deploy.mcu.reference import execute
from mobiledl.errors import UserError

#: Ops a patch can run: every output pixel reads a bounded window of input pixels.
SPATIAL = frozenset({"conv", "depthwise", "pointwise", "add", "avgpool", "maxpool"})


@dataclass(frozen=True)
class Region:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of a tensor."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def area(self) -> int:
        return (self.r1 - self.r0) * (self.c1 - self.c0)

    def union(self, other: Region) -> Region:
        return Region(
            min(self.r0, other.r0),
            max(self.r1, other.r1),
            min(self.c0, other.c0),
            max(self.c1, other.c1),
        )


@dataclass
class PatchMemory:
    """Peak SRAM and MACs of patch-based inference at one split and grid."""

    split: int
    grid: tuple[int, int]
    patch_stage_bytes: int
    rest_stage_bytes: int
    macs: int
    layer_by_layer_macs: int

    @property
    def peak_bytes(self) -> int:
        return max(self.patch_stage_bytes, self.rest_stage_bytes)

    @property
    def mac_overhead(self) -> float:
        return self.macs / self.layer_by_layer_macs - 1.0


def check_split(graph: Graph, split: int) -> None:
    """``UserError`` unless ``graph.ops[:split]`` can run by patches: spatial ops only, and no
    tensor of theirs but the last output read after them."""
    if not 1 <= split < len(graph.ops):
        raise UserError(f"patch split must lie in [1, {len(graph.ops)}); got {split}")
    prefix = graph.ops[:split]
    for op in prefix:
        if op.kind not in SPATIAL:
            raise UserError(f"{op.layer} ({op.kind}) cannot run by patches")
    inside = {op.output for op in prefix[:-1]} | {graph.input}
    for op in graph.ops[split:]:
        if inside & set(op.inputs):
            raise UserError(f"{op.layer} reads a tensor from inside the patched ops")


def patch_regions(graph: Graph, split: int, grid: tuple[int, int]) -> list[dict[str, Region]]:
    """Per tile: the region of every tensor of ``graph.ops[:split]`` the tile needs."""
    check_split(graph, split)
    out = graph.tensors[graph.ops[split - 1].output]
    height, width = out.shape[2:]
    rows, cols = _bounds(height, grid[0]), _bounds(width, grid[1])
    tiles = []
    for r0, r1 in rows:
        for c0, c1 in cols:
            need = {out.name: Region(r0, r1, c0, c1)}
            for op in reversed(graph.ops[:split]):
                for name in op.inputs:
                    region = input_region(op, need[op.output], graph.tensors[name])
                    need[name] = need[name].union(region) if name in need else region
            tiles.append(need)
    return tiles


def _bounds(size: int, parts: int) -> list[tuple[int, int]]:
    if not 1 <= parts <= size:
        raise UserError(f"cannot cut {size} pixels into {parts} patches")
    edges = [round(i * size / parts) for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def input_region(op: Op, out: Region, source: Tensor) -> Region:
    """The input pixels output region ``out`` of ``op`` reads (clipped to the tensor)."""
    if op.kind == "add":
        return out
    (kh, kw), (sh, sw) = op.kernel, op.stride
    top, left = op.pads[0], op.pads[1]
    height, width = source.shape[2:]
    return Region(
        max(0, out.r0 * sh - top),
        min(height, (out.r1 - 1) * sh - top + kh),
        max(0, out.c0 * sw - left),
        min(width, (out.c1 - 1) * sw - left + kw),
    )


def _tile_op(op: Op, out: Region, source: Tensor) -> Op:
    """``op`` on the input crop of ``out``: padding only where the crop meets the border."""
    if op.kind == "add":
        return op
    (kh, kw), (sh, sw) = op.kernel, op.stride
    top, left = op.pads[0], op.pads[1]
    height, width = source.shape[2:]
    row_start, col_start = out.r0 * sh - top, out.c0 * sw - left
    row_end, col_end = (out.r1 - 1) * sh - top + kh, (out.c1 - 1) * sw - left + kw
    pads = (
        max(0, -row_start),
        max(0, -col_start),
        max(0, row_end - height),
        max(0, col_end - width),
    )
    return dataclasses.replace(op, pads=pads)


def run_patch_based(graph: Graph, split: int, grid: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """The integer output of ``graph`` on int8 ``x``, the first ``split`` ops tile by tile."""
    out = graph.tensors[graph.ops[split - 1].output]
    assembled = np.zeros((len(x), *out.shape[1:]), out.dtype)
    for need in patch_regions(graph, split, grid):
        values = {graph.input: _crop(np.asarray(x, np.int8), need[graph.input])}
        for op in graph.ops[:split]:
            region = need[op.output]
            inputs = []
            for name in op.inputs:
                wanted = input_region(op, region, graph.tensors[name])
                inputs.append(_crop(values[name], _relative(wanted, need[name])))
            tile_op = _tile_op(op, region, graph.tensors[op.inputs[0]])
            values[op.output] = execute(tile_op, graph, inputs)
        r = need[out.name]
        assembled[:, :, r.r0 : r.r1, r.c0 : r.c1] = values[out.name]
    values = {out.name: assembled}
    for op in graph.ops[split:]:
        values[op.output] = execute(op, graph, [values[name] for name in op.inputs])
    return values[graph.output]


def _crop(array: np.ndarray, region: Region) -> np.ndarray:
    return array[:, :, region.r0 : region.r1, region.c0 : region.c1]


def _relative(inner: Region, outer: Region) -> Region:
    return Region(
        inner.r0 - outer.r0, inner.r1 - outer.r0, inner.c0 - outer.c0, inner.c1 - outer.c0
    )


# ---------------------------------------------------------------- memory and MACs


def patch_memory(
    graph: Graph, split: int, grid: tuple[int, int], in_place_depthwise: bool = True
) -> PatchMemory:
    """Peaks of both stages and the MACs at ``split`` and ``grid`` (module docstring)."""
    tiles = patch_regions(graph, split, grid)
    out = graph.tensors[graph.ops[split - 1].output]
    patch_stage = out.nbytes + max(
        tile_plan(graph, split, need, in_place_depthwise).arena_bytes for need in tiles
    )
    rest = plan_memory(rest_graph(graph, split), in_place_depthwise=in_place_depthwise)
    macs = sum(_tile_macs(graph, split, need) for need in tiles)
    macs += sum(op.macs(graph.tensors) for op in graph.ops[split:])
    full = sum(op.macs(graph.tensors) for op in graph.ops)
    return PatchMemory(split, grid, patch_stage, rest.arena_bytes, macs, full)


def tile_graph(graph: Graph, split: int, need: dict[str, Region]) -> Graph:
    """One tile's patched ops as a graph of tile-sized tensors, padded only at the border."""
    tensors = {
        name: dataclasses.replace(
            graph.tensors[name],
            shape=(1, graph.tensors[name].shape[1], region.r1 - region.r0, region.c1 - region.c0),
        )
        for name, region in need.items()
    }
    ops = [_tile_op(op, need[op.output], graph.tensors[op.inputs[0]]) for op in graph.ops[:split]]
    output = graph.ops[split - 1].output
    return Graph(tensors, ops, graph.input, output, graph.source, graph.rounding)


def tile_plan(
    graph: Graph, split: int, need: dict[str, Region], in_place_depthwise: bool = True
) -> MemoryPlan:
    """The arena of one tile; its output is written straight into the full split tensor. A
    depthwise conv runs in place only when it alone reads its input tile."""
    tile = tile_graph(graph, split, need)
    readers = Counter(name for op in tile.ops for name in op.inputs)
    external = frozenset({tile.output})
    plan = plan_memory(tile, in_place_depthwise, search_order=False, external=external)
    if any(readers[tile.ops[i].inputs[0]] > 1 for i in plan.in_place):
        plan = plan_memory(tile, False, search_order=False, external=external)
    return plan


class _TileExecutor(ArenaExecutor):
    """A tile's plan in the shared arena: each op reads the crop of its input tile it needs,
    and the last op writes into the full split tensor."""

    def __init__(
        self,
        plan: MemoryPlan,
        arena: np.ndarray,
        full: np.ndarray,
        need: dict[str, Region],
        graph: Graph,
    ) -> None:
        super().__init__(plan, arena, base=full.nbytes)
        self.full, self.need, self.whole = full, need, graph
        self.original = {id(tile): op for tile, op in zip(plan.graph.ops, graph.ops, strict=False)}

    def view(self, name: str) -> np.ndarray:
        if name == self.graph.output:
            return _crop(self.full, self.need[name])
        return super().view(name)

    def inputs(self, op: Op) -> list[np.ndarray]:
        """The crops of the input tiles the op reads (regions from the untiled op's pads)."""
        original = self.original[id(op)]
        region = self.need[op.output]
        crops = []
        for name in op.inputs:
            wanted = input_region(original, region, self.whole.tensors[name])
            crops.append(_crop(self.view(name), _relative(wanted, self.need[name])))
        return crops


def run_patch_based_in_arena(
    graph: Graph,
    split: int,
    grid: tuple[int, int],
    x: np.ndarray,
    in_place_depthwise: bool = True,
) -> tuple[np.ndarray, int]:
    """``graph`` on one int8 image ``x`` in one byte arena: the split tensor at offset 0 and
    each tile's plan behind it, then the layer-by-layer plan (the split tensor moved to its
    slot there). Returns the output and the arena's size."""
    tiles = patch_regions(graph, split, grid)
    plans = [tile_plan(graph, split, need, in_place_depthwise) for need in tiles]
    out = graph.tensors[graph.ops[split - 1].output]
    rest = plan_memory(rest_graph(graph, split), in_place_depthwise=in_place_depthwise)
    size = max(out.nbytes + max(p.arena_bytes for p in plans), rest.arena_bytes)
    arena = np.full(size, POISON, np.int8)
    full = arena[: out.nbytes].view(out.dtype).reshape(out.shape)
    image = np.asarray(x, np.int8).reshape(graph.tensors[graph.input].shape)
    for need, plan in zip(tiles, plans, strict=True):
        tile = _TileExecutor(plan, arena, full, need, graph)
        tile.view(graph.input)[...] = _crop(image, need[graph.input])
        tile.run_ops()
    layer_by_layer = ArenaExecutor(rest, arena)
    layer_by_layer.view(out.name)[...] = full.copy()  # a memmove to the split tensor's slot
    layer_by_layer.run_ops()
    return layer_by_layer.view(graph.output).copy(), size


def _tile_macs(graph: Graph, split: int, need: dict[str, Region]) -> int:
    total = 0
    for op in graph.ops[:split]:
        region = need[op.output]
        per_pixel = op.macs(graph.tensors) // math.prod(graph.tensors[op.output].shape[2:])
        total += per_pixel * region.area
    return total


def rest_graph(graph: Graph, split: int) -> Graph:
    """The layer-by-layer part: ``graph.ops[split:]`` reading the split tensor."""
    rest = graph.ops[split:]
    names = {graph.ops[split - 1].output} | {n for op in rest for n in (*op.inputs, op.output)}
    tensors = {name: graph.tensors[name] for name in names}
    return Graph(
        tensors, rest, graph.ops[split - 1].output, graph.output, graph.source, graph.rounding
    )


def search_patch(
    graph: Graph,
    max_mac_overhead: float = 0.3,
    grids: tuple[int, ...] = (2, 3, 4, 5, 6, 8),
    in_place_depthwise: bool = True,
) -> PatchMemory | None:
    """The split and square grid with the smallest peak whose MAC overhead stays within
    ``max_mac_overhead`` (None if no split of the graph can run by patches)."""
    best: PatchMemory | None = None
    for split in range(1, len(graph.ops)):
        try:
            check_split(graph, split)
        except UserError:
            continue
        height = graph.tensors[graph.ops[split - 1].output].shape[2]
        for parts in (g for g in grids if g <= height):
            result = patch_memory(graph, split, (parts, parts), in_place_depthwise)
            if result.mac_overhead > max_mac_overhead:
                continue
            if best is None or result.peak_bytes < best.peak_bytes:
                best = result
    return best
