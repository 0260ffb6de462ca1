"""The elastic once-for-all supernet (Cai et al., "Once-for-All", ICLR 2020, Sec. 3.2).

Every block slot holds one MBConv (Sandler et al. 2018) with the largest kernel and expand
ratio of the space; a sub-network uses a part of it:

- **elastic kernel**: a smaller depthwise kernel is the centre of the next larger one, passed
  through a learned kernel transformation matrix (shared by the channels of a layer,
  initialised to the identity): 7x7 -> centre 5x5 -> ``T_75`` -> centre 3x3 -> ``T_53``;
- **elastic depth**: a stage keeps its first ``d`` blocks;
- **elastic expand ratio**: a block keeps its first ``mid`` hidden channels; before this
  dimension shrinks, :func:`sort_channels` orders them by importance (L1 norm of the expand
  weights) so the most important ones are shared by all widths;
- **elastic resolution**: the same weights run at every input size of the space; the
  network resizes its input (bilinear, :class:`Resize`) to the resolution of the
  sub-network, so every sub-network takes the task's own input size.

The stem, a fixed first block (expand ratio 1) and the head (1x1 conv, pooling, linear
classifier) are shared by all sub-networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.automl.nas.space import Arch, SearchSpace
from mobiledl.models.blocks import (
    ConvBNAct,
    InvertedResidual,
    activation,
    init_weights,
    is_small_image,
    make_divisible,
)

SE_RATIO = 0.25


def mid_channels(in_channels: int, expand: int) -> int:
    """Hidden width of an MBConv, rounded to a multiple of 8 as in the zoo's blocks."""
    return make_divisible(in_channels * expand)


def se_channels(mid: int) -> int:
    """Squeeze width of the squeeze-excite of a block with ``mid`` hidden channels."""
    return make_divisible(mid * SE_RATIO)


class ElasticBN(nn.BatchNorm2d):
    """Batch norm over the first ``C`` channels of its input, whatever ``C`` is."""

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        return F.batch_norm(
            x,
            self.running_mean[:c],
            self.running_var[:c],
            self.weight[:c],
            self.bias[:c],
            self.training,
            self.momentum,
            self.eps,
        )


class ElasticDepthwise(nn.Module):
    """Depthwise convolution with an elastic kernel size (OFA's kernel transformation)."""

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...], stride: int) -> None:
        super().__init__()
        self.kernel_sizes = kernel_sizes
        self.stride = stride
        big = kernel_sizes[-1]
        self.weight = nn.Parameter(torch.empty(channels, 1, big, big))
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")
        self.transforms = nn.ParameterDict(
            {f"{b}to{s}": nn.Parameter(torch.eye(s * s)) for b, s in self._steps(kernel_sizes[0])}
        )

    def _steps(self, kernel: int) -> list[tuple[int, int]]:
        """(larger, smaller) kernel pairs from the largest down to ``kernel``."""
        sizes = [k for k in self.kernel_sizes if k >= kernel][::-1]
        return list(zip(sizes[:-1], sizes[1:], strict=True))

    def kernel(self, kernel: int, channels: int) -> Tensor:
        """The ``(channels, 1, kernel, kernel)`` weight of the given kernel size."""
        weight = self.weight[:channels]
        for big, small in self._steps(kernel):
            start = (big - small) // 2
            centre = weight[:, :, start : start + small, start : start + small]
            flat = centre.reshape(channels, small * small) @ self.transforms[f"{big}to{small}"]
            weight = flat.reshape(channels, 1, small, small)
        return weight

    def forward(self, x: Tensor, kernel: int) -> Tensor:
        c = x.shape[1]
        return F.conv2d(x, self.kernel(kernel, c), None, self.stride, kernel // 2, 1, c)


class ElasticMBConv(nn.Module):
    """An MBConv whose kernel size and expand ratio are chosen at call time."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        space: SearchSpace,
        act: str,
        use_se: bool,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.act_name, self.use_se = act, use_se
        mid = mid_channels(in_channels, space.expand_ratios[-1])
        self.expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.expand_bn = ElasticBN(mid)
        self.depthwise = ElasticDepthwise(mid, space.kernel_sizes, stride)
        self.depthwise_bn = ElasticBN(mid)
        self.act = activation(act)
        if use_se:
            self.se_reduce = nn.Conv2d(mid, se_channels(mid), 1)
            self.se_expand = nn.Conv2d(se_channels(mid), mid, 1)
        self.project = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor, kernel: int, expand: int) -> Tensor:
        mid = mid_channels(self.in_channels, expand)
        out = self.act(self.expand_bn(F.conv2d(x, self.expand_conv.weight[:mid])))
        out = self.act(self.depthwise_bn(self.depthwise(out, kernel)))
        if self.use_se:
            out = out * self._gate(out, mid)
        out = self.project_bn(F.conv2d(out, self.project.weight[:, :mid]))
        return out + x if self.use_residual else out

    def _gate(self, x: Tensor, mid: int) -> Tensor:
        squeeze = se_channels(mid)
        pooled = F.adaptive_avg_pool2d(x, 1)
        hidden = F.conv2d(
            pooled, self.se_reduce.weight[:squeeze, :mid], self.se_reduce.bias[:squeeze]
        )
        gate = F.conv2d(F.relu(hidden), self.se_expand.weight[:mid, :squeeze])
        return F.hardsigmoid(gate + self.se_expand.bias[:mid].view(1, -1, 1, 1))

    def static_block(self, kernel: int, expand: int) -> InvertedResidual:
        """A fresh zoo ``InvertedResidual`` shaped like this block at ``(kernel, expand)``;
        :meth:`copy_into` fills in the weights."""
        return InvertedResidual(
            self.in_channels,
            self.out_channels,
            self.stride,
            kernel,
            use_se=self.use_se,
            act=self.act_name,
            mid_channels=mid_channels(self.in_channels, expand),
        )

    @torch.no_grad()
    def copy_into(self, block: InvertedResidual, kernel: int, expand: int) -> None:
        """Copy this block's weights at ``(kernel, expand)`` into a zoo ``InvertedResidual``."""
        mid = mid_channels(self.in_channels, expand)
        body = block.body
        body.expand.conv.weight.copy_(self.expand_conv.weight[:mid])
        _copy_bn(body.expand.bn, self.expand_bn, mid)
        body.depthwise.conv.weight.copy_(self.depthwise.kernel(kernel, mid))
        _copy_bn(body.depthwise.bn, self.depthwise_bn, mid)
        if self.use_se:
            squeeze = se_channels(mid)
            body.se.reduce.weight.copy_(self.se_reduce.weight[:squeeze, :mid])
            body.se.reduce.bias.copy_(self.se_reduce.bias[:squeeze])
            body.se.expand.weight.copy_(self.se_expand.weight[:mid, :squeeze])
            body.se.expand.bias.copy_(self.se_expand.bias[:mid])
        body.project.conv.weight.copy_(self.project.weight[:, :mid])
        _copy_bn(body.project.bn, self.project_bn, self.out_channels)


def _copy_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, channels: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).copy_(getattr(source, name)[:channels])


class Resize(nn.Module):
    """Bilinear resize of an image batch to a fixed ``(H, W)`` (ONNX ``Resize``)."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class OFASupernet(nn.Module):
    """Weight-shared supernet of a :class:`SearchSpace`; ``supernet(x, arch)`` runs one
    sub-network on inputs of size ``input_size``, resized to ``arch.resolution``."""

    def __init__(
        self,
        space: SearchSpace,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
    ) -> None:
        super().__init__()
        self.space, self.num_classes, self.in_channels = space, num_classes, in_channels
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.stem_stride = 1 if is_small_image(space.resolutions[-1]) else 2
        self.stem = ConvBNAct(in_channels, space.stem_width, 3, self.stem_stride, act="hswish")
        self.first = InvertedResidual(
            space.stem_width, space.stem_width, 1, 3, expand_ratio=1, act="relu"
        )
        self.blocks = nn.ModuleList()
        channels = space.stem_width
        for stage in space.stages:
            for index in range(space.max_depth):
                stride = stage.stride if index == 0 else 1
                self.blocks.append(
                    ElasticMBConv(channels, stage.width, stride, space, stage.act, stage.use_se)
                )
                channels = stage.width
        self.head = ConvBNAct(channels, space.head_width, 1, act="hswish")
        self.classifier = nn.Linear(space.head_width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor, arch: Arch) -> Tensor:
        if tuple(x.shape[-2:]) != arch.resolution:
            x = Resize(arch.resolution)(x)
        x = self.first(self.stem(x))
        for slot in self.space.active_slots(arch):
            x = self.blocks[slot](x, arch.kernels[slot], arch.expands[slot])
        x = F.adaptive_avg_pool2d(self.head(x), 1)
        return self.classifier(torch.flatten(x, 1))


@torch.no_grad()
def sort_channels(supernet: OFASupernet) -> None:
    """Order every block's hidden channels (and squeeze-excite channels) by importance, the
    L1 norm of their expand weights, so that shrinking the expand ratio keeps the most
    important ones (OFA Sec. 3.2, elastic width). The network function is unchanged."""
    for block in supernet.blocks:
        order = block.expand_conv.weight.abs().sum(dim=(1, 2, 3)).argsort(descending=True)
        _permute(block.expand_conv.weight, order, 0)
        _permute_bn(block.expand_bn, order)
        _permute(block.depthwise.weight, order, 0)
        _permute_bn(block.depthwise_bn, order)
        _permute(block.project.weight, order, 1)
        if block.use_se:
            _permute(block.se_reduce.weight, order, 1)
            _permute(block.se_expand.weight, order, 0)
            _permute(block.se_expand.bias, order, 0)
            squeeze = block.se_reduce.weight.abs().sum(dim=(1, 2, 3)).argsort(descending=True)
            _permute(block.se_reduce.weight, squeeze, 0)
            _permute(block.se_reduce.bias, squeeze, 0)
            _permute(block.se_expand.weight, squeeze, 1)


def _permute(tensor: Tensor, order: Tensor, dim: int) -> None:
    tensor.copy_(tensor.index_select(dim, order))


def _permute_bn(bn: nn.BatchNorm2d, order: Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _permute(getattr(bn, name), order, 0)
