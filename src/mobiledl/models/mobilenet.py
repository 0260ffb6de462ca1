"""MobileNet V1, V2 and V3-Small (Howard et al. 2017; Sandler et al. 2018; Howard et al. 2019).

All three keep the papers' layer tables. The only change for small inputs is the stem: its first
conv has stride 1 when the larger image side is below 64 px (CIFAR-style) and stride 2 (the
paper's ImageNet stem) otherwise. A spatial size of 1 stays 1 through every strided conv, so
1x40 and 8x8 inputs work.
"""

from __future__ import annotations

from torch import nn

from mobiledl.models.blocks import (
    ConvBNAct,
    DepthwiseSeparable,
    ImageClassifier,
    InvertedResidual,
    make_divisible,
    scale_channels,
    stem_stride,
)
from mobiledl.models.registry import register_model

# MobileNetV1 (Howard et al. 2017, Table 1): (output channels, stride) of each separable block.
V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)

# MobileNetV2 (Sandler et al. 2018, Table 2): expand ratio t, channels c, repeats n, stride s.
V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

# MobileNetV3-Small (Howard et al. 2019, Table 2):
# kernel, expansion size, output channels, squeeze-excite, activation, stride.
V3_SMALL_BLOCKS = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2),
    (5, 240, 40, True, "hswish", 1),
    (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1),
    (5, 144, 48, True, "hswish", 1),
    (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1),
    (5, 576, 96, True, "hswish", 1),
)


class MobileNetV1(ImageClassifier):
    """MobileNetV1: a 3x3 stem and 13 depthwise separable blocks (Howard et al. 2017)."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
    ) -> None:
        channels = scale_channels(32, width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride(image_size))]
        for out, stride in V1_BLOCKS:
            out = scale_channels(out, width_mult)
            layers.append(DepthwiseSeparable(channels, out, stride))
            channels = out
        super().__init__(nn.Sequential(*layers), nn.Linear(channels, num_classes))


class MobileNetV2(ImageClassifier):
    """MobileNetV2: inverted residuals with linear bottlenecks (Sandler et al. 2018).

    As in the paper, the last 1x1 conv keeps 1280 channels for ``width_mult < 1``.
    """

    def __init__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
    ) -> None:
        channels = scale_channels(32, width_mult)
        stem = ConvBNAct(in_channels, channels, 3, stem_stride(image_size), act="relu6")
        layers: list[nn.Module] = [stem]
        for expand, out, repeats, stride in V2_STAGES:
            out = scale_channels(out, width_mult)
            for index in range(repeats):
                block_stride = stride if index == 0 else 1
                layers.append(InvertedResidual(channels, out, block_stride, 3, expand))
                channels = out
        last = make_divisible(1280 * max(1.0, width_mult))
        layers.append(ConvBNAct(channels, last, 1, act="relu6"))
        classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        super().__init__(nn.Sequential(*layers), classifier)


class MobileNetV3Small(ImageClassifier):
    """MobileNetV3-Small: bottlenecks with squeeze-excite and h-swish (Howard et al. 2019).

    The head is the paper's: 1x1 conv to 576 channels, global pooling, a 1024-unit layer
    without batch norm (a linear layer here; the paper writes it as a 1x1 conv), h-swish,
    dropout and the classifier. The 1024 units are not reduced for ``width_mult < 1``.
    """

    def __init__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
    ) -> None:
        channels = scale_channels(16, width_mult)
        stem = ConvBNAct(in_channels, channels, 3, stem_stride(image_size), act="hswish")
        layers: list[nn.Module] = [stem]
        for kernel, expansion, out, use_se, act, stride in V3_SMALL_BLOCKS:
            mid = scale_channels(expansion, width_mult)
            out = scale_channels(out, width_mult)
            block = InvertedResidual(
                channels, out, stride, kernel, use_se=use_se, act=act, mid_channels=mid
            )
            layers.append(block)
            channels = out
        last_conv = scale_channels(576, width_mult)
        layers.append(ConvBNAct(channels, last_conv, 1, act="hswish"))
        hidden = make_divisible(1024 * max(1.0, width_mult))
        classifier = nn.Sequential(
            nn.Linear(last_conv, hidden),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )
        super().__init__(nn.Sequential(*layers), classifier)


@register_model(
    "mobilenet_v1",
    description="MobileNetV1: 13 depthwise separable conv blocks (32 to 1024 channels)",
    paper="Howard et al. 2017, MobileNets: Efficient Convolutional Neural Networks "
    "for Mobile Vision Applications",
    min_image_size=1,
)
def mobilenet_v1(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """MobileNetV1 with width multiplier alpha = ``width_mult``."""
    return MobileNetV1(num_classes, in_channels, image_size, width_mult)


@register_model(
    "mobilenet_v2",
    description="MobileNetV2: inverted residual blocks with linear bottlenecks, ReLU6",
    paper="Sandler et al. 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    min_image_size=1,
)
def mobilenet_v2(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """MobileNetV2 with width multiplier ``width_mult``."""
    return MobileNetV2(num_classes, in_channels, image_size, width_mult)


@register_model(
    "mobilenet_v3_small",
    description="MobileNetV3-Small: inverted residuals with squeeze-excite and h-swish",
    paper="Howard et al. 2019, Searching for MobileNetV3",
    min_image_size=1,
)
def mobilenet_v3_small(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """MobileNetV3-Small with width multiplier ``width_mult``."""
    return MobileNetV3Small(num_classes, in_channels, image_size, width_mult)
