"""The sparse tensor: active voxel coordinates, their features and the shared map cache.

A ``SparseTensor`` (Choy et al. 2019, Sec. 3; Graham et al., "3D Semantic Segmentation with
Submanifold Sparse Convolutional Networks", CVPR 2018) holds integer coordinates ``(N, 4)`` =
``(batch, x, y, z)`` of the active sites and their features ``(N, C)``. Coordinates stay in
the units of the finest grid; ``stride`` says how far apart the sites of this tensor are (1
at the input, 2 after one stride-2 convolution, ...), as in torchsparse (Tang et al. 2020).

Every tensor derived from one input shares a ``MapCache``: the hash tables and coordinates
per stride, and the kernel maps keyed by ``(kind, stride, kernel size, stride of the
convolution, dilation)``. A network's layers with the same stride and kernel build their map
once per input, and a transposed convolution reuses the map of the downsampling one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mobiledl.apps.pointcloud.hashing import CoordHash, check_coords, pack
from mobiledl.errors import UserError

MapKey = tuple[Any, ...]


@dataclass
class MapCache:
    """What every tensor derived from one input shares (see the module docstring)."""

    coords: dict[int, Tensor] = field(default_factory=dict)
    hashes: dict[int, CoordHash] = field(default_factory=dict)
    kernel_maps: dict[MapKey, Any] = field(default_factory=dict)
    #: Kernel maps built from the coordinates (a transposed conv's reversal is not one).
    builds: int = 0

    def hash_of(self, stride: int) -> CoordHash:
        """The hash table of the coordinates at ``stride`` (built on first use)."""
        if stride not in self.hashes:
            self.hashes[stride] = CoordHash(pack(self.coords[stride]))
        return self.hashes[stride]


class SparseTensor:
    """Features ``(N, C)`` at integer coordinates ``(N, 4)`` (unique rows) of one stride."""

    def __init__(
        self, coords: Tensor, feats: Tensor, stride: int = 1, cache: MapCache | None = None
    ) -> None:
        if feats.dim() != 2 or feats.shape[0] != coords.shape[0]:
            raise UserError(
                f"sparse features must be (N, C) with N = {coords.shape[0]} coordinate rows; "
                f"got {tuple(feats.shape)}"
            )
        if cache is None:
            check_coords(coords)
            cache = MapCache()
        if stride < 1:
            raise UserError(f"a sparse tensor's stride must be >= 1; got {stride}")
        self.coords = coords.long()
        self.feats = feats
        self.stride = stride
        self.cache = cache
        cache.coords.setdefault(stride, self.coords)

    def replace(self, feats: Tensor) -> SparseTensor:
        """The same sites (and cache) with new features."""
        return SparseTensor(self.coords, feats, self.stride, self.cache)

    @property
    def batch_size(self) -> int:
        return int(self.coords[:, 0].max()) + 1 if len(self) else 0

    def __len__(self) -> int:
        return self.coords.shape[0]

    def dense(self, size: tuple[int, int, int], batch_size: int | None = None) -> Tensor:
        """The features on a dense ``(B, C, X, Y, Z)`` grid of sites ``coords / stride``
        (zero elsewhere): for tests and dense baselines, never inside a sparse network."""
        batch = self.batch_size if batch_size is None else batch_size
        grid = self.feats.new_zeros((batch, *size, self.feats.shape[1]))
        sites = torch.div(self.coords[:, 1:], self.stride, rounding_mode="floor")
        grid[self.coords[:, 0], sites[:, 0], sites[:, 1], sites[:, 2]] = self.feats
        return grid.permute(0, 4, 1, 2, 3)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(sites={len(self)}, channels={self.feats.shape[1]}, stride={self.stride})"
        )
