"""What mobiledl writes: files get the umask's permissions, a run that fails (diverges, or is
refused) leaves --out as it was, and atomic writes never leave a partial file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from badinput import Inputs, Refused

from mobiledl.cli import main
from mobiledl.data.prepare import make_task
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path, write_text_atomic
from mobiledl.models import create_model, save_model
from mobiledl.train import TrainConfig, train
from mobiledl.train.divergence import check_weights
from mobiledl.validate import check_finite_data


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    path = save_model(tmp_path / "m.pt", create_model("lenet5", 10, 1, 8))
    assert mode(path) == 0o640
    assert mode(write_text_atomic(tmp_path / "r.html", "<p>")) == 0o640


def test_default_umask_gives_world_readable_files(tmp_path: Path, inputs: Inputs) -> None:
    previous = os.umask(0o022)
    try:
        assert main(["export", str(inputs.model), "--out", str(tmp_path / "m.onnx")]) == 0
    finally:
        os.umask(previous)
    assert mode(tmp_path / "m.onnx") == 0o644


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("old")
    path.chmod(0o600)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_run_files_are_readable_by_others(tmp_path: Path, inputs: Inputs) -> None:
    previous = os.umask(0o022)
    try:
        assert main(["run", str(inputs.path("recipe.yaml")), "--out", str(tmp_path / "r")]) == 0
    finally:
        os.umask(previous)
    for name in ("state.json", "report.html", "checkpoints/00-input.pt"):
        assert mode(tmp_path / "r" / name) == 0o644, name


def test_diverging_training_stops_and_writes_nothing(refused: Refused, tmp_path: Path) -> None:
    out = tmp_path / "existing.pt"
    out.write_bytes(b"previous model")
    argv = ["train", "--model", "lenet5", "--task", "digits", "--epochs", "2", "--lr", "1e8"]
    line = refused([*argv, "--out", str(out)], r"diverged at epoch 1, step \d+: the loss is")
    assert "learning rate (1e+08) is probably too high" in line
    assert not (tmp_path / "existing.pt.partial").exists()


def test_diverging_weights_name_the_parameter() -> None:
    model = create_model("lenet300", 10, 1, 8)
    name, parameter = list(model.named_parameters())[-1]
    with torch.no_grad():
        parameter.fill_(float("inf"))
    with pytest.raises(UserError, match=f"epoch 3: parameter '{name}' is no longer finite"):
        check_weights(model, 2, 0.05)
    task = make_task("t", np.random.default_rng(0).random((30, 1, 8, 8)), np.arange(30) % 3, 0)
    with pytest.raises(UserError, match="diverged at epoch 1, step 1: the loss is nan"):
        train(model, task, TrainConfig(epochs=1, progress=False))


def test_finite_check_names_count_and_first_index() -> None:
    x = torch.zeros(4, 1, 2, 2)
    x[2, 0, 1, 0] = float("nan")
    x[3, 0, 0, 0] = float("-inf")
    with pytest.raises(UserError, match=r"data.npz: 2 non-finite .* sample 2 at \[0, 1, 0\]"):
        check_finite_data(x, "data.npz")
