"""The generated shape clouds are deterministic, balanced, surface-sampled with repeats, and
split apart; the point-only and sparse classifiers take clouds and learn to tell two shapes
apart on a handful of them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mobiledl.apps.pointcloud.models import PointNet, SparseVoxelNet
from mobiledl.apps.pointcloud.shapes import SHAPES, make_shapes, shape_split
from mobiledl.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_clouds_are_deterministic_balanced_and_bounded() -> None:
    clouds, labels = make_shapes(24, points=64, seed=3)
    again, same = make_shapes(24, points=64, seed=3)
    assert torch.equal(clouds, again) and torch.equal(labels, same)
    assert clouds.shape == (24, 64, 3) and torch.isfinite(clouds).all()
    assert torch.bincount(labels, minlength=len(SHAPES)).tolist() == [3] * len(SHAPES)
    assert clouds.abs().max() < 2.0  # scale <= 1.2, shift <= 0.2 and a little noise


def test_splits_differ_and_clouds_repeat_points() -> None:
    train, _ = shape_split("train", 8, 64)
    test, _ = shape_split("test", 8, 64)
    assert not torch.equal(train, test)
    clean, _ = make_shapes(16, points=64, noise=0.0)
    distinct = [torch.unique(cloud, dim=0).shape[0] for cloud in clean]
    assert min(distinct) >= 16 and min(distinct) < 64


def test_sphere_points_lie_on_the_posed_surface() -> None:
    clouds, _ = make_shapes(1, points=200, classes=("sphere",), noise=0.0)
    radius = (clouds[0] - clouds[0].mean(0)).norm(dim=1)
    assert radius.std() / radius.mean() < 0.15  # a surface, not a filled ball


def test_bad_requests_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown shape"):
        make_shapes(4, classes=("blob",))
    with pytest.raises(UserError, match="unknown split"):
        shape_split("dev", 4)
    with pytest.raises(UserError, match=r"\(B, P, 3\)"):
        PointNet(2)(torch.zeros(2, 3))


@pytest.mark.parametrize(
    "model",
    [PointNet(2, widths=(32, 64)), SparseVoxelNet(2, resolution=8, widths=(16, 32))],
    ids=["pointnet", "sparse"],
)
def test_classifiers_learn_sphere_from_plane(model: torch.nn.Module) -> None:
    """16 steps on 32 clouds: the loss falls and the batch-statistics predictions are right
    (the running statistics of batch norm need more steps than a test takes)."""
    torch.manual_seed(0)
    clouds, labels = make_shapes(32, points=128, classes=("sphere", "plane"))
    optimizer = torch.optim.Adam(model.parameters(), 5e-3)
    losses = []
    for _ in range(8):
        for first in range(0, 32, 16):
            loss = F.cross_entropy(model(clouds[first : first + 16]), labels[first : first + 16])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    with torch.no_grad():
        logits = model(clouds)
    assert logits.shape == (32, 2) and losses[-1] < 0.2 * losses[0]
    assert (logits.argmax(1) == labels).float().mean() >= 0.9
