"""``macs`` agrees with fvcore and torchprofile within 1%.

Both tools also count batch norm, some pooling and element-wise ops, each in its own way
(fvcore counts adaptive-average-pool inputs, torchprofile its outputs, plus ``mul``); the
profiler's ``macs`` covers convolutions, linear layers, matrix products and attention, so
we compare against those ops of theirs.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn

from mobiledl.profile import profile_model

pytestmark = pytest.mark.usefixtures("single_thread")

TOLERANCE = 0.01

FVCORE_OPS = {"conv", "linear", "matmul", "addmm", "bmm", "einsum", "mm"}
TORCHPROFILE_OPS = {
    "aten::_convolution",
    "aten::linear",
    "aten::matmul",
    "aten::addmm",
    "aten::addmv",
    "aten::bmm",
    "aten::baddbmm",
    "aten::einsum",
    "aten::scaled_dot_product_attention",
}


def fvcore_macs(model: nn.Module, x: torch.Tensor) -> int:
    """fvcore's count (it reports MACs as "flops") over conv, linear and matmul ops."""
    from fvcore.nn import FlopCountAnalysis

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model.eval(), x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            by_op = analysis.by_operator()
    finally:
        logging.disable(logging.NOTSET)
    return sum(count for op, count in by_op.items() if op in FVCORE_OPS)


def torchprofile_macs(model: nn.Module, x: torch.Tensor) -> int:
    """torchprofile's count over conv, linear, matmul and attention ops."""
    from torchprofile import profile_macs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_node = profile_macs(model.eval(), x, reduction=None)
    return sum(count for node, count in per_node.items() if node.operator in TORCHPROFILE_OPS)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


def vgg_small(cin: int) -> nn.Module:
    """Pool-heavy: a max pool after every conv stage, average pooling at the end."""
    return nn.Sequential(
        conv_bn(cin, 16),
        nn.MaxPool2d(2, ceil_mode=True),
        conv_bn(16, 32),
        nn.MaxPool2d(2, ceil_mode=True),
        conv_bn(32, 64),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(3),
        nn.Flatten(),
        nn.Linear(64 * 9, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = (
            nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet_small(cin: int) -> nn.Module:
    return nn.Sequential(
        conv_bn(cin, 16),
        BasicBlock(16, 16, 1),
        BasicBlock(16, 32, 2),
        BasicBlock(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Conv2d(channels, channels // 4, 1),
            nn.ReLU(),
            nn.Conv2d(channels // 4, channels, 1),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(
            conv_bn(cin, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            SqueezeExcite(hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


def mobilenet_small(cin: int) -> nn.Module:
    return nn.Sequential(
        conv_bn(cin, 16, stride=2),
        InvertedResidual(16, 16, 1),
        InvertedResidual(16, 24, 2),
        InvertedResidual(24, 24, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    )


class ShuffleUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        out = torch.cat([left, self.branch(right)], dim=1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def shufflenet_small(cin: int) -> nn.Module:
    return nn.Sequential(
        conv_bn(cin, 32),
        nn.MaxPool2d(3, 2, 1),
        ShuffleUnit(32),
        ShuffleUnit(32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class TinyViT(nn.Module):
    """Patch embedding, one attention block written with nn.MultiheadAttention, pooled head."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.patch = nn.Conv2d(cin, 32, 4, 4)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(tokens, tokens, tokens)[0]  # need_weights: bmm, not SDPA
        return self.head((tokens + self.mlp(tokens)).mean(1))


SMALL_CNNS = {
    "vgg": vgg_small,
    "resnet": resnet_small,
    "mobilenet": mobilenet_small,
    "shufflenet": shufflenet_small,
    "vit": TinyViT,
}


def assert_agrees(model: nn.Module, x: torch.Tensor) -> None:
    ours = profile_model(model, x).macs
    assert ours > 0
    for reference in (fvcore_macs(model, x), torchprofile_macs(model, x)):
        assert abs(ours - reference) <= TOLERANCE * reference, (ours, reference)


@pytest.mark.parametrize("name", SMALL_CNNS)
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 32, 32)])
def test_small_models_agree(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    assert_agrees(SMALL_CNNS[name](shape[0]), torch.randn(1, *shape))


def test_pool_heavy_model_keeps_pooling_out_of_macs() -> None:
    model, x = vgg_small(3), torch.randn(1, 3, 32, 32)
    profile = profile_model(model, x)
    # max pools: 16*16*16*4 + 32*8*8*4; avg pool 64*4*4*4; adaptive 4 -> 3: windows 2+2+2 per dim
    assert profile.pool_ops == 16384 + 8192 + 4096 + 64 * 6 * 6
    assert profile.macs == fvcore_macs(model, x)


def test_transformer_encoder_agrees_with_torchprofile() -> None:
    """Its attention runs as SDPA, which torchprofile counts and fvcore does not."""
    model = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    x = torch.randn(2, 6, 32)
    assert profile_model(model, x).macs == torchprofile_macs(model, x)


def zoo_names() -> list[str]:
    try:
        from mobiledl.models import list_models

        return [info.name for info in list_models(inputs="image")]
    except Exception:  # the zoo is built in parallel; absent or broken means nothing to check
        return []


@pytest.mark.parametrize("name", zoo_names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_zoo_models_agree(name: str, shape: tuple[int, int, int]) -> None:
    from mobiledl.errors import UserError
    from mobiledl.models import create_model

    try:
        model = create_model(name, in_channels=shape[0], image_size=shape[1:])
    except UserError as exc:  # e.g. an image below the model's minimum size
        pytest.skip(str(exc))
    torch.manual_seed(0)
    assert_agrees(model, torch.randn(1, *shape))
