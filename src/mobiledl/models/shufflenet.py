"""ShuffleNet V2 (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design").

The 1.0x layout: a 24-channel 3x3 stem, stages of 4/8/4 units with 116/232/464 channels, a 1x1
conv to 1024 channels, global pooling and a linear classifier. ``width_mult`` scales every
channel count; stage widths are rounded to multiples of 16 so that both halves of the channel
split are multiples of 8 (so 1.0x has 112/240/464 channels). As in the paper, the 1024-channel
conv is not reduced for ``width_mult < 1``.

Stem: for small images (larger side < 64 px) a stride-1 conv and no max-pool; otherwise the
paper's stride-2 conv and 3x3 stride-2 max-pool.
"""

from __future__ import annotations

from torch import nn

from mobiledl.models.blocks import (
    ConvBNAct,
    ImageClassifier,
    ShuffleUnit,
    is_small_image,
    make_divisible,
    scale_channels,
    stem_pool,
    stem_stride,
)
from mobiledl.models.registry import register_model

STAGE_CHANNELS = (116, 232, 464)
STAGE_REPEATS = (4, 8, 4)


class ShuffleNetV2(ImageClassifier):
    """ShuffleNet V2: channel split, branch, concatenation and channel shuffle (Ma et al. 2018)."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
    ) -> None:
        channels = scale_channels(24, width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride(image_size))]
        if not is_small_image(image_size):
            layers.append(stem_pool())
        for width, repeats in zip(STAGE_CHANNELS, STAGE_REPEATS, strict=True):
            width = scale_channels(width, width_mult, divisor=16)
            for index in range(repeats):
                layers.append(ShuffleUnit(channels, width, 2 if index == 0 else 1))
                channels = width
        last = make_divisible(1024 * max(1.0, width_mult))
        layers.append(ConvBNAct(channels, last, 1))
        super().__init__(nn.Sequential(*layers), nn.Linear(last, num_classes))


@register_model(
    "shufflenet_v2",
    description="ShuffleNet V2 1.0x: channel split, depthwise branch, concat, channel shuffle",
    paper="Ma et al. 2018, ShuffleNet V2: Practical Guidelines for Efficient CNN "
    "Architecture Design",
    min_image_size=1,
)
def shufflenet_v2(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """ShuffleNet V2 with all channel counts scaled by ``width_mult``."""
    return ShuffleNetV2(num_classes, in_channels, image_size, width_mult)
