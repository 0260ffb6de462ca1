"""Peak activation memory on hand-computable models (float32 unless ``bits`` says otherwise)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobiledl.profile import peak_activation_memory, profile_model

pytestmark = pytest.mark.usefixtures("single_thread")

F32 = 4


def numel(*shape: int) -> int:
    out = 1
    for size in shape:
        out *= size
    return out


def test_conv_chain_peak_is_max_of_input_plus_output() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 1), nn.Conv2d(8, 2, 1))
    x, a, b, c = (numel(1, ch, 8, 8) for ch in (3, 4, 8, 2))
    expected = max(x + a, a + b, b + c)  # 4 + 8 channels
    assert peak_activation_memory(model, torch.randn(1, 3, 8, 8)) == expected * F32
    assert peak_activation_memory(model, torch.randn(1, 3, 8, 8), bits=8) == expected
    assert peak_activation_memory(model, torch.randn(1, 3, 8, 8), bits=4) == expected // 2


def test_peak_layer_is_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 8, 1), nn.Conv2d(8, 2, 1))
    assert profile_model(model, torch.randn(1, 3, 8, 8)).peak_memory_layer == "1"


def test_inplace_and_view_ops_share_storage() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 10)
    )
    x, a, y = numel(1, 2, 4, 4), numel(1, 4, 4, 4), 10
    assert peak_activation_memory(model, torch.randn(1, 2, 4, 4)) == max(x + a, a + y) * F32


def test_out_of_place_activation_holds_input_and_output() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    x, a = numel(1, 2, 8, 8), numel(1, 4, 8, 8)
    # conv: x + a; relu: a + relu(a); conv: relu(a) + out (= x in size)
    assert peak_activation_memory(model, torch.randn(1, 2, 8, 8)) == 2 * a * F32
    assert 2 * a > x + a


class Residual(nn.Module):
    """``out = conv2(relu(conv1(x))) + x`` with 1x1 convs keeping the shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))) + x


def test_residual_block_keeps_skip_tensor_alive() -> None:
    t = numel(1, 4, 8, 8) * F32
    # conv1: x + a; conv2: x (skip) + a + b; add: x + b + out
    assert peak_activation_memory(Residual(4), torch.randn(1, 4, 8, 8)) == 3 * t
    chain = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1))
    assert peak_activation_memory(chain, torch.randn(1, 4, 8, 8)) == 2 * t


def test_model_outputs_live_to_the_end() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 2, 1)
            self.body = nn.Conv2d(2, 8, 1)
            self.tail = nn.Conv2d(8, 1, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            early = self.stem(x)
            return early, self.tail(self.body(early))

    x, early, body, tail = (numel(1, ch, 4, 4) for ch in (1, 2, 8, 1))
    # body: early + body; tail: early (an output) + body + tail
    expected = early + body + tail
    assert peak_activation_memory(TwoHeads(), torch.randn(1, 1, 4, 4)) == expected * F32


def test_identity_model_holds_only_its_input() -> None:
    assert peak_activation_memory(nn.Identity(), torch.randn(2, 5)) == 10 * F32


def test_unread_maxpool_indices_are_not_activations() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.MaxPool2d(2))
    x, a, p = numel(1, 1, 8, 8), numel(1, 4, 8, 8), numel(1, 4, 4, 4)
    assert peak_activation_memory(model, torch.randn(1, 1, 8, 8)) == max(x + a, a + p) * F32


def test_weights_and_buffers_are_not_activations() -> None:
    model = nn.Sequential(nn.Linear(100, 2), nn.BatchNorm1d(2))
    assert peak_activation_memory(model, torch.randn(1, 100)) == (100 + 2) * F32


def test_concat_holds_both_inputs_and_the_result() -> None:
    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(2, 3, 1)
            self.b = nn.Conv2d(2, 5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x)], dim=1)

    x, a, b = numel(1, 2, 4, 4), numel(1, 3, 4, 4), numel(1, 5, 4, 4)
    # b: x + a + b; cat: a + b + (a + b)
    assert peak_activation_memory(Concat(), torch.randn(1, 2, 4, 4)) == 2 * (a + b) * F32
    assert 2 * (a + b) > x + a + b
