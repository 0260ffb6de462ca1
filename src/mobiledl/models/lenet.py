"""LeNet family (LeCun et al. 1998; Han et al. 2015): the classic small baselines of pruning papers.

Both models scale their hidden sizes by ``width_mult`` and round them to multiples of 8 with
:func:`~mobiledl.models.blocks.make_divisible`, so at ``width_mult=1`` LeNet-300-100 has hidden
sizes 304 and 104 and LeNet-5 has 8/16/120 feature maps and an 88-unit hidden layer (the paper:
300/100 and 6/16/120/84). Like the papers, neither model uses batch norm; ReLU replaces the
original sigmoid-like squashing functions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobiledl.models.blocks import ImageClassifier, scale_channels
from mobiledl.models.registry import register_model


class LeNet300(nn.Module):
    """LeNet-300-100: a fully connected net on the flattened image (LeCun et al. 1998).

    The pruning benchmark of Han et al. 2015 ("Learning both Weights and Connections").
    The input size is fixed at build time because the first layer sees every pixel.
    """

    def __init__(
        self, num_classes: int, in_features: int, hidden: tuple[int, int] = (300, 100)
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(in_features, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden[1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(torch.flatten(x, 1)))


def lenet5_features(in_channels: int, widths: tuple[int, int, int]) -> nn.Sequential:
    """C1 - S2 - C3 - S4 - C5 of LeNet-5 with 'same' 5x5 convs and ceil-mode 2x2 max-pools.

    'Same' padding and ceil-mode pooling let any input size down to 1x1 through (a height of 1
    stays 1); the classifier then sees C5 after global average pooling. On a 32x32 input the
    layers have the paper's kernel sizes but C5 sees an 8x8 map instead of 5x5 without padding.
    """
    c1, c3, c5 = widths
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(c1, c3, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(c3, c5, 5, padding=2),
        nn.ReLU(),
    )


class LeNet5(ImageClassifier):
    """LeNet-5 convolutional net (LeCun et al. 1998), adapted to any input size.

    No downsampling stem is added for large inputs: LeNet-5 is meant for small images.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, int, int] = (6, 16, 120),
        hidden: int = 84,
    ) -> None:
        classifier = nn.Sequential(
            nn.Linear(widths[2], hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        super().__init__(lenet5_features(in_channels, widths), classifier)


@register_model(
    "lenet300",
    description="LeNet-300-100 MLP on the flattened input (hidden sizes scale with width)",
    paper="LeCun et al. 1998, Gradient-Based Learning Applied to Document Recognition",
    min_image_size=1,
)
def lenet300(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """LeNet-300-100 for ``in_channels * H * W`` input features."""
    in_features = in_channels * image_size[0] * image_size[1]
    hidden = (scale_channels(300, width_mult), scale_channels(100, width_mult))
    return LeNet300(num_classes, in_features, hidden)


@register_model(
    "lenet5",
    description="LeNet-5 CNN: three 5x5 convs with 'same' padding, 2x2 ceil-mode max-pools, "
    "global average pooling, two linear layers; works for any size down to 1x1",
    paper="LeCun et al. 1998, Gradient-Based Learning Applied to Document Recognition",
    min_image_size=1,
)
def lenet5(
    num_classes: int, in_channels: int, image_size: tuple[int, int], width_mult: float
) -> nn.Module:
    """LeNet-5; ``image_size`` is not needed because the net ends in global pooling."""
    del image_size
    widths = (
        scale_channels(6, width_mult),
        scale_channels(16, width_mult),
        scale_channels(120, width_mult),
    )
    return LeNet5(num_classes, in_channels, widths, scale_channels(84, width_mult))
