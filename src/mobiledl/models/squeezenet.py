"""SqueezeNet (Iandola et al. 2016, "SqueezeNet: AlexNet-level accuracy with 50x fewer
parameters and <0.5MB model size"), in its v1.1 layout.

A 64-channel 3x3 stem conv, eight fire modules with 3x3 stride-2 max-pools after the stem, fire3
and fire5, dropout, global average pooling and a linear classifier. Deviations from the paper:
batch norm after every conv, and the final 1x1 conv + ReLU + average pool is replaced by
average pool + linear layer (the same linear map without the ReLU on the logits, computed once
instead of at every position).

Stem: for small images (larger side < 64 px) the stem conv has stride 1 and is not followed by
a max-pool; otherwise stride 2 and a max-pool, as in the paper. The max-pools have padding 1 so
a spatial size of 1 stays 1.
"""

from __future__ import annotations

from torch import nn

from mobiledl.models.blocks import (
    ConvBNAct,
    Fire,
    ImageClassifier,
    is_small_image,
    scale_channels,
    stem_pool,
    stem_stride,
)
from mobiledl.models.registry import register_model

# (squeeze, expand 1x1, expand 3x3) of fire2..fire9; "pool" marks a 3x3 stride-2 max-pool.
FIRE_LAYOUT: tuple[tuple[int, int, int] | str, ...] = (
    (16, 64, 64),
    (16, 64, 64),
    "pool",
    (32, 128, 128),
    (32, 128, 128),
    "pool",
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
)


class SqueezeNet(ImageClassifier):
    """SqueezeNet v1.1 with batch norm (Iandola et al. 2016)."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
    ) -> None:
        channels = scale_channels(64, width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stem_stride(image_size))]
        if not is_small_image(image_size):
            layers.append(stem_pool())
        for item in FIRE_LAYOUT:
            if isinstance(item, str):
                layers.append(stem_pool())
                continue
            squeeze, expand1, expand3 = (scale_channels(c, width_mult) for c in item)
            layers.append(Fire(channels, squeeze, expand1, expand3))
            channels = expand1 + expand3
        classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(channels, num_classes))
        super().__init__(nn.Sequential(*layers), classifier)


@register_model(
    "squeezenet",
    description="SqueezeNet v1.1 with batch norm: fire modules (1x1 squeeze, concat of 1x1 "
    "and 3x3 expand)",
    paper="Iandola et al. 2016, SqueezeNet: AlexNet-level accuracy with 50x fewer parameters",
    min_image_size=1,
)
def squeezenet(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """SqueezeNet v1.1 with all channel counts scaled by ``width_mult``."""
    return SqueezeNet(num_classes, in_channels, image_size, width_mult)
