"""Voxelization merges the points of a voxel (averaged features, an inverse map), devoxelization
returns to the points (nearest exactly, trilinear exact at voxel centres and on linear fields),
the coordinate hash finds exactly the stored keys, and bad clouds are one-line user errors."""

from __future__ import annotations

import pytest
import torch

from mobiledl.apps.pointcloud import devoxelize_nearest, devoxelize_trilinear, voxelize
from mobiledl.apps.pointcloud.hashing import CoordHash, pack, unpack
from mobiledl.errors import UserError
from mobiledl.resources import memory_limit

pytestmark = pytest.mark.usefixtures("single_thread")


def test_points_of_a_voxel_merge_and_average() -> None:
    points = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.4, 0.4], [1.5, 0.0, -0.5], [-0.1, 0, 0]])
    feats = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    x, inverse = voxelize(points, 1.0, feats=feats)
    assert len(x) == 3 and inverse[0] == inverse[1]
    assert x.coords[inverse[2]].tolist() == [0, 1, 0, -1]
    assert x.coords[inverse[3]].tolist() == [0, -1, 0, 0]
    assert x.feats[inverse[0]].item() == 2.0
    assert torch.equal(devoxelize_nearest(x, inverse)[2:], feats[2:])


def test_batches_stay_apart_and_anisotropic_voxels() -> None:
    points = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.5, 2.5, 0.5]])
    x, inverse = voxelize(points, (1.0, 2.0, 1.0), batch=torch.tensor([0, 1, 1]))
    assert x.coords.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0]]
    assert inverse.tolist() == [0, 1, 2]


def test_trilinear_is_exact_at_voxel_centres_and_on_linear_fields() -> None:
    size, slope = 0.5, torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    axis = torch.arange(6)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    centres = (grid.double() + 0.5) * size
    x, _ = voxelize(centres, size, feats=centres @ slope)
    assert torch.allclose(devoxelize_trilinear(x, centres, size), centres @ slope)
    inside = 0.5 * size + torch.rand(200, 3, dtype=torch.float64) * 5 * size
    assert torch.allclose(devoxelize_trilinear(x, inside, size), inside @ slope)


def test_hash_finds_exactly_the_stored_keys() -> None:
    gen = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.randint(-300, 300, (3000, 4), generator=gen).abs() % 50, dim=0)
    table = CoordHash(pack(coords))
    assert torch.equal(unpack(table.keys), coords)
    assert torch.equal(table.find(table.keys), torch.arange(len(coords)))
    shifted = pack(coords + torch.tensor([0, 0, 0, 50]))  # outside the stored box
    assert (table.find(shifted) == -1).all()


@pytest.mark.parametrize(
    ("points", "voxel", "message"),
    [
        (torch.zeros(0, 3), 1.0, "empty"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), 1.0, "NaN or infinite"),
        (torch.tensor([[0.0, float("inf"), 0.0]]), 1.0, "NaN or infinite"),
        (torch.zeros(2, 3), 0.0, "voxel size"),
        (torch.zeros(2, 3), -1.0, "voxel size"),
        (torch.zeros(2, 3), float("nan"), "voxel size"),
        (torch.zeros(2, 2), 1.0, r"\(N, 3\)"),
        (torch.tensor([[1e6, 0.0, 0.0]]), 1.0, "within"),
    ],
)
def test_bad_clouds_are_one_line_user_errors(
    points: torch.Tensor, voxel: float, message: str
) -> None:
    with pytest.raises(UserError, match=message) as caught:
        voxelize(points, voxel)
    assert "\n" not in str(caught.value)


def test_a_cloud_over_the_memory_limit_is_refused_before_work() -> None:
    with memory_limit(1e-6), pytest.raises(UserError, match="voxelizing 10000 points"):
        voxelize(torch.rand(10_000, 3), 0.1)
