"""Point-voxel convolution (dense and sparse) and a dense-voxel baseline.

- ``PVConv`` (Liu et al., "Point-Voxel CNN for Efficient 3D Deep Learning", NeurIPS 2019,
  Sec. 4): a coarse voxel branch (the cloud normalized into an ``R^3`` grid, point features
  averaged per voxel, two dense ``3^3`` convolutions with batch norm and ReLU, trilinear
  devoxelization back to the points, empty voxels as zeros) summed with a fine point branch
  (a shared MLP: a 1x1 convolution over the points).
- ``SPVConv`` (Tang et al., "Searching Efficient 3D Architectures with Sparse Point-Voxel
  Convolution", ECCV 2020, Sec. 3): the same with the voxel branch sparse: submanifold
  ``SparseConv3d`` on the occupied voxels only, devoxelized trilinearly over the occupied
  voxel centres (weights renormalized, ``devoxelize_trilinear``).
- ``PVCNN`` / ``SPVCNN``: a stack of those blocks, a max pool over the points and an MLP head.
- ``DenseVoxelNet``: the dense-voxel baseline of PVCNN's comparison (3D-CNN classifiers such
  as VoxNet, Maturana and Scherer 2015): the cloud voxelized into an ``R^3`` grid of
  occupancy and mean position, dense ``3^3`` convolutions with max pools, a global average
  pool and a linear classifier.

All take clouds ``(B, P, 3)`` and return logits ``(B, classes)``; the voxelization happens
inside ``forward``. The dense models use only gathers and scatter-adds of fixed shapes and
export to ONNX; the sparse ones build hash-based kernel maps of data-dependent size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobiledl.apps.pointcloud.conv import SparseConv3d
from mobiledl.apps.pointcloud.models import check_clouds, refuse_export
from mobiledl.apps.pointcloud.nn import SparseBatchNorm, SparseReLU
from mobiledl.apps.pointcloud.voxelize import CORNERS, devoxelize_trilinear, normalize, voxelize
from mobiledl.errors import UserError


def voxel_index(coords: Tensor, resolution: int) -> Tensor:
    """``(B, P)`` flat index ``b R^3 + x R^2 + y R + z`` of each normalized point's nearest
    grid point (``floor(c + 1/2)``)."""
    grid = torch.floor(coords + 0.5).long().clamp(0, resolution - 1)
    flat = (grid[..., 0] * resolution + grid[..., 1]) * resolution + grid[..., 2]
    batch = torch.arange(coords.shape[0], device=coords.device).unsqueeze(1)
    return flat + batch * resolution**3


def dense_voxelize(feats: Tensor, coords: Tensor, resolution: int) -> Tensor:
    """``(B, C, R, R, R)``: point features ``(B, P, C)`` averaged per voxel (zero if empty)."""
    batch, _, channels = feats.shape
    index = voxel_index(coords, resolution).view(-1, 1)
    cells = batch * resolution**3
    # scatter_add, not index_add: ONNX has ScatterElements with an add reduction for it.
    rows = feats.reshape(-1, channels)
    summed = feats.new_zeros((cells, channels)).scatter_add(0, index.expand_as(rows), rows)
    ones = torch.ones_like(rows[:, :1])
    counts = feats.new_zeros((cells, 1)).scatter_add(0, index, ones)
    mean = summed / counts.clamp_min(1)
    return mean.view(batch, resolution, resolution, resolution, channels).permute(0, 4, 1, 2, 3)


def dense_devoxelize(grid: Tensor, coords: Tensor) -> Tensor:
    """``(B, P, C)``: ``grid`` ``(B, C, R, R, R)`` trilinearly interpolated at the normalized
    points ``(B, P, 3)`` from the 8 grid points around each (PVCNN's devoxelization)."""
    batch, channels, resolution = grid.shape[:3]
    base = torch.floor(coords).clamp(0, resolution - 2)
    frac = coords - base
    corners = CORNERS.to(coords.device)
    cell = base.long().unsqueeze(2) + corners  # (B, P, 8, 3)
    flat = (cell[..., 0] * resolution + cell[..., 1]) * resolution + cell[..., 2]  # (B, P, 8)
    near = frac.unsqueeze(2)
    weight = torch.where(corners.bool(), near, 1 - near).prod(3)  # (B, P, 8)
    cells = grid.reshape(batch, channels, -1)
    out = grid.new_zeros((batch, channels, coords.shape[1]))
    # Corner by corner: one (B, C, P) gather at a time, not all eight corners' at once.
    for corner in range(len(corners)):
        index = flat[:, :, corner].unsqueeze(1).expand(-1, channels, -1)
        out = out + cells.gather(2, index) * weight[:, :, corner].unsqueeze(1)
    return out.transpose(1, 2)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU()]


def _point_mlp(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU())


class PVConv(nn.Module):
    """Point features ``(B, C_in, P)`` and clouds ``(B, P, 3)`` -> ``(B, C_out, P)``: the
    dense voxel branch at resolution ``R`` plus the point branch (see the module)."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int) -> None:
        super().__init__()
        if resolution < 2:
            raise UserError(f"a point-voxel convolution needs a resolution >= 2; got {resolution}")
        self.resolution = resolution
        self.voxel = nn.Sequential(
            *_conv_bn_relu(in_channels, out_channels), *_conv_bn_relu(out_channels, out_channels)
        )
        self.point = _point_mlp(in_channels, out_channels)

    def voxel_branch(self, feats: Tensor, points: Tensor) -> Tensor:
        """``(B, C_out, P)``: voxelize, two dense convolutions, devoxelize."""
        coords = normalize(points, self.resolution)
        grid = dense_voxelize(feats.transpose(1, 2), coords, self.resolution)
        return dense_devoxelize(self.voxel(grid), coords).transpose(1, 2)

    def forward(self, feats: Tensor, points: Tensor) -> Tensor:
        return self.voxel_branch(feats, points) + self.point(feats)


class SPVConv(nn.Module):
    """``PVConv`` with a sparse voxel branch: submanifold convolutions on the occupied voxels
    of the same ``R^3`` grid (Tang et al. 2020; see the module)."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int) -> None:
        super().__init__()
        if resolution < 2:
            raise UserError(f"a point-voxel convolution needs a resolution >= 2; got {resolution}")
        self.resolution = resolution
        self.voxel = nn.Sequential(
            SparseConv3d(in_channels, out_channels), SparseBatchNorm(out_channels), SparseReLU(),
            SparseConv3d(out_channels, out_channels), SparseBatchNorm(out_channels), SparseReLU(),
        )  # fmt: skip
        self.point = _point_mlp(in_channels, out_channels)

    def voxel_branch(self, feats: Tensor, points: Tensor) -> Tensor:
        """``(B, C_out, P)``: voxelize sparsely, two submanifold convolutions, devoxelize."""
        refuse_export(self)
        batch, count = points.shape[:2]
        # Voxel k of the unit grid centred at normalized coordinate k: floor(c + 1/2) = k.
        shifted = (normalize(points, self.resolution) + 0.5).reshape(-1, 3)
        index = torch.arange(batch, device=points.device).repeat_interleave(count)
        flat = feats.transpose(1, 2).reshape(batch * count, -1)
        voxels, _ = voxelize(shifted, 1.0, batch=index, feats=flat)
        out = devoxelize_trilinear(self.voxel(voxels), shifted, 1.0, batch=index)
        return out.view(batch, count, -1).transpose(1, 2)

    def forward(self, feats: Tensor, points: Tensor) -> Tensor:
        return self.voxel_branch(feats, points) + self.point(feats)


class PointVoxelNet(nn.Module):
    """Blocks of ``block`` (``PVConv`` or ``SPVConv``) on the points' coordinates, a max pool
    over the points and an MLP head (PVCNN's classifier, Liu et al. 2019)."""

    def __init__(
        self,
        block: type[PVConv] | type[SPVConv],
        num_classes: int,
        widths: tuple[int, ...],
        resolutions: tuple[int, ...],
    ) -> None:
        super().__init__()
        if len(widths) != len(resolutions) or not widths:
            raise UserError("a point-voxel network needs one resolution per block width")
        ins = (3, *widths[:-1])
        self.blocks = nn.ModuleList(
            block(cin, cout, r) for cin, cout, r in zip(ins, widths, resolutions, strict=True)
        )
        self.classifier = nn.Sequential(
            nn.Linear(widths[-1], 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        check_clouds(x)
        feats = x.transpose(1, 2)
        for block in self.blocks:
            feats = block(feats, x)
        return self.classifier(feats.amax(dim=2))


class PVCNN(PointVoxelNet):
    """``PointVoxelNet`` of dense ``PVConv`` blocks (Liu et al. 2019)."""

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (32, 64),
        resolutions: tuple[int, ...] = (16, 8),
    ) -> None:
        super().__init__(PVConv, num_classes, widths, resolutions)


class SPVCNN(PointVoxelNet):
    """``PointVoxelNet`` of sparse ``SPVConv`` blocks (Tang et al. 2020)."""

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (32, 64),
        resolutions: tuple[int, ...] = (16, 8),
    ) -> None:
        super().__init__(SPVConv, num_classes, widths, resolutions)


class DenseVoxelNet(nn.Module):
    """Occupancy and mean position on an ``R^3`` grid; per width a dense ``3^3`` convolution
    with batch norm and ReLU, a 2x max pool between them; global average pool; linear."""

    def __init__(
        self, num_classes: int, resolution: int = 16, widths: tuple[int, ...] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if resolution < 2 ** (len(widths) - 1):
            raise UserError(f"resolution {resolution} is too small for {len(widths)} stages")
        self.resolution = resolution
        layers: list[nn.Module] = []
        for index, (cin, cout) in enumerate(zip((4, *widths[:-1]), widths, strict=True)):
            layers += [nn.MaxPool3d(2)] if index else []
            layers += _conv_bn_relu(cin, cout)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def voxels(self, x: Tensor) -> Tensor:
        """``(B, 4, R, R, R)``: occupancy and the mean normalized position in ``[-1, 1]``."""
        check_clouds(x)
        coords = normalize(x, self.resolution)
        position = coords * (2 / (self.resolution - 1)) - 1
        feats = torch.cat([torch.ones_like(position[..., :1]), position], dim=2)
        return dense_voxelize(feats, coords, self.resolution)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.voxels(x)).mean(dim=(2, 3, 4)))
