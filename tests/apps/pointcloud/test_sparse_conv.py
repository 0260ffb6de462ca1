"""Sparse convolution equals dense ``nn.Conv3d`` / ``ConvTranspose3d`` on the active sites
(submanifold, strided, transposed; duplicate points merged by voxelization, sites on the grid
border), gives bit-identical results on 1 and 2 threads (a scatter race would not), and reuses
cached kernel maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mobiledl.apps.pointcloud import (
    SparseBatchNorm,
    SparseConv3d,
    SparseReLU,
    SparseTensor,
    global_avg_pool,
    global_max_pool,
    kernel_map,
    voxelize,
)
from mobiledl.errors import UserError

pytestmark = pytest.mark.usefixtures("restore_threads")
TOLERANCE = 1e-4


def cloud(grid: int, points: int, channels: int, seed: int, batch: int = 2) -> SparseTensor:
    """Random points in a ``grid``^3 box (many share a voxel), the 8 box corners included."""
    gen = torch.Generator().manual_seed(seed)
    xyz = torch.rand(points, 3, generator=gen) * grid
    xyz[:8] = torch.tensor([[i, j, k] for i in (0, grid - 0.01) for j in (0, grid - 0.01)
                            for k in (0, grid - 0.01)])  # fmt: skip
    xyz = torch.cat([xyz, xyz[:20]])  # exact duplicates too
    index = torch.randint(0, batch, (xyz.shape[0],), generator=gen)
    index[:8] = 0
    index[20:28] = batch - 1
    feats = torch.randn(xyz.shape[0], channels, generator=gen)
    x, _ = voxelize(xyz, 1.0, batch=index, feats=feats)
    return x


def at_sites(dense: torch.Tensor, x: SparseTensor, scale: int) -> torch.Tensor:
    sites = torch.div(x.coords[:, 1:], scale, rounding_mode="floor")
    return dense[x.coords[:, 0], :, sites[:, 0], sites[:, 1], sites[:, 2]]


def conv_weight(conv: SparseConv3d) -> torch.Tensor:
    k, cin, cout = conv.weight.shape
    size = conv.kernel_size
    return conv.weight.permute(2, 1, 0).reshape(cout, cin, size, size, size)


@given(
    seed=st.integers(0, 10_000),
    kernel=st.sampled_from([1, 3, 5]),
    dilation=st.sampled_from([1, 2]),
    grid=st.integers(3, 9),
)
@settings(max_examples=25, deadline=None)
def test_submanifold_equals_dense_conv3d(seed: int, kernel: int, dilation: int, grid: int) -> None:
    x = cloud(grid, 3 * grid, 3, seed)
    conv = SparseConv3d(3, 4, kernel, dilation=dilation, bias=True)
    y = conv(x)
    pad = (kernel - 1) // 2 * dilation
    dense = F.conv3d(x.dense((grid,) * 3), conv_weight(conv), conv.bias, padding=pad,
                     dilation=dilation)  # fmt: skip
    assert torch.equal(y.coords, x.coords)
    assert (at_sites(dense, y, 1) - y.feats).abs().max() <= TOLERANCE


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (2, 2), (3, 3)])
def test_strided_equals_dense_conv3d(kernel: int, stride: int) -> None:
    grid = 12
    x = cloud(grid, 300, 3, seed=kernel * stride)
    conv = SparseConv3d(3, 5, kernel, stride=stride)
    y = conv(x)
    dense = F.conv3d(x.dense((grid,) * 3), conv_weight(conv), stride=stride,
                     padding=(kernel - 1) // 2)  # fmt: skip
    assert y.stride == stride
    sites = torch.div(x.coords[:, 1:], stride, rounding_mode="floor")
    expected = torch.unique(torch.cat([x.coords[:, :1], sites], dim=1), dim=0)
    assert torch.equal(y.coords // torch.tensor([1, stride, stride, stride]), expected)
    assert (at_sites(dense, y, stride) - y.feats).abs().max() <= TOLERANCE


def test_transposed_equals_dense_conv_transpose3d_on_the_finer_sites() -> None:
    grid = 12
    x = cloud(grid, 300, 3, seed=5)
    down = SparseConv3d(3, 4, 3, stride=2)
    up = SparseConv3d(4, 6, 3, stride=2, transposed=True)
    coarse = down(x)
    y = up(coarse)
    k, cin, cout = up.weight.shape
    weight = up.weight.permute(1, 2, 0).reshape(cin, cout, 3, 3, 3)
    dense = F.conv_transpose3d(coarse.dense((grid // 2,) * 3), weight, stride=2, padding=1,
                               output_padding=1)  # fmt: skip
    assert torch.equal(y.coords, x.coords) and y.stride == 1
    assert (at_sites(dense, y, 1) - y.feats).abs().max() <= TOLERANCE


def test_maps_are_cached_and_shared_by_layers_with_the_same_stride_and_kernel() -> None:
    x = cloud(10, 200, 4, seed=1)
    first, second = SparseConv3d(4, 4, 3), SparseConv3d(4, 4, 3)
    y = second(first(x))
    assert x.cache.builds == 1 and y.cache is x.cache
    SparseConv3d(4, 4, 5)(y)  # another kernel size: one more map
    down = SparseConv3d(4, 4, 2, stride=2)(y)
    SparseConv3d(4, 4, 2, stride=2, transposed=True)(down)  # reuses the down map reversed
    assert x.cache.builds == 3
    assert kernel_map(x, "sub", 3) is kernel_map(y, "sub", 3)


def run_network(x: SparseTensor, threads: int) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers = [SparseConv3d(16, 32, 3), SparseConv3d(32, 32, 3, stride=2),
              SparseConv3d(32, 16, 3, stride=2, transposed=True)]  # fmt: skip
    fresh = SparseTensor(x.coords, x.feats)
    outputs = []
    with torch.no_grad():
        for layer in layers:
            fresh = layer(fresh)
            outputs.append(fresh.feats)
    return outputs


@pytest.mark.parametrize("side", [40, 74], ids=["dense-per-offset-mm", "sparse-one-bmm"])
def test_one_and_two_threads_give_bit_identical_results(side: int) -> None:
    """8k sites x 32 channels, so the scatter-adds and GEMMs split over threads; 12% of a 40^3
    grid runs an unpadded matmul per offset, 2% of a 74^3 grid one padded bmm."""
    gen = torch.Generator().manual_seed(3)
    flat = torch.randperm(side**3, generator=gen)[:8000]
    coords = torch.stack([flat % 2, flat // side**2, flat // side % side, flat % side], dim=1)
    x = SparseTensor(coords, torch.randn(8000, 16, generator=gen))
    one, two = run_network(x, 1), run_network(x, 2)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_norm_relu_and_global_pools() -> None:
    x = cloud(8, 100, 3, seed=2, batch=3)
    y = SparseReLU()(SparseBatchNorm(3)(x))
    assert torch.equal(y.coords, x.coords) and (y.feats >= 0).all()
    avg, top = global_avg_pool(x), global_max_pool(x)
    for b in range(3):
        rows = x.feats[x.coords[:, 0] == b]
        assert torch.allclose(avg[b], rows.mean(0)) and torch.equal(top[b], rows.max(0).values)


def test_bad_layers_and_tensors_are_user_errors() -> None:
    with pytest.raises(UserError, match="odd kernel"):
        SparseConv3d(2, 2, 2)(cloud(4, 10, 2, seed=0))
    with pytest.raises(UserError, match="stride >= 2"):
        SparseConv3d(2, 2, 3, transposed=True)
    with pytest.raises(UserError, match="no finer coordinates"):
        SparseConv3d(2, 2, 3, stride=2, transposed=True)(cloud(4, 10, 2, seed=0))
    with pytest.raises(UserError, match=r"\(N, 4\)"):
        SparseTensor(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 1))
    with pytest.raises(UserError, match="within"):
        SparseTensor(torch.tensor([[0, 40000, 0, 0]]), torch.zeros(1, 1))


def test_weight_and_feature_gradients_equal_dense_conv3d_gradients() -> None:
    grid = 6
    x = cloud(grid, 40, 3, seed=9)
    feats = x.feats.clone().requires_grad_(True)
    conv = SparseConv3d(3, 4, 3, stride=2)
    y = conv(SparseTensor(x.coords, feats))
    (y.feats**2).sum().backward()
    dense_in = SparseTensor(x.coords, x.feats).dense((grid,) * 3).requires_grad_(True)
    weight = conv_weight(conv).detach().requires_grad_(True)
    out = F.conv3d(dense_in, weight, stride=2, padding=1)
    (at_sites(out, y, 2) ** 2).sum().backward()
    assert conv.weight.grad is not None and weight.grad is not None
    sparse_grad = conv.weight.grad.permute(2, 1, 0).reshape(weight.shape)
    assert torch.allclose(weight.grad, sparse_grad, atol=1e-4)
    assert torch.allclose(feats.grad, at_sites(dense_in.grad, x, 1), atol=1e-4)


def test_macs_count_the_pairs_of_the_map() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 5, 5, 5], [1, 0, 0, 0]])
    x = SparseTensor(coords, torch.zeros(4, 3))
    # Every site with itself, and the two neighbours at (0,0,0)-(0,0,1) with each other.
    assert SparseConv3d(3, 8, 3).macs(x) == (4 + 2) * 3 * 8
    assert SparseConv3d(3, 8, 2, stride=2).macs(x) == 4 * 3 * 8  # each input feeds one output
