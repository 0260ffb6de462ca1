"""Layers on ``SparseTensor`` features: batch norm, ReLU and global pooling per cloud.

Sparse networks (Graham et al. 2018; Choy et al. 2019) normalize and activate only the active
sites: batch norm's statistics are over the sites of the batch, never over empty space.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobiledl.apps.pointcloud.sparse import SparseTensor


class SparseBatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the ``(N, C)`` features of the active sites."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseReLU(nn.ReLU):
    """``nn.ReLU`` on the features of the active sites."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


def global_avg_pool(x: SparseTensor, batch_size: int | None = None) -> Tensor:
    """``(B, C)``: the mean feature of each cloud's active sites."""
    batch = x.batch_size if batch_size is None else batch_size
    index = x.coords[:, 0]
    summed = x.feats.new_zeros((batch, x.feats.shape[1])).index_add_(0, index, x.feats)
    counts = torch.bincount(index, minlength=batch).clamp_min(1).to(x.feats.dtype)
    return summed / counts.unsqueeze(1)


def global_max_pool(x: SparseTensor, batch_size: int | None = None) -> Tensor:
    """``(B, C)``: the largest feature of each cloud's active sites (0 for an empty cloud)."""
    batch = x.batch_size if batch_size is None else batch_size
    index = x.coords[:, :1].expand_as(x.feats)
    out = x.feats.new_zeros((batch, x.feats.shape[1]))
    return out.scatter_reduce(0, index, x.feats, "amax", include_self=False)
