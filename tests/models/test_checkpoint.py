"""Model files rebuild the model without user code, including channel-pruned shapes."""

from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, read_model_record, save_model
from mobiledl.models.checkpoint import resize_to_state_dict
from mobiledl.models.packed import MAGIC


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = create_model("resnet8", 10, 1, 8).eval()
    path = save_model(tmp_path / "m.pt", model, {"task": "digits"})
    loaded = load_model(path)
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(model(x), loaded.model(x))
    assert loaded.meta == {"task": "digits"}
    assert loaded.arch["name"] == "resnet8"


def test_file_holds_no_code(tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.pt", create_model("lenet300", 10, 1, 8))
    assert path.read_bytes().startswith(MAGIC)  # JSON header and tensor bytes, no pickle
    payload = read_model_record(path)
    assert set(payload) == {"format", "version", "arch", "state_dict", "meta"}


def test_resize_rebuilds_smaller_layers() -> None:
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(16, 4))
    small = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    resize_to_state_dict(model, small.state_dict())
    model.load_state_dict(small.state_dict())
    assert model[0].out_channels == 8 and model[1].num_features == 8
    assert model[3].in_features == 8


def test_resize_keeps_depthwise_convs_depthwise() -> None:
    model = nn.Sequential(nn.Conv2d(16, 16, 3, groups=16))
    small = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8))
    resize_to_state_dict(model, small.state_dict())
    assert model[0].groups == 8 and model[0].in_channels == 8


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_corrupt_file_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(b"this is not a model")
    with pytest.raises(UserError, match="bad.pt"):
        load_model(path)


def test_foreign_torch_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="not a mobiledl model file"):
        load_model(path)


def test_model_not_from_registry_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="create_model"):
        save_model(tmp_path / "m.pt", nn.Linear(2, 2))
    assert not (tmp_path / "m.pt").exists()
