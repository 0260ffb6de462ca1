"""TinyTL: memory-efficient transfer learning (Cai et al. 2020, "TinyTL: Reduce Memory, Not
Parameters for Efficient On-Device Learning").

Training memory is dominated by activations, and the weight gradient is what needs them; bias
gradients do not. TinyTL therefore

- freezes every weight of the pretrained network (batch norms keep their statistics and scale),
- trains the biases (batch-norm shifts, convolution and linear biases),
- adds a **lite residual module** beside each block: ``y = block(x) + up(lite(pool(x)))``. The
  lite branch sees the block input at half resolution (2x2 average pooling: a quarter of the
  activation memory), has no inverted bottleneck (its width equals the input's), uses group
  convolutions (a kxk and a 1x1, groups of ``group_width`` channels) and group normalization
  (batch statistics are unreliable at on-device batch sizes; ``norm="batch"`` keeps batch
  norm), and is bilinearly upsampled back to the block's output size. Its last convolution
  starts at zero, so training starts from the pretrained function;
- trains the classifier.

Blocks are the entries of ``model.features`` that contain a convolution and map images to
images (for LeNet-5 these are its bare convolutions; LeNet-300-100 has none and gets biases and
classifier only). ``last_blocks=N`` is the memory knob for a tight budget: lite residuals and
trainable biases only in the last ``N`` blocks (and everything after them), so backward stops
there and the large early activations need neither saving nor gradients. The wrapping is
recorded as the ``tinytl`` model transform, so a saved model reloads with
``mobiledl.models.load_model``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.core.config import MethodConfig
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_transform
from mobiledl.train.transfer import classifier_layer, example_input_for

TRANSFORM = "tinytl"


@dataclass(frozen=True, kw_only=True)
class TinyTLConfig(MethodConfig):
    """Lite residual modules: on/off, resolution divisor, kernel, group width, normalization;
    ``last_blocks``: adapt only the last that many blocks (``None``: all)."""

    lite_residual: bool = True
    downsample: int = 2
    kernel_size: int = 3
    group_width: int = 8
    norm: Literal["group", "batch"] = "group"
    last_blocks: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.last_blocks is not None and self.last_blocks < 1:
            raise UserError(f"tinytl last_blocks must be >= 1; got {self.last_blocks}")
        if self.downsample < 1:
            raise UserError(f"tinytl downsample must be >= 1; got {self.downsample}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise UserError(f"tinytl kernel_size must be odd and >= 1; got {self.kernel_size}")
        if self.group_width < 1:
            raise UserError(f"tinytl group_width must be >= 1; got {self.group_width}")
        if self.norm not in ("group", "batch"):
            raise UserError(f"tinytl norm must be 'group' or 'batch'; got '{self.norm}'")


class LiteResidual(nn.Module):
    """``main(x) + upsample(lite(avg_pool(x)))``: a block plus its lite residual branch."""

    def __init__(
        self, main: nn.Module, in_channels: int, out_channels: int, config: TinyTLConfig
    ) -> None:
        super().__init__()
        self.main = main
        self.downsample = config.downsample
        mid = max(in_channels, config.group_width)
        first = nn.Conv2d(
            in_channels,
            mid,
            config.kernel_size,
            padding=config.kernel_size // 2,
            groups=_groups(in_channels, mid, config.group_width),
            bias=False,
        )
        last = nn.Conv2d(mid, out_channels, 1, groups=_groups(mid, out_channels, 8), bias=False)
        nn.init.zeros_(last.weight)
        norm = (
            nn.GroupNorm(math.gcd(mid, 8), mid) if config.norm == "group" else nn.BatchNorm2d(mid)
        )
        self.lite = nn.Sequential(OrderedDict(conv1=first, norm=norm, act=nn.ReLU(), conv2=last))

    def forward(self, x: Tensor) -> Tensor:
        out = self.main(x)
        branch = x
        height, width = int(x.shape[-2]), int(x.shape[-1])  # static sizes: exports as constants
        if self.downsample > 1:
            kernel = (min(self.downsample, height), min(self.downsample, width))
            branch = F.avg_pool2d(x, kernel, ceil_mode=True)
        branch = self.lite(branch)
        size = (int(out.shape[-2]), int(out.shape[-1]))
        if tuple(branch.shape[-2:]) != size:
            branch = F.interpolate(branch, size=size, mode="bilinear")
        return out + branch


def _groups(in_channels: int, out_channels: int, width: int) -> int:
    """The most groups dividing both channel counts with at least ``width`` inputs each."""
    groups = max(1, math.gcd(in_channels, out_channels))
    while groups > 1 and (
        in_channels // groups < width or in_channels % groups or out_channels % groups
    ):
        groups -= 1
    return groups


def tinytl(
    model: nn.Module, config: TinyTLConfig | None = None, example_input: Tensor | None = None
) -> nn.Module:
    """Prepare ``model`` for TinyTL in place (and return it): lite residuals, frozen weights.

    ``example_input`` (one sample is enough) finds the image-to-image blocks; it defaults to a
    zero image of the model's recorded input shape.
    """
    config = config or TinyTLConfig()
    blocks: list[list[int]] = []
    first_adapted = 0
    if config.lite_residual or config.last_blocks is not None:
        found = find_blocks(model, example_input_for(model, example_input))
        if config.last_blocks is not None:
            found = found[-config.last_blocks :]
            first_adapted = found[0][0] if found else 0
        if config.lite_residual:
            blocks = found
            _wrap(model, blocks, config)
    freeze_for_tinytl(model, first_adapted)
    if getattr(model, "mobiledl_arch", None):
        record_transform(model, TRANSFORM, {"blocks": blocks, **asdict(config)})
    return model


def freeze_for_tinytl(model: nn.Module, first_adapted: int = 0) -> None:
    """Trainable: biases (outside ``features[:first_adapted]``), lite residual modules and the
    classifier; every other weight frozen."""
    lite = {
        id(p) for m in model.modules() if isinstance(m, LiteResidual) for p in m.lite.parameters()
    }
    head = {id(p) for p in classifier_layer(model)[1].parameters()}
    early = {
        id(p)
        for index in range(first_adapted)
        for p in model.features[index].parameters()  # type: ignore[index]
    }
    for name, param in model.named_parameters():
        bias = name.endswith("bias") and id(param) not in early
        param.requires_grad_(bias or id(param) in lite or id(param) in head)


def find_blocks(model: nn.Module, example: Tensor) -> list[list[int]]:
    """``[index, in_channels, out_channels]`` of each image-to-image entry of ``model.features``
    that contains a convolution."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise UserError(
            f"TinyTL needs model.features (an nn.Sequential); {type(model).__name__} has none"
        )
    shapes: dict[int, tuple[torch.Size, torch.Size]] = {}
    handles = [
        child.register_forward_hook(_shape_hook(index, shapes))
        for index, child in enumerate(features)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    blocks = []
    for index, child in enumerate(features):
        if index not in shapes or not any(isinstance(m, nn.Conv2d) for m in child.modules()):
            continue
        (x_shape, y_shape) = shapes[index]
        if len(x_shape) == 4 and len(y_shape) == 4:
            blocks.append([index, int(x_shape[1]), int(y_shape[1])])
    return blocks


def _shape_hook(index: int, shapes: dict[int, tuple[torch.Size, torch.Size]]) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            shapes[index] = (args[0].shape, output.shape)

    return hook


def _wrap(model: nn.Module, blocks: list[list[int]], config: TinyTLConfig) -> None:
    features = model.features
    for index, in_channels, out_channels in blocks:
        if isinstance(features[index], LiteResidual):
            raise UserError(f"features.{index} already has a lite residual module")
        features[index] = LiteResidual(features[index], in_channels, out_channels, config)


@register_transform(TRANSFORM)
def _reapply(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Rebuild the lite residual modules of a saved TinyTL model (weights are loaded after)."""
    settings = {k: v for k, v in config.items() if k != "blocks"}
    _wrap(model, [list(b) for b in config.get("blocks", [])], TinyTLConfig(**settings))
    return model
