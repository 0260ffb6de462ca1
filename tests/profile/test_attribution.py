"""Per-layer attribution, params, bytes and the public API around ``profile_model``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mobiledl.errors import UserError
from mobiledl.profile import Measurement, count_params, profile_model, weight_bytes

pytestmark = pytest.mark.usefixtures("single_thread")


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TokenMixer(nn.Module):
    """A custom module whose own ``forward`` does a matmul between its two sub-layers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.query(x) @ self.key(x).transpose(1, 2)  # (B, T, T): B*T*T*dim
        return (scores.softmax(-1) @ x) * self.scale  # B*T*dim*T


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBlock(3, 8), nn.MaxPool2d(2), ConvBlock(8, 16), ConvBlock(16, 16)
        )
        self.mixer = TokenMixer(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.features(x).flatten(2).transpose(1, 2)  # (B, 16, 16)
        return self.head(self.mixer(tokens).mean(1))


@pytest.fixture(scope="module")
def net_profile():
    return profile_model(Net(), torch.randn(2, 3, 8, 8))


def test_layers_are_qualified_names_in_call_order(net_profile) -> None:
    """Leaves, plus modules whose own forward does counted ops (a parent before its children)."""
    names = [layer.name for layer in net_profile.layers]
    assert names == [
        "",
        "features.0.conv",
        "features.0.bn",
        "features.0.act",
        "features.1",
        "features.2.conv",
        "features.2.bn",
        "features.2.act",
        "features.3.conv",
        "features.3.bn",
        "features.3.act",
        "mixer",
        "mixer.query",
        "mixer.key",
        "head",
    ]


def test_per_layer_macs_types_and_shapes(net_profile) -> None:
    layers = {layer.name: layer for layer in net_profile.layers}
    conv = layers["features.3.conv"]
    assert (conv.type, conv.output_shape) == ("Conv2d", (2, 16, 4, 4))
    assert conv.macs == 2 * 16 * 4 * 4 * 16 * 9
    assert layers["features.0.conv"].macs == 2 * 8 * 8 * 8 * 3 * 9
    assert layers["features.1"].pool_ops == 2 * 8 * 4 * 4 * 4
    assert layers["mixer.query"].macs == 2 * 16 * 16 * 16
    assert layers["mixer"].macs == 2 * (2 * 16 * 16 * 16)  # both matmuls in its forward
    assert layers["mixer"].params == 1  # its own scale; query/key are separate layers
    assert layers[""].pool_ops == 2 * 16 * 16  # the mean in Net.forward
    assert layers[""].type == "Net"
    assert net_profile.macs == sum(layer.macs for layer in net_profile.layers)


def test_params_and_bytes(net_profile) -> None:
    model = Net()
    expected = 3 * 8 * 9 + 16 + 8 * 16 * 9 + 32 + 16 * 16 * 9 + 32 + 2 * (16 * 16 + 16) + 1
    expected += 16 * 10 + 10
    assert count_params(model) == expected == net_profile.params
    assert sum(layer.params for layer in net_profile.layers) == expected
    assert net_profile.bytes == 4 * expected  # BN running stats are buffers, not weights
    assert profile_model(model, torch.randn(1, 3, 8, 8), bits=8).bytes == expected


def test_bytes_round_up_to_whole_bytes() -> None:
    assert weight_bytes(33, 32) == 132
    assert weight_bytes(33, 8) == 33
    assert weight_bytes(33, 3) == 13  # 99 bits
    assert profile_model(nn.Linear(10, 3), torch.randn(1, 10), bits=4).bytes == 17


def test_shared_parameters_count_once() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    profile = profile_model(model, torch.randn(1, 4))
    assert profile.params == 16 + 4 + 4
    assert sum(layer.params for layer in profile.layers) == 24


def test_shared_module_accumulates_macs() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    profile = profile_model(Twice(), torch.randn(1, 4))
    assert [(layer.name, layer.macs) for layer in profile.layers] == [("fc", 32)]


def test_training_flags_restored_and_no_grad() -> None:
    model = Net()
    model.train()
    model.features[1].eval()  # mixed flags survive
    seen = []
    model.features[0].register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled()))
    )
    profile_model(model, torch.randn(1, 3, 8, 8))
    assert seen == [(False, False)]
    assert model.training and model.features[0].training and not model.features[1].training


def test_failing_model_is_a_user_error_naming_shape_and_exception() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(UserError, match=r"\(1, 3, 4, 4\).*RuntimeError") as info:
        profile_model(model, torch.randn(1, 3, 4, 4))
    assert "\n" not in str(info.value)
    assert model.training  # flags restored after a failure too


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UserError, match="bits"):
        profile_model(nn.Linear(2, 2), torch.randn(1, 2), bits=0)
    with pytest.raises(UserError, match="tensor"):
        profile_model(nn.Linear(2, 2), [[1.0, 2.0]])


def test_measurement_dict_and_table(net_profile) -> None:
    row = net_profile.measurement("net")
    assert isinstance(row, Measurement)
    assert (row.name, row.params, row.macs) == ("net", net_profile.params, net_profile.macs)
    assert row.bytes is None  # a profile writes no artifact: bytes is a file's size
    assert row.peak_memory_bytes == net_profile.peak_memory_bytes
    assert row.extra == {
        "pool_ops": net_profile.pool_ops,
        "precision_bits": 32,
        "weight_bytes": net_profile.bytes,
    }
    data = json.loads(json.dumps(net_profile.to_dict()))
    assert data["macs"] == net_profile.macs
    assert data["layers"][8] == {
        "name": "features.3.conv",
        "type": "Conv2d",
        "output_shape": [2, 16, 4, 4],
        "params": 16 * 16 * 9,
        "macs": 2 * 16 * 4 * 4 * 16 * 9,
        "pool_ops": 0,
    }
    table = net_profile.table()
    assert "features.3.conv" in table and "Conv2d" in table and "2x16x4x4" in table
    assert f"{net_profile.macs:,}" in table and "% MACs" in table
