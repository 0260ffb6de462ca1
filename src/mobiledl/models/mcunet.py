"""An MCUNet-style tiny network (Lin et al. 2020, "MCUNet: Tiny Deep Learning on IoT Devices").

MCUNet's TinyNAS searches MobileNetV2-like MBConv nets whose widths, kernel sizes (3/5/7) and
expand ratios (3-6) differ block by block, under the memory limits of a microcontroller. The
layout below is hand-written in that style (it is not one of the searched models from the
paper): narrow layers (8 to 160 channels), mixed kernel sizes and expand ratios, ReLU6, no
squeeze-excite and no wide 1x1 head, so the peak activation memory stays small.

Stem: stride 1 for small images (larger side < 64 px), stride 2 otherwise.
"""

from __future__ import annotations

from torch import nn

from mobiledl.models.blocks import (
    ConvBNAct,
    ImageClassifier,
    InvertedResidual,
    scale_channels,
    stem_stride,
)
from mobiledl.models.registry import register_model

STEM_CHANNELS = 16

# expand ratio, kernel size, output channels, stride of each MBConv block.
MCUNET_BLOCKS = (
    (1, 3, 8, 1),
    (4, 7, 16, 2),
    (3, 3, 16, 1),
    (4, 5, 24, 2),
    (3, 7, 24, 1),
    (3, 3, 24, 1),
    (5, 5, 40, 2),
    (4, 3, 40, 1),
    (4, 7, 48, 1),
    (3, 5, 48, 1),
    (6, 5, 96, 2),
    (4, 7, 96, 1),
    (3, 3, 160, 1),
)


class MCUNet(ImageClassifier):
    """Tiny MBConv net with mixed kernel sizes and expand ratios, after Lin et al. 2020."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
    ) -> None:
        channels = scale_channels(STEM_CHANNELS, width_mult)
        stem = ConvBNAct(in_channels, channels, 3, stem_stride(image_size), act="relu6")
        layers: list[nn.Module] = [stem]
        for expand, kernel, out, stride in MCUNET_BLOCKS:
            out = scale_channels(out, width_mult)
            layers.append(InvertedResidual(channels, out, stride, kernel, expand, act="relu6"))
            channels = out
        super().__init__(nn.Sequential(*layers), nn.Linear(channels, num_classes))


@register_model(
    "mcunet",
    description="MCUNet-style tiny MBConv net: 8-160 channels, kernels 3/5/7, expand ratios "
    "1-6, no wide head; for microcontroller-sized memory",
    paper="Lin et al. 2020, MCUNet: Tiny Deep Learning on IoT Devices",
    min_image_size=1,
)
def mcunet(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """The MCUNet-style net with all channel counts scaled by ``width_mult``."""
    return MCUNet(num_classes, in_channels, image_size, width_mult)
