"""``mobiledl prune``: a round trip through a saved model, --json, and one-line user errors."""

import json
from pathlib import Path

import pytest
import torch

from mobiledl.cli import main
from mobiledl.compress.prune import sparsity_of
from mobiledl.data import build_task
from mobiledl.models import create_model, load_model, save_model
from mobiledl.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = build_task("digits")
    torch.manual_seed(0)
    model = create_model("lenet300", task.num_classes, task.in_channels, task.image_size)
    train(model, task, TrainConfig(epochs=1, progress=False))
    return save_model(tmp_path_factory.mktemp("prune") / "lenet300.pt", model, {"task": "digits"})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json", "--no-latency"]) == 0
    return json.loads(capsys.readouterr().out)


def test_prune_round_trip(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pruned.pt"
    argv = ["prune", str(trained), "--task", "digits", "--sparsity", "0.8"]
    result = run(capsys, *argv, "--finetune-epochs", "1", "--out", str(out))
    assert result["extra"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert result["extra"]["sparse_format_bytes"] < result["extra"]["dense_bytes"]
    assert result["params"] > 0 and result["macs"] > 0
    loaded = load_model(out)
    assert sparsity_of(loaded.model) == pytest.approx(0.8, abs=0.01)
    task = build_task("digits")
    assert evaluate(loaded.model, task) == pytest.approx(result["accuracy"])
    assert loaded.meta["pruning"]["granularity"] == "element"


def test_prune_n_m_pattern(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nm.pt"
    argv = ["prune", str(trained), "--task", "digits", "--granularity", "2:4"]
    result = run(capsys, *argv, "--criterion", "l2", "--out", str(out))
    weight = load_model(out).model.features[0].weight
    assert (weight.ne(0).reshape(-1, 4).sum(dim=1) == 2).all()
    assert result["extra"]["sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--granularity", "blocks", "--sparsity", "0.5"], "unknown granularity 'blocks'"),
        (["--sparsity", "0.5", "--criterion", "random"], "unknown criterion 'random'"),
        ([], "set exactly one of sparsity and macs_ratio"),
        (["--sparsity", "0.5", "--schedule", "iterative"], "needs finetune epochs"),
        (["--sparsity", "0.5", "--scope", "latency"], "needs channel granularity"),
        (
            ["--granularity", "channel", "--sparsity", "0.5", "--scope", "latency"],
            "needs macs_ratio",
        ),
    ],
)
def test_prune_user_errors_exit_2_with_one_line(
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = ["prune", str(trained), "--task", "digits", *extra, "--out", str(tmp_path / "x.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("mobiledl prune: error:")
    assert not (tmp_path / "x.pt").exists()


def test_prune_channels_physically(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "channels.pt"
    argv = ["prune", str(trained), "--task", "digits", "--granularity", "channel"]
    result = run(capsys, *argv, "--sparsity", "0.5", "--out", str(out))
    assert result["params"] < result["extra"]["dense_params"]
    assert load_model(out).model.features[0].out_features % 8 == 0


def test_prune_channels_by_measured_latency(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "latency.pt"
    argv = ["prune", str(trained), "--task", "digits", "--granularity", "channel"]
    result = run(capsys, *argv, "--macs-ratio", "0.5", "--scope", "latency", "--out", str(out))
    from mobiledl.profile import profile_model

    dense_macs = profile_model(load_model(trained).model, torch.zeros(1, 1, 8, 8)).macs
    assert result["macs"] / dense_macs == pytest.approx(0.5, abs=0.03)  # 8-channel steps
    assert load_model(out).model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_prune_with_sensitivity_allocation(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "s.pt", tmp_path / "sensitivity.svg"
    argv = ["prune", str(trained), "--task", "digits", "--sparsity", "0.8"]
    tolerance = ["--sensitivity-tolerance", "0.02", "--sensitivity-plot", str(plot)]
    result = run(capsys, *argv, *tolerance, "--out", str(out))
    layers = result["extra"]["layer_sparsity"]
    assert result["extra"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert len(set(round(v, 2) for v in layers.values())) > 1
    assert plot.read_text().startswith("<?xml")
