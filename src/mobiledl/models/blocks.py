"""Reusable building blocks of compact CNNs (Cai et al. 2022, Sec. 2.5 "compact model design").

Every block is built from standard ``nn.Conv2d`` / ``nn.BatchNorm2d`` / activation modules so that
MAC counters (fvcore, torchprofile), ``torch.fx.symbolic_trace`` and ONNX export all see plain
layers. Blocks take their shape (kernel size, stride, expand ratio, squeeze-excite on/off,
activation) as constructor arguments so a NAS supernet can build on them.

Blocks and the papers they come from:

- :class:`ConvBNAct`: convolution + batch norm (Ioffe & Szegedy 2015) + activation.
- :class:`BasicBlock`: residual block of two 3x3 convolutions (He et al. 2016, ResNet).
- :class:`DepthwiseSeparable`: depthwise + pointwise convolution (Howard et al. 2017, MobileNets).
- :class:`InvertedResidual`: expand / depthwise / linear-bottleneck project block
  (Sandler et al. 2018, MobileNetV2), with optional squeeze-excite and h-swish
  (Howard et al. 2019, MobileNetV3); the MBConv of MCUNet (Lin et al. 2020).
- :class:`SqueezeExcite`: channel attention (Hu et al. 2018, Squeeze-and-Excitation Networks).
- :class:`ChannelShuffle`, :class:`ShuffleUnit`: ShuffleNet V2 unit (Ma et al. 2018).
- :class:`Fire`: squeeze + expand module (Iandola et al. 2016, SqueezeNet).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

#: Images whose larger side is below this many pixels get a CIFAR-style stem (stride 1, no
#: max-pool); larger images get the ImageNet-style downsampling stem of the paper.
SMALL_IMAGE_LIMIT = 64

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never below ``min_value``.

    ``min_value`` defaults to ``divisor``. Rounding down never loses more than 10% of
    ``value`` (the rule of the MobileNetV2 reference code, Sandler et al. 2018). Channel counts
    that are multiples of 8 run much faster in ONNX Runtime.
    """
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """``channels * width_mult`` rounded by :func:`make_divisible` (at least ``divisor``)."""
    return make_divisible(channels * width_mult, divisor)


def is_small_image(image_size: tuple[int, int]) -> bool:
    """True if the larger side is below :data:`SMALL_IMAGE_LIMIT` (CIFAR-style stem)."""
    return max(image_size) < SMALL_IMAGE_LIMIT


def stem_stride(image_size: tuple[int, int]) -> int:
    """Stride of a model's first convolution: 1 for small images, 2 (ImageNet-style) otherwise."""
    return 1 if is_small_image(image_size) else 2


def activation(name: str | None) -> nn.Module | None:
    """A fresh activation module by name (``relu``, ``relu6``, ``hswish``, ``hsigmoid``).

    Activations are not in-place, which keeps autograd, fx graphs and quantizers simple.
    """
    if name is None:
        return None
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose from {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def stem_pool() -> nn.MaxPool2d:
    """3x3 stride-2 max-pool with padding 1: halves even sizes and keeps a size of 1 at 1."""
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation, "same" padding.

    With ``act=None`` the block is linear, as the projection of a linear bottleneck
    (Sandler et al. 2018). ``groups=in_channels`` gives a depthwise convolution
    (Howard et al. 2017).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ) -> None:
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=conv, bn=nn.BatchNorm2d(out_channels)
        )
        act_module = activation(act)
        if act_module is not None:
            layers["act"] = act_module
        super().__init__(layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel gate (Hu et al. 2018).

    Global average pool, 1x1 conv down to ``squeeze_channels``, activation, 1x1 conv back up,
    gate (hard sigmoid as in MobileNetV3, Howard et al. 2019), and a channel-wise product.
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        act: str = "relu",
        gate: str = "hsigmoid",
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = activation(act)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = activation(gate)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * scale


class BasicBlock(nn.Module):
    """ResNet basic block: two kxk conv-BN layers and a residual add (He et al. 2016).

    The shortcut is the identity, or a 1x1 conv + BN projection ("option B" of the paper) when
    the stride or channel count changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, kernel_size, stride, act=act)
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel_size, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvBNAct(in_channels, out_channels, 1, stride, act=None)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class DepthwiseSeparable(nn.Module):
    """Depthwise kxk conv-BN-act followed by pointwise 1x1 conv-BN-act (Howard et al. 2017)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.depthwise = ConvBNAct(
            in_channels, in_channels, kernel_size, stride, groups=in_channels, act=act
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class InvertedResidual(nn.Module):
    """Inverted residual with linear bottleneck, a.k.a. MBConv (Sandler et al. 2018).

    1x1 expansion to ``mid_channels`` (skipped when it equals ``in_channels``), kxk depthwise
    conv, optional squeeze-excite (Howard et al. 2019), and a linear 1x1 projection (BN, no
    activation). The input is added back when stride is 1 and the channel count is unchanged.

    ``mid_channels`` defaults to ``make_divisible(in_channels * expand_ratio)``; MobileNetV3
    passes it explicitly because its table lists expansion sizes, not ratios.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        expand_ratio: float = 6.0,
        use_se: bool = False,
        act: str = "relu6",
        mid_channels: int | None = None,
        se_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        if mid_channels is None:
            mid_channels = make_divisible(in_channels * expand_ratio)
            if expand_ratio == 1:
                mid_channels = in_channels
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if mid_channels != in_channels:
            layers["expand"] = ConvBNAct(in_channels, mid_channels, 1, act=act)
        layers["depthwise"] = ConvBNAct(
            mid_channels, mid_channels, kernel_size, stride, groups=mid_channels, act=act
        )
        if use_se:
            squeeze = make_divisible(mid_channels * se_ratio)
            layers["se"] = SqueezeExcite(mid_channels, squeeze)
        layers["project"] = ConvBNAct(mid_channels, out_channels, 1, act=None)
        self.body = nn.Sequential(layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.use_residual:  # fixed at construction, not data-dependent
            out = out + x
        return out


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (Zhang et al. 2018; Ma et al. 2018).

    Sizes are read from ``x.shape`` so the batch dimension stays dynamic in ONNX.
    """

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        x = x.reshape(batch, self.groups, channels // self.groups, height, width)
        return x.transpose(1, 2).reshape(batch, channels, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNet V2 unit (Ma et al. 2018, Fig. 3c/3d).

    Stride 1: split the channels in two halves, transform one half (1x1, kxk depthwise, 1x1),
    concatenate with the untouched half, and shuffle. Stride 2: both branches see the whole
    input (the left one is kxk depthwise + 1x1), so the output has twice the branch width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 shuffle unit keeps its width; got {in_channels}->{out_channels}"
            )
        branch = out_channels // 2
        self.stride = stride
        self.left: nn.Module = nn.Identity()
        if stride != 1:
            self.left = nn.Sequential(
                ConvBNAct(in_channels, in_channels, kernel_size, stride, in_channels, act=None),
                ConvBNAct(in_channels, branch, 1, act=act),
            )
        right_in = in_channels if stride != 1 else in_channels // 2
        self.right = nn.Sequential(
            ConvBNAct(right_in, branch, 1, act=act),
            ConvBNAct(branch, branch, kernel_size, stride, groups=branch, act=None),
            ConvBNAct(branch, branch, 1, act=act),
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:  # fixed at construction, not data-dependent
            halves = torch.chunk(x, 2, dim=1)
            out = torch.cat([halves[0], self.right(halves[1])], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.shuffle(out)


class Fire(nn.Module):
    """SqueezeNet fire module (Iandola et al. 2016).

    A 1x1 "squeeze" conv, then parallel 1x1 and 3x3 "expand" convs whose outputs are
    concatenated. Batch norm follows every conv (a deviation from the paper, for stable
    training without its careful initialisation).
    """

    def __init__(
        self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int, act: str = "relu"
    ) -> None:
        super().__init__()
        self.squeeze = ConvBNAct(in_channels, squeeze, 1, act=act)
        self.expand1x1 = ConvBNAct(squeeze, expand1x1, 1, act=act)
        self.expand3x3 = ConvBNAct(squeeze, expand3x3, 3, act=act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


class ImageClassifier(nn.Module):
    """Common shape of every zoo model: ``features`` -> ``pool`` -> flatten -> ``classifier``.

    ``features`` is an ``nn.Sequential`` of the convolutional trunk, ``pool`` a global average
    pool and ``classifier`` ends with the ``nn.Linear`` producing the logits, so methods like
    last-layer fine-tuning or distillation find the same attributes on every model.
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (He et al. 2015), unit-gamma zero-beta BN, zero conv biases.

    Linear layers keep PyTorch's default (Kaiming-uniform) initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
