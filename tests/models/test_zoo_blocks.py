"""Building blocks: channel rounding, residual wiring, channel shuffle, activations."""

from __future__ import annotations

import pytest
import torch

from mobiledl.models.blocks import (
    BasicBlock,
    ChannelShuffle,
    ConvBNAct,
    Fire,
    InvertedResidual,
    ShuffleUnit,
    make_divisible,
    stem_stride,
)


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [(32, 8, 32), (1, 8, 8), (4.5, 8, 8), (300, 8, 304), (100, 8, 104), (116, 16, 112)],
)
def test_make_divisible(value: float, divisor: int, expected: int) -> None:
    assert make_divisible(value, divisor) == expected


def test_make_divisible_never_loses_more_than_ten_percent() -> None:
    for value in range(8, 2000):
        rounded = make_divisible(value)
        assert rounded % 8 == 0 and rounded >= 0.9 * value


def test_stem_stride_depends_on_image_size() -> None:
    assert stem_stride((8, 8)) == 1
    assert stem_stride((1, 40)) == 1
    assert stem_stride((224, 224)) == 2


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    out = ChannelShuffle(2)(x).flatten().tolist()
    assert out == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_inverted_residual_options() -> None:
    block = InvertedResidual(16, 16, stride=1, kernel_size=7, expand_ratio=3, use_se=True)
    assert block.use_residual
    assert block.body.depthwise.conv.kernel_size == (7, 7)
    assert block.body.expand.conv.out_channels == 48
    assert "se" in dict(block.body.named_children())
    strided = InvertedResidual(16, 24, stride=2, expand_ratio=1, act="hswish")
    assert not strided.use_residual
    assert "expand" not in dict(strided.body.named_children())
    assert strided(torch.randn(2, 16, 8, 8)).shape == (2, 24, 4, 4)


@pytest.mark.parametrize(
    ("block", "in_channels", "out_shape"),
    [
        (BasicBlock(16, 32, stride=2), 16, (2, 32, 4, 4)),
        (ShuffleUnit(16, 32, stride=2), 16, (2, 32, 4, 4)),
        (ShuffleUnit(32, 32, stride=1), 32, (2, 32, 8, 8)),
        (Fire(16, 8, 16, 16), 16, (2, 32, 8, 8)),
        (ConvBNAct(16, 8, 5, stride=2, act=None), 16, (2, 8, 4, 4)),
    ],
)
def test_block_shapes(block: torch.nn.Module, in_channels: int, out_shape: tuple[int, ...]) -> None:
    assert block(torch.randn(2, in_channels, 8, 8)).shape == out_shape


def test_unknown_activation_raises() -> None:
    with pytest.raises(ValueError, match="swish7"):
        ConvBNAct(8, 8, act="swish7")
