"""Point clouds: voxelization and sparse convolution that run fast and right on CPU.

- ``voxelize`` / ``devoxelize_nearest`` / ``devoxelize_trilinear``: points to voxels and
  back (Liu et al., PVCNN, NeurIPS 2019; Tang et al., SPVNAS, ECCV 2020);
- ``SparseTensor``: integer ``(batch, x, y, z)`` coordinates, features, a stride and the
  kernel maps shared by every tensor derived from one input (torchsparse's design);
- ``kernel_map``: the (input row, output row) pairs per kernel offset, from a hash table of
  the coordinates, for submanifold (Graham et al., CVPR 2018), strided and transposed
  convolution (Choy et al., CVPR 2019);
- ``SparseConv3d``: gather -> batched GEMM -> scatter-add over a map; ``SparseBatchNorm``,
  ``SparseReLU``, ``global_avg_pool`` and ``global_max_pool``;
- ``make_shapes`` / ``shape_split``: deterministic clouds of eight shape classes (primitives
  and compositions, surface-sampled, posed at random) for classification;
- ``PointNet`` (Qi et al., CVPR 2017), the point-only baseline, and ``SparseVoxelNet``, a
  small sparse-convolution classifier.
"""

from mobiledl.apps.pointcloud.conv import SparseConv3d, apply_kernel_map
from mobiledl.apps.pointcloud.kernel_map import KernelMap, kernel_map, kernel_offsets
from mobiledl.apps.pointcloud.models import PointNet, SparseVoxelNet
from mobiledl.apps.pointcloud.nn import (
    SparseBatchNorm,
    SparseReLU,
    global_avg_pool,
    global_max_pool,
)
from mobiledl.apps.pointcloud.shapes import SHAPES, make_shapes, shape_split
from mobiledl.apps.pointcloud.sparse import MapCache, SparseTensor
from mobiledl.apps.pointcloud.voxelize import (
    devoxelize_nearest,
    devoxelize_trilinear,
    voxelize,
)

__all__ = [
    "KernelMap",
    "MapCache",
    "PointNet",
    "SHAPES",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseReLU",
    "SparseTensor",
    "SparseVoxelNet",
    "apply_kernel_map",
    "devoxelize_nearest",
    "devoxelize_trilinear",
    "global_avg_pool",
    "global_max_pool",
    "kernel_map",
    "kernel_offsets",
    "make_shapes",
    "shape_split",
    "voxelize",
]
