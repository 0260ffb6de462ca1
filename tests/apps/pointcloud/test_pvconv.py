"""PVConv / SPVConv against reference computations, the zoo models on ``shapes3d``, and the
CLI path (Liu et al. 2019, PVCNN; Tang et al. 2020, SPVNAS)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mobiledl.apps.pointcloud.pvconv import PVConv, SPVConv, normalize
from mobiledl.cli.main import main
from mobiledl.data import build_task
from mobiledl.data.pointcloud import shapes3d
from mobiledl.errors import UserError
from mobiledl.models import create_model, create_model_for_task
from mobiledl.profile.profiler import profile_model

MODELS = ["pointnet", "dense_voxel_net", "sparse_voxel_net", "pvcnn", "spvcnn"]


@pytest.fixture(scope="module")
def shapes():
    return shapes3d(seed=0, clouds=80, points=64)


def reference_voxel_grid(feats: torch.Tensor, coords: torch.Tensor, r: int) -> torch.Tensor:
    """``(C, R, R, R)`` mean features per nearest grid point, one point at a time."""
    total, count = torch.zeros(feats.shape[1], r, r, r), torch.zeros(r, r, r)
    for feat, c in zip(feats, coords, strict=True):
        i, j, k = (min(max(int(torch.floor(v + 0.5)), 0), r - 1) for v in c)
        total[:, i, j, k] += feat
        count[i, j, k] += 1
    return total / count.clamp_min(1)


def reference_trilinear(grid: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``(C,)``: the 8-corner trilinear interpolation of ``grid`` at one normalized point."""
    r = grid.shape[1]
    base = [min(max(int(torch.floor(v)), 0), r - 2) for v in point]
    out = torch.zeros(grid.shape[0])
    for corner in itertools.product((0, 1), repeat=3):
        weight = 1.0
        for axis, bit in enumerate(corner):
            frac = float(point[axis]) - base[axis]
            weight *= frac if bit else 1 - frac
        out += weight * grid[:, base[0] + corner[0], base[1] + corner[1], base[2] + corner[2]]
    return out


def test_pvconv_voxel_branch_equals_a_reference_on_a_tiny_cloud() -> None:
    torch.manual_seed(0)
    points, feats = torch.randn(1, 12, 3), torch.randn(1, 2, 12)
    block = PVConv(2, 3, resolution=4).eval()
    coords = normalize(points, 4)[0]
    grid = reference_voxel_grid(feats[0].T, coords, 4)
    convolved = block.voxel(grid.unsqueeze(0))[0]
    expected = torch.stack([reference_trilinear(convolved, p) for p in coords], dim=1)
    got = block.voxel_branch(feats, points)[0]
    assert (got - expected).abs().max() <= 1e-5
    assert coords.min() >= 0 and coords.max() <= 3 + 1e-5


def test_spvconv_sparse_conv_equals_pvconv_dense_conv_on_the_occupied_voxels() -> None:
    torch.manual_seed(1)
    points, feats = torch.randn(2, 40, 3), torch.randn(2, 4, 40)
    dense, sparse = PVConv(4, 5, resolution=6), SPVConv(4, 5, resolution=6)
    conv = dense.voxel[0]
    k, cin, cout = sparse.voxel[0].weight.shape
    with torch.no_grad():  # (Cout, Cin, 3, 3, 3) -> (K, Cin, Cout) in Conv3d offset order
        sparse.voxel[0].weight.copy_(conv.weight.reshape(cout, cin, k).permute(2, 1, 0))
    from mobiledl.apps.pointcloud.pvconv import dense_voxelize
    from mobiledl.apps.pointcloud.voxelize import voxelize

    coords = normalize(points, 6)
    grid = dense_voxelize(feats.transpose(1, 2), coords, 6)
    batch = torch.arange(2).repeat_interleave(40)
    flat = feats.transpose(1, 2).reshape(80, 4)
    voxels, _ = voxelize((coords + 0.5).reshape(-1, 3), 1.0, batch=batch, feats=flat)
    assert (voxels.dense((6, 6, 6), 2) - grid).abs().max() <= 1e-5  # same voxels, same features
    out = sparse.voxel[0](voxels)
    reference = conv(grid)
    c = voxels.coords
    on_sites = reference[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
    assert (out.feats - on_sites).abs().max() <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_on_shapes3d_and_loss_decreases(name: str, shapes) -> None:
    torch.manual_seed(0)
    model = create_model_for_task(name, shapes, width_mult=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = shapes.x_train[:16], shapes.y_train[:16]
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses


def test_shapes3d_is_a_deterministic_points_task(shapes) -> None:
    again = shapes3d(seed=0, clouds=80, points=64)
    assert shapes.input_kind == "points" and shapes.x_train.shape[1:] == (64, 3)
    assert torch.equal(shapes.x_test, again.x_test)
    assert not torch.equal(shapes.x_train[:10], shapes.x_test[:10])
    with pytest.raises(UserError, match="image size"):
        build_task("shapes3d", image_size=32)


def test_sparse_macs_come_from_the_kernel_maps(shapes) -> None:
    model = create_model("spvcnn", 8, num_points=64)
    x = shapes.x_test[:1]
    convs = [m for m in model.modules() if type(m).__name__ == "SparseConv3d"]
    seen = []
    hooks = [c.register_forward_pre_hook(lambda m, a: seen.append(m.macs(a[0]))) for c in convs]
    model.eval()
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    profiled = {layer.name: layer.macs for layer in profile_model(model, x).layers}
    names = [n for n, m in model.named_modules() if type(m).__name__ == "SparseConv3d"]
    assert [profiled[n] for n in names] == seen
    assert all(0 < macs < 27 * 64 * 64 * 64 for macs in seen)


@pytest.mark.parametrize("bad", [torch.zeros(1, 0, 3), torch.full((1, 8, 3), float("nan"))])
@pytest.mark.parametrize("name", ["pointnet", "pvcnn", "spvcnn", "sparse_voxel_net"])
def test_bad_clouds_are_user_errors(name: str, bad: torch.Tensor) -> None:
    with pytest.raises(UserError, match="empty|NaN"):
        create_model(name, 8, num_points=8)(bad)


def test_cli_train_eval_profile_export(tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.pt"
    assert main(["train", "--model", "pointnet", "--task", "shapes3d", "--epochs", "1",
                 "--width-mult", "0.25", "--out", str(out)]) == 0  # fmt: skip
    assert main(["eval", str(out), "--task", "shapes3d", "--json"]) == 0
    assert main(["profile", str(out), "--no-latency", "--json"]) == 0
    assert main(["export", str(out), "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    # profiled in PyTorch; the engine cannot export it, so latency is null and says why
    assert main(["profile", "spvcnn", "--input-shape", "1,64,3", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["macs"] > 0 and result["latency_ms_median"] is None
    reason = result["extra"]["null_fields"]["latency_ms_median"]
    assert "SparseConv3d" in reason and "kernel map" in reason


@pytest.mark.parametrize("shape", ["1,0,3", "1,8,2"])
def test_cli_bad_cloud_is_one_line_exit_2(shape: str, capsys) -> None:
    assert main(["profile", "pointnet", "--no-latency", "--input-shape", shape]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mobiledl profile: error:" in err[0]


@pytest.mark.parametrize("name", ["pointnet", "dense_voxel_net", "pvcnn"])
def test_dense_models_match_onnxruntime(name: str, shapes, tmp_path: Path) -> None:
    from mobiledl.deploy import get_engine

    torch.manual_seed(0)
    model = create_model(name, 8, num_points=64, width_mult=0.25).eval()
    engine = get_engine("onnxruntime")
    runner = engine.load(engine.export(model, shapes.x_test[:1], tmp_path / "m.onnx"))
    assert engine.parity_check(model, runner, shapes.x_test[:8]) <= 1e-4
