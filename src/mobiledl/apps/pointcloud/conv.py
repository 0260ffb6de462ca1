"""Sparse 3D convolution as gather -> GEMM -> scatter-add over a kernel map.

For each kernel offset ``d`` with weight ``W_d`` (``C_in x C_out``), the output rows of its
pairs receive ``W_d`` applied to the input rows (Choy et al. 2019, Eq. 3; the
gather-matmul-scatter dataflow of Tang et al. 2020). A sparse map (few pairs per offset) runs
all offsets at once: one gather of the padded ``(G, M)`` input rows, then a batched matmul
and an ``index_add_`` per run of consecutive weight rows (two for a submanifold map: the
offsets before and after the centre); a denser one (``WIDE`` pairs or more per offset) one
gather, matmul and ``index_add_`` per offset, unpadded. The centre offset of a submanifold
convolution is a plain matmul over all rows.
Every output row sums its contributions in the map's fixed order, on one thread or many, so
the result does not depend on the number of threads.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mobiledl.apps.pointcloud.kernel_map import KernelMap, kernel_map
from mobiledl.apps.pointcloud.sparse import SparseTensor
from mobiledl.errors import UserError

#: Offsets with at least this many pairs run as one plain matmul each, unpadded: torch.bmm
#: ran about 5x slower than torch.mm per offset at 1,876 pairs x 16 -> 32 channels here, and
#: one product tensor for all offsets of a dense surface (41 MB) ran at memory speed.
WIDE = 256


def apply_kernel_map(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """``(n_out, C_out)`` outputs of weights ``(K, C_in, C_out)`` over ``kmap``. The weights
    are read as views of ``weight`` (``KernelMap.weight_runs``), never gathered into a copy."""
    if kmap.identity is not None:
        out = feats @ weight[kmap.identity]
    else:
        out = feats.new_zeros((kmap.n_out, weight.shape[2]))
    groups, width = kmap.in_rows.shape
    if groups * width == 0:
        return out
    if width >= WIDE:
        rows = kmap.weight_index.tolist()
        for group, count in enumerate(kmap.counts.tolist()):
            products = feats.index_select(0, kmap.in_rows[group, :count]) @ weight[rows[group]]
            out = out.index_add_(0, kmap.out_rows[group, :count], products)
        return out
    padded = torch.cat([feats, feats.new_zeros((1, feats.shape[1]))])
    gathered = padded.index_select(0, kmap.in_rows.view(-1)).view(groups, width, -1)
    for start, end, row in kmap.weight_runs:
        products = torch.bmm(gathered[start:end], weight[row : row + end - start])
        out = out.index_add_(
            0, kmap.out_rows[start:end].reshape(-1), products.view(-1, out.shape[1])
        )
    return out


class SparseConv3d(nn.Module):
    """A 3D convolution over the active sites of a ``SparseTensor``.

    ``stride == 1``: submanifold (outputs at the input sites, Graham et al. 2018);
    ``stride > 1``: downsampling to the floored coordinates; ``transposed=True``: upsampling
    back to the coordinates a stride-``stride`` convolution came from. Weight ``(K, C_in,
    C_out)`` with ``K = kernel_size ** 3`` in ``nn.Conv3d`` offset order.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        transposed: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride, dilation) < 1:
            raise UserError("sparse conv channels, kernel size, stride and dilation must be >= 1")
        if transposed and stride == 1:
            raise UserError("a transposed sparse convolution needs stride >= 2")
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.transposed = transposed
        bound = 1 / math.sqrt(in_channels * kernel_size**3)  # nn.Conv3d's default init
        shape = (kernel_size**3, in_channels, out_channels)
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.bias = (
            nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound)) if bias else None
        )

    @property
    def kind(self) -> str:
        """The kernel map this layer uses: ``sub``, ``down`` or ``up``."""
        return "up" if self.transposed else "sub" if self.stride == 1 else "down"

    def forward(self, x: SparseTensor) -> SparseTensor:
        kmap = kernel_map(x, self.kind, self.kernel_size, self.stride, self.dilation)
        feats = apply_kernel_map(x.feats, self.weight, kmap)
        if self.bias is not None:
            feats = feats + self.bias
        stride = {"sub": x.stride, "down": x.stride * self.stride, "up": x.stride // self.stride}
        out_stride = stride[self.kind]
        return SparseTensor(x.cache.coords[out_stride], feats, out_stride, x.cache)

    def macs(self, x: SparseTensor) -> int:
        """Multiply-accumulates of this layer on ``x``, counted from its kernel map (the
        pairs it really computes, not the dense grid's)."""
        kmap = kernel_map(x, self.kind, self.kernel_size, self.stride, self.dilation)
        return kmap.pairs * self.weight.shape[1] * self.weight.shape[2]

    def extra_repr(self) -> str:
        k, cin, cout = self.weight.shape
        return (
            f"{cin}, {cout}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"dilation={self.dilation}, kind={self.kind}, bias={self.bias is not None}"
        )
