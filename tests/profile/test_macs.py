"""Hand-checked MAC and pooling-op counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobiledl.profile import count_macs, profile_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    ("conv", "shape", "expected"),
    [
        # Cout * Hout * Wout * (Cin / groups) * kh * kw
        (nn.Conv2d(3, 8, 3), (1, 3, 10, 10), 8 * 8 * 8 * 3 * 9),
        (nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 10), 8 * 10 * 10 * 3 * 9),
        (nn.Conv2d(3, 6, 3, stride=2, padding=1), (1, 3, 10, 10), 6 * 5 * 5 * 3 * 9),
        (nn.Conv2d(3, 6, (3, 5), padding=(1, 2)), (1, 3, 7, 9), 6 * 7 * 9 * 3 * 15),
        (nn.Conv2d(8, 16, 3, padding=1, groups=4), (1, 8, 6, 6), 16 * 6 * 6 * 2 * 9),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 6, 6), 8 * 6 * 6 * 1 * 9),
        (nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), (2, 8, 6, 6), 2 * 8 * 3 * 3 * 9),
        (nn.Conv2d(4, 4, 3, dilation=2, bias=False), (1, 4, 9, 9), 4 * 5 * 5 * 4 * 9),
        (nn.Conv1d(4, 6, 5), (1, 4, 20), 6 * 16 * 4 * 5),
        # transposed: Cin * Hin * Win * (Cout / groups) * kh * kw
        (nn.ConvTranspose2d(4, 6, 2, stride=2), (1, 4, 5, 5), 4 * 5 * 5 * 6 * 4),
    ],
)
def test_convolution(conv: nn.Module, shape: tuple[int, ...], expected: int) -> None:
    assert count_macs(conv, torch.randn(shape)) == expected


def test_linear_counts_in_times_out_per_row() -> None:
    assert count_macs(nn.Linear(20, 30), torch.randn(4, 20)) == 4 * 20 * 30
    assert count_macs(nn.Linear(20, 30, bias=False), torch.randn(2, 5, 20)) == 10 * 20 * 30


class FunctionalMatmul(nn.Module):
    """Functional ops only: ``@``, ``torch.matmul``, ``F.linear``, ``einsum``, ``F.conv2d``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 16))
        self.kernel = nn.Parameter(torch.randn(4, 2, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.w  # (2, 5, 16): 2*5*8*16
        scores = torch.matmul(h, h.transpose(-1, -2))  # (2, 5, 5): 2*5*16*5
        mixed = torch.einsum("bij,bjk->bik", scores, h)  # (2, 5, 16): 2*5*5*16
        out = F.linear(mixed, self.w)  # (2, 5, 8): 2*5*16*8
        image = out.reshape(2, 2, 4, 5)
        return F.conv2d(image, self.kernel, padding=1)  # (2, 4, 4, 5): 2*4*4*5*2*9


def test_functional_ops_are_counted() -> None:
    expected = 2 * 5 * 8 * 16 + 2 * 5 * 16 * 5 + 2 * 5 * 5 * 16 + 2 * 5 * 16 * 8 + 2 * 80 * 18
    assert count_macs(FunctionalMatmul(), torch.randn(2, 5, 8)) == expected


def test_vector_products() -> None:
    class Products(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x @ x) + (x.outer(x) @ x).sum()  # dot: 6, mv: 36

    assert count_macs(Products(), torch.randn(6)) == 6 + 36


def mha_macs(batch: int, seq: int, embed: int) -> int:
    """q/k/v/out projections plus QK^T and AV over all heads (heads * head_dim = embed)."""
    return 4 * batch * seq * embed * embed + 2 * batch * seq * seq * embed


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention(batch_first: bool) -> None:
    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    shape = (2, 5, 16) if batch_first else (5, 2, 16)
    profile = profile_model(SelfAttention(), torch.randn(shape))
    assert profile.macs == mha_macs(batch=2, seq=5, embed=16)
    assert [layer.name for layer in profile.layers] == ["attn"]
    assert profile.layers[0].params == 4 * 16 * 16 + 4 * 16  # incl. out_proj, never called
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_scaled_dot_product_attention() -> None:
    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 3)
    # QK^T: 2*4*5*7*8, AV: 2*4*5*7*3
    assert count_macs(Sdpa(), (q, k, v)) == 2 * 4 * 5 * 7 * (8 + 3)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_count_both_products_per_step(cell: type[nn.Module]) -> None:
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[cell]
    layer = cell(16, 32, num_layers=2, batch_first=True, bidirectional=True)
    # per layer and direction: T * B * gates * H * (in + H); layer 2 takes both directions
    per_step = gates * 32 * ((16 + 32) + (64 + 32)) * 2
    assert count_macs(layer, torch.randn(3, 20, 16)) == 3 * 20 * per_step


@pytest.mark.parametrize(
    ("pool", "shape", "expected"),
    [
        (nn.MaxPool2d(2), (1, 4, 8, 8), 4 * 4 * 4 * 4),
        (nn.MaxPool2d(3, stride=2, padding=1), (1, 4, 8, 8), 4 * 4 * 4 * 9),
        (nn.AvgPool2d(2), (2, 3, 6, 6), 2 * 3 * 3 * 3 * 4),
        (nn.MaxPool1d(3), (1, 2, 9), 2 * 3 * 3),
        (nn.AdaptiveAvgPool2d(1), (1, 4, 8, 8), 4 * 8 * 8),
        (nn.AdaptiveAvgPool2d(4), (1, 4, 8, 8), 4 * 8 * 8),
        # 8 -> 3: windows [0,3), [2,6), [5,8) of lengths 3 + 4 + 3 = 10 per dimension
        (nn.AdaptiveAvgPool2d(3), (1, 4, 8, 8), 4 * 10 * 10),
        (nn.AdaptiveMaxPool2d((2, 1)), (1, 4, 8, 8), 4 * 8 * 8),
    ],
)
def test_pooling_is_counted_apart_from_macs(
    pool: nn.Module, shape: tuple[int, ...], expected: int
) -> None:
    profile = profile_model(pool, torch.randn(shape))
    assert profile.pool_ops == expected
    assert profile.macs == 0


def test_mean_counts_as_pooling() -> None:
    class GlobalPool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3))

    assert profile_model(GlobalPool(), torch.randn(1, 4, 5, 5)).pool_ops == 100


def test_batch_scales_macs() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    one = count_macs(model, torch.randn(1, 3, 8, 8))
    assert count_macs(model, torch.randn(3, 3, 8, 8)) == 3 * one


@pytest.mark.parametrize("kind,gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_recurrent_layers_count_every_gate_of_every_step(kind: type, gates: int) -> None:
    rnn = kind(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    steps, batch = 12, 2
    first, second = 16 * (8 + 16), 16 * (32 + 16)  # per gate unit: input + hidden products
    expected = 2 * steps * batch * gates * (first + second)  # two directions
    assert count_macs(rnn, torch.randn(batch, steps, 8)) == expected
