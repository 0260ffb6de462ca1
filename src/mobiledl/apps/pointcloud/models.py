"""Point-cloud classifiers: a point-only baseline and a small sparse voxel network.

- ``PointNet`` (Qi et al., "PointNet: Deep Learning on Point Sets for 3D Classification and
  Segmentation", CVPR 2017), without the input and feature transforms: a shared MLP on every
  point and a max pool over the points, the point-only baseline of PVCNN (Liu et al. 2019).
- ``SparseVoxelNet``: each cloud normalized into an ``R^3`` grid as the dense-voxel and
  point-voxel models do (PVCNN, Sec. 4.1), voxelized sparsely (occupancy and mean position
  per occupied voxel as its features), submanifold and stride-2 sparse convolutions with batch
  norm and ReLU (Graham et al. 2018; Choy et al. 2019), a global max pool per cloud and a
  linear classifier.

Both take clouds ``(B, P, 3)`` and return logits ``(B, classes)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobiledl.apps.pointcloud.conv import SparseConv3d
from mobiledl.apps.pointcloud.nn import SparseBatchNorm, SparseReLU, global_max_pool
from mobiledl.apps.pointcloud.sparse import SparseTensor
from mobiledl.apps.pointcloud.voxelize import normalize, voxelize
from mobiledl.errors import UserError


def check_clouds(x: Tensor) -> None:
    """``UserError`` unless ``x`` is a non-empty batch of finite clouds ``(B, P, 3)`` (the
    values are not checked while tracing for export, nor on the meta device)."""
    if x.dim() != 3 or x.shape[2] != 3 or not x.is_floating_point():
        raise UserError(
            f"a point-cloud model takes float clouds (B, P, 3); got {x.dtype} {tuple(x.shape)}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"the point cloud is empty: a batch of shape {tuple(x.shape)}")
    if x.is_meta or torch.jit.is_tracing():
        return
    if not bool(torch.isfinite(x).all()):
        raise UserError("the point cloud has NaN or infinite coordinates")


def refuse_export(model: nn.Module) -> None:
    """``UserError`` naming ``model``'s first ``SparseConv3d`` if it is being traced for export:
    its kernel map is built at run time by hashing the voxel coordinates, a graph of
    data-dependent sizes and Python control flow that a traced graph would freeze to one input
    (see ``docs/pointcloud.md``)."""
    if not torch.jit.is_tracing():
        return
    layer = next(name for name, module in model.named_modules() if isinstance(module, SparseConv3d))
    raise UserError(
        f"{type(model).__name__} layer '{layer}' (SparseConv3d) cannot be exported: its kernel "
        "map is built at run "
        "time by hashing the input's voxel coordinates (data-dependent sizes); run it in PyTorch"
    )


class PointNet(nn.Module):
    """Shared MLP ``3 -> widths`` on every point, max pool, an MLP head (see module)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip((3, *widths[:-1]), widths, strict=True):
            layers += [nn.Conv1d(cin, cout, 1, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(widths[-1], 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        check_clouds(x)
        return self.classifier(self.features(x.transpose(1, 2)).amax(dim=2))


def _stage(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [SparseConv3d(cin, cout, kernel, stride), SparseBatchNorm(cout), SparseReLU()]


class SparseVoxelNet(nn.Module):
    """Each cloud normalized into a ``resolution^3`` grid and voxelized sparsely; a
    submanifold conv, then per further width a stride-2 conv (kernel 3) and a submanifold
    conv; global max pool; linear (see module).

    Without the per-cloud normalization (raw coordinates at a fixed voxel size) the same
    network reached 47.5% on ``shapes3d``: the clouds' random scale and shift then change the
    voxel pattern of one shape; every other voxel model here normalizes too.
    """

    def __init__(
        self,
        num_classes: int,
        resolution: int = 24,
        widths: tuple[int, ...] = (16, 32, 64, 128),
    ) -> None:
        super().__init__()
        if resolution < 2 ** (len(widths) - 1):
            raise UserError(f"resolution {resolution} is too small for {len(widths)} stages")
        self.resolution = resolution
        layers = _stage(4, widths[0], 3, 1)
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += _stage(cin, cout, 3, 2) + _stage(cout, cout, 3, 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def voxels(self, x: Tensor) -> SparseTensor:
        """The sparse tensor of a batch of clouds ``(B, P, 3)``: per occupied voxel of the
        normalized grid, occupancy 1 and the mean normalized position in ``[-1, 1]``."""
        check_clouds(x)
        # Voxel k of the unit grid centred at normalized coordinate k: floor(c + 1/2) = k.
        shifted = normalize(x, self.resolution) + 0.5
        position = (shifted - 0.5) * (2 / (self.resolution - 1)) - 1
        feats = torch.cat([torch.ones_like(position[..., :1]), position], dim=2)
        batch = torch.arange(x.shape[0]).repeat_interleave(x.shape[1])
        voxels, _ = voxelize(shifted.reshape(-1, 3), 1.0, batch=batch, feats=feats.view(-1, 4))
        return voxels

    def forward(self, x: Tensor) -> Tensor:
        refuse_export(self)
        return self.classifier(global_max_pool(self.features(self.voxels(x)), x.shape[0]))
