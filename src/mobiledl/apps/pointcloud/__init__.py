"""Point clouds: voxelization and sparse convolution that run fast and right on CPU.

- ``voxelize`` / ``devoxelize_nearest`` / ``devoxelize_trilinear``: points to voxels and
  back (Liu et al., PVCNN, NeurIPS 2019; Tang et al., SPVNAS, ECCV 2020);
- ``SparseTensor``: integer ``(batch, x, y, z)`` coordinates, features, a stride and the
  kernel maps shared by every tensor derived from one input (torchsparse's design);
- ``kernel_map``: the (input row, output row) pairs per kernel offset, from a hash table of
  the coordinates, for submanifold (Graham et al., CVPR 2018), strided and transposed
  convolution (Choy et al., CVPR 2019);
- ``SparseConv3d``: gather -> batched GEMM -> scatter-add over a map; ``SparseBatchNorm``,
  ``SparseReLU``, ``global_avg_pool`` and ``global_max_pool``.
"""

from mobiledl.apps.pointcloud.conv import SparseConv3d, apply_kernel_map
from mobiledl.apps.pointcloud.kernel_map import KernelMap, kernel_map, kernel_offsets
from mobiledl.apps.pointcloud.nn import (
    SparseBatchNorm,
    SparseReLU,
    global_avg_pool,
    global_max_pool,
)
from mobiledl.apps.pointcloud.sparse import MapCache, SparseTensor
from mobiledl.apps.pointcloud.voxelize import (
    devoxelize_nearest,
    devoxelize_trilinear,
    voxelize,
)

__all__ = [
    "KernelMap",
    "MapCache",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseReLU",
    "SparseTensor",
    "apply_kernel_map",
    "devoxelize_nearest",
    "devoxelize_trilinear",
    "global_avg_pool",
    "global_max_pool",
    "kernel_map",
    "kernel_offsets",
    "voxelize",
]
