"""CIFAR-style residual networks ResNet-8 and ResNet-20 (He et al. 2016, Sec. 4.2).

A 3x3 stem conv, three stages of ``n`` basic blocks with 16/32/64 channels (strides 1/2/2),
global average pooling and a linear classifier: depth ``6n + 2``. Shortcuts that change shape
are 1x1 conv + BN projections (the paper's option B; its CIFAR nets use zero-padding, option A,
which is not a plain conv and so is harder to prune and count).

Stem: stride 1 for small images (larger side < 64 px, as on CIFAR); for larger images a
stride-2 stem conv and a 3x3 stride-2 max-pool downsample by 4, as the ImageNet ResNets do.
"""

from __future__ import annotations

from torch import nn

from mobiledl.models.blocks import (
    BasicBlock,
    ConvBNAct,
    ImageClassifier,
    is_small_image,
    scale_channels,
    stem_pool,
    stem_stride,
)
from mobiledl.models.registry import register_model

STAGE_CHANNELS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


class CifarResNet(ImageClassifier):
    """ResNet for small images with ``blocks_per_stage`` basic blocks in each of 3 stages."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: tuple[int, int],
        blocks_per_stage: int,
        width_mult: float = 1.0,
    ) -> None:
        widths = [scale_channels(c, width_mult) for c in STAGE_CHANNELS]
        layers: list[nn.Module] = [ConvBNAct(in_channels, widths[0], 3, stem_stride(image_size))]
        if not is_small_image(image_size):
            layers.append(stem_pool())
        channels = widths[0]
        for width, stride in zip(widths, STAGE_STRIDES, strict=True):
            for index in range(blocks_per_stage):
                layers.append(BasicBlock(channels, width, stride if index == 0 else 1))
                channels = width
        super().__init__(nn.Sequential(*layers), nn.Linear(channels, num_classes))


@register_model(
    "resnet8",
    description="ResNet-8 for small images: 3 stages (16/32/64) of 1 basic block",
    paper="He et al. 2016, Deep Residual Learning for Image Recognition",
    min_image_size=1,
)
def resnet8(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """ResNet-8 (n = 1)."""
    return CifarResNet(num_classes, in_channels, image_size, 1, width_mult)


@register_model(
    "resnet20",
    description="ResNet-20 for small images: 3 stages (16/32/64) of 3 basic blocks",
    paper="He et al. 2016, Deep Residual Learning for Image Recognition",
    min_image_size=1,
)
def resnet20(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """ResNet-20 (n = 3)."""
    return CifarResNet(num_classes, in_channels, image_size, 3, width_mult)
