"""Voxelization of raw points into a ``SparseTensor`` and devoxelization back to the points.

Liu et al. ("Point-Voxel CNN for Efficient 3D Deep Learning", NeurIPS 2019, Sec. 4) and Tang
et al. (SPVNAS, ECCV 2020, Sec. 3) move features between points and voxels:

- ``voxelize``: quantize ``floor(point / voxel_size)``, merge the points of a voxel (unique
  keys with the inverse map) and average their features;
- ``devoxelize_nearest``: every point takes its own voxel's features;
- ``devoxelize_trilinear``: every point interpolates the (up to 8) active voxel centres around
  it, weights renormalized over the active ones (SPVNAS's sparse devoxelization; PVCNN's
  dense trilinear devoxelization treats an empty voxel as zero features instead).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mobiledl.apps.pointcloud.hashing import check_coords, offset_keys, pack, unpack
from mobiledl.apps.pointcloud.sparse import SparseTensor
from mobiledl.errors import UserError
from mobiledl.resources import check_fits

#: Working bytes per point of ``voxelize`` beyond its features (keys, inverse, coordinates).
BYTES_PER_POINT = 96
#: The 8 corners of a voxel cell as ``(dx, dy, dz)`` in {0, 1}.
#: ``device="cpu"``: a first import inside a ``torch.device("meta")`` block (a memory estimate)
#: must not make the constant a meta tensor.
CORNERS = torch.tensor([[(k >> 2) & 1, (k >> 1) & 1, k & 1] for k in range(8)], device="cpu")


def normalize(points: Tensor, resolution: int) -> Tensor:
    """Clouds ``(B, P, 3)`` centred on their mean and scaled into ``[0, R - 1]^3`` (PVCNN,
    Sec. 4.1: the farthest point from the centre touches the grid's border)."""
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=2).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1)
    return (centred / (2 * radius) + 0.5) * (resolution - 1)


def voxel_sizes(voxel_size: float | Sequence[float]) -> Tensor:
    """``(3,)`` float64 voxel edge lengths; ``UserError`` unless every one is finite and > 0."""
    sizes = [voxel_size] * 3 if isinstance(voxel_size, int | float) else list(voxel_size)
    if len(sizes) != 3 or not all(math.isfinite(s) and s > 0 for s in map(float, sizes)):
        raise UserError(f"voxel size must be one or three finite numbers > 0; got {voxel_size}")
    return torch.tensor(sizes, dtype=torch.float64)


def check_points(points: Tensor, batch: Tensor | None, feats: Tensor | None) -> None:
    """``UserError`` for an empty cloud, a wrong shape, non-finite values or a bad batch."""
    if points.dim() != 2 or points.shape[1] != 3 or not points.is_floating_point():
        raise UserError(f"points must be a float (N, 3) tensor; got {points.dtype} "
                        f"{tuple(points.shape)}")  # fmt: skip
    if points.shape[0] == 0:
        raise UserError("the point cloud is empty (0 points)")
    bad = (~torch.isfinite(points)).any(1).nonzero()
    if bad.numel():
        raise UserError(f"{bad.numel()} points have NaN or infinite coordinates (first: row "
                        f"{int(bad[0])})")  # fmt: skip
    if batch is not None and (batch.shape != points.shape[:1] or batch.is_floating_point()):
        raise UserError(f"batch must be an integer ({points.shape[0]},) tensor; got "
                        f"{batch.dtype} {tuple(batch.shape)}")  # fmt: skip
    if feats is not None and (feats.dim() != 2 or feats.shape[0] != points.shape[0]):
        raise UserError(f"point features must be ({points.shape[0]}, C); got {tuple(feats.shape)}")
    if feats is not None and not torch.isfinite(feats).all():
        raise UserError("point features have NaN or infinite values")


def voxelize(
    points: Tensor,
    voxel_size: float | Sequence[float],
    batch: Tensor | None = None,
    feats: Tensor | None = None,
) -> tuple[SparseTensor, Tensor]:
    """The voxels of ``points`` ``(N, 3)`` and each point's voxel row ``(N,)``.

    ``batch`` ``(N,)`` says which cloud each point belongs to (default all 0); ``feats``
    ``(N, C)`` are averaged per voxel (default: the points themselves, so a voxel's feature is
    the mean position of its points). A cloud needing more memory than there is (see
    ``mobiledl.resources``) is refused before any work.
    """
    check_points(points, batch, feats)
    sizes = voxel_sizes(voxel_size)
    feats = points if feats is None else feats
    check_fits(points.shape[0] * (BYTES_PER_POINT + 8 * feats.shape[1]),
               f"voxelizing {points.shape[0]} points")  # fmt: skip
    batch = torch.zeros(points.shape[0], dtype=torch.int64) if batch is None else batch.long()
    grid = torch.floor(points.double() / sizes)
    if float(grid.abs().max()) >= 2**31:
        raise UserError(f"points lie too far from the origin for voxel size {voxel_size}")
    coords = torch.cat([batch.unsqueeze(1), grid.long()], dim=1)
    check_coords(coords, "voxel coordinates")
    keys, inverse = torch.unique(pack(coords), return_inverse=True)
    counts = torch.bincount(inverse, minlength=keys.numel()).unsqueeze(1)
    summed = feats.new_zeros((keys.numel(), feats.shape[1])).index_add_(0, inverse, feats)
    return SparseTensor(unpack(keys), summed / counts.to(feats.dtype)), inverse


def devoxelize_nearest(x: SparseTensor, inverse: Tensor) -> Tensor:
    """``(N, C)``: every point's own voxel features (``inverse`` from ``voxelize``)."""
    return x.feats.index_select(0, inverse)


def devoxelize_trilinear(
    x: SparseTensor,
    points: Tensor,
    voxel_size: float | Sequence[float],
    batch: Tensor | None = None,
) -> Tensor:
    """``(N, C)``: features trilinearly interpolated from the active voxel centres around
    each point, the weights renormalized over the active ones (zero where none is active).

    ``voxel_size`` is the one ``x``'s input was voxelized with; at stride ``s`` a site covers
    ``s`` voxels per axis and its centre lies at ``(coordinate + s / 2) * voxel_size``.
    """
    check_points(points, batch, None)
    sizes = voxel_sizes(voxel_size) * x.stride
    batch = torch.zeros(points.shape[0], dtype=torch.int64) if batch is None else batch.long()
    scaled = points.double() / sizes - 0.5
    base = torch.floor(scaled)
    frac = (scaled - base).to(x.feats.dtype)
    coords = torch.cat([batch.unsqueeze(1), base.long() * x.stride], dim=1)
    check_coords(coords, "points")
    table = x.cache.hash_of(x.stride)
    corner, point, row = table.pairs(pack(coords), offset_keys(CORNERS * x.stride))
    high = CORNERS.index_select(0, corner).bool()
    near = frac.index_select(0, point)
    weight = torch.where(high, near, 1 - near).prod(1)
    out = x.feats.new_zeros((points.shape[0], x.feats.shape[1]))
    # Corner by corner (the pairs come sorted by corner): the gathered features of one
    # corner are at most (N, C), where all eight at once would be up to 8 N x C.
    ends = torch.bincount(corner, minlength=len(CORNERS)).cumsum(0).tolist()
    for start, end in zip([0, *ends[:-1]], ends, strict=True):
        gathered = x.feats.index_select(0, row[start:end]) * weight[start:end].unsqueeze(1)
        out.index_add_(0, point[start:end], gathered)
    total = x.feats.new_zeros(points.shape[0]).index_add_(0, point, weight)
    return out / total.clamp_min(torch.finfo(x.feats.dtype).tiny).unsqueeze(1)
