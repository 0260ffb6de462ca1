"""Conformance on user-style models written outside the zoo (issue 13).

Every architecture below runs through profiling (MACs within 2% of an independent count),
channel pruning to half the MACs, factorization to a MAC target, PTQ with an int8 ONNX
export run in ONNX Runtime, and fine-grained pruning. A method meets its target within 2%
or ends with exactly one warning; where it cannot handle a pattern it raises a one-line
``UserError``. The models are tiny so the whole file runs in seconds per model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl import apply
from mobiledl.compress.factorize import FactorizeConfig
from mobiledl.compress.prune import ChannelPruneConfig, PruneConfig, sparsity_of
from mobiledl.compress.quantize import QuantConfig
from mobiledl.data.task import Task
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.profile import count_macs

pytestmark = pytest.mark.usefixtures("single_thread")

TOLERANCE = 0.02
CLASSES = 4
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


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


def head(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, CLASSES))


# ---------------------------------------------------------------- the architectures


class DenseNet(nn.Module):
    """Every layer reads the concatenation of all feature maps before it."""

    def __init__(self, growth: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.layers = nn.ModuleList(conv_bn(32 + i * growth, growth) for i in range(3))
        self.transition = conv_bn(32 + 3 * growth, 48, 1)
        self.head = head(48)

    def forward(self, x: Tensor) -> Tensor:
        features = self.stem(x)
        for layer in self.layers:
            features = torch.cat([features, layer(features)], 1)
        return self.head(F.avg_pool2d(self.transition(features), 2))


class Inception(nn.Module):
    """Parallel 1x1, 3x3, double-3x3 and pool-projection branches, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.b1 = conv_bn(32, 16, 1)
        self.b3 = nn.Sequential(conv_bn(32, 16, 1), conv_bn(16, 24))
        self.b5 = nn.Sequential(conv_bn(32, 8, 1), conv_bn(8, 16), conv_bn(16, 16))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(32, 16, 1))
        self.head = head(72)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.head(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1))


class Ghost(nn.Module):
    """GhostNet-style: a primary conv, cheap depthwise features, concat, then a slice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.primary = conv_bn(32, 24, 1)
        self.cheap = conv_bn(24, 24, 3, groups=24)
        self.out = conv_bn(40, 48)
        self.head = head(48)

    def forward(self, x: Tensor) -> Tensor:
        primary = self.primary(self.stem(x))
        ghost = torch.cat([primary, self.cheap(primary)], 1)[:, :40]
        return self.head(self.out(ghost))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // 4, 1)
        self.fc2 = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * scale


class GroupedSE(nn.Module):
    """ResNeXt-style grouped convolution (4 groups) with squeeze-excite and a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.reduce = conv_bn(32, 32, 1)
        self.grouped = conv_bn(32, 32, 3, groups=4)
        self.se = SqueezeExcite(32)
        self.head = head(32)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.head(F.relu(x + self.se(self.grouped(self.reduce(x)))))


class ConvAttention(nn.Module):
    """A conv stem, then ``nn.MultiheadAttention`` over its positions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 32), conv_bn(32, 32, 3, 2))
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        mixed, _ = self.attention(tokens, tokens, tokens)
        return self.fc(self.norm(tokens + mixed).mean(1))


class UNet(nn.Module):
    """Encoder-decoder: downsample, upsample and concatenate the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = conv_bn(3, 16)
        self.enc2 = conv_bn(16, 32)
        self.bottom = conv_bn(32, 32)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = conv_bn(32 + 16, 16)
        self.head = head(16)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.enc1(x)
        deep = self.bottom(self.enc2(F.max_pool2d(skip, 2)))
        return self.head(self.dec(torch.cat([self.up(deep), skip], 1)))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNet(nn.Module):
    """Grouped 1x1 convolutions with a channel shuffle between them (ShuffleNet v1)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.g1 = conv_bn(32, 32, 1, groups=4)
        self.dw = conv_bn(32, 32, 3, groups=32)
        self.g2 = conv_bn(32, 32, 1, groups=4)
        self.head = head(32)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        y = self.g2(self.dw(channel_shuffle(self.g1(x), 4)))
        return self.head(F.relu(x + y))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = conv_bn(cin, squeeze, 1)
        self.e1 = conv_bn(squeeze, expand, 1)
        self.e3 = conv_bn(squeeze, expand, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet fire modules: squeeze 1x1, then 1x1 and 3x3 expands concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.fire1 = Fire(32, 16, 32)
        self.fire2 = Fire(64, 16, 32)
        self.head = head(64)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.fire2(F.max_pool2d(self.fire1(self.stem(x)), 2)))


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.body = nn.Sequential(
            conv_bn(channels, hidden, 1),
            conv_bn(hidden, hidden, 3, groups=hidden),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DepthwiseResidual(nn.Module):
    """MobileNetV2-style depthwise-separable inverted residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.blocks = nn.Sequential(InvertedResidual(16), InvertedResidual(16))
        self.head = head(16)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


class TinyViT(nn.Module):
    """Patch embedding, a class token, position embeddings and two encoder layers."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        return self.fc(self.norm(self.encoder(tokens))[:, 0])


class Conv1dNet(nn.Module):
    """A 1-D convolutional net over a two-channel signal."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(2, 16, 5, padding=2),
            nn.BatchNorm1d(16),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


class Recurrent(nn.Module):
    """A recurrent encoder (LSTM or GRU) over a sequence, then a linear classifier head."""

    def __init__(self, kind: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.rnn = kind(16, 32, batch_first=True)
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        outputs, _ = self.rnn(torch.relu(self.embed(x)))
        return self.fc(outputs[:, -1])


IMAGE = (3, 16, 16)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "dense_concat": (DenseNet, IMAGE),
    "inception": (Inception, IMAGE),
    "ghost_slice": (Ghost, IMAGE),
    "grouped_se": (GroupedSE, IMAGE),
    "conv_attention": (ConvAttention, IMAGE),
    "unet_skips": (UNet, IMAGE),
    "channel_shuffle": (ShuffleNet, IMAGE),
    "fire": (SqueezeNet, IMAGE),
    "depthwise_residual": (DepthwiseResidual, IMAGE),
    "tiny_vit": (TinyViT, IMAGE),
    "conv1d": (Conv1dNet, (2, 64)),
    "lstm_head": (lambda: Recurrent(nn.LSTM), (12, 8)),
    "gru_head": (lambda: Recurrent(nn.GRU), (12, 8)),
}


# ---------------------------------------------------------------- helpers


def make_task(shape: tuple[int, ...]) -> Task:
    """Random inputs with labels a linear function of them decides (learnable, tiny)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, *shape, generator=generator)
    y = x.flatten(1)[:, :CLASSES].argmax(1)
    return Task("conformance", CLASSES, x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:])


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> tuple[str, nn.Module, Task]:
    build, shape = MODELS[request.param]
    torch.manual_seed(0)
    model = build().eval()
    task = make_task(shape)
    with torch.no_grad():  # non-trivial batch-norm statistics, as a trained model has
        model.train()
        model(task.x_train)
        model.eval()
    return request.param, model, task


def run_method(model: nn.Module, config: Any, task: Task) -> tuple[nn.Module | None, list[str]]:
    """The result of ``apply`` and its warnings; an unsupported op must be a one-line
    ``UserError`` naming it (then the result is ``None``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = apply(model, config, task)
        except UserError as error:
            assert "\n" not in str(error) and str(error), str(error)
            result = None
    lines = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return result, lines


def independent_macs(model: nn.Module, x: Tensor) -> int:
    """torchprofile over conv / linear / matmul / attention ops, plus the recurrent layers
    it skips, counted from their definition: ``steps * gates (LSTM 4, GRU 3) * H * (in + H)``
    per sample."""
    from torchprofile import profile_macs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_node = profile_macs(model.eval(), x, reduction=None)
    counted = sum(count for node, count in per_node.items() if node.operator in TORCHPROFILE_OPS)
    for module in model.modules():
        if isinstance(module, nn.LSTM | nn.GRU):
            gates = 4 if isinstance(module, nn.LSTM) else 3
            h, i = module.hidden_size, module.input_size
            counted += x.shape[0] * x.shape[1] * gates * h * (i + h)
    return counted


def macs_ratio(result: nn.Module, model: nn.Module, x: Tensor) -> float:
    return count_macs(result, x) / count_macs(model, x)


def assert_met_or_one_warning(achieved: float, target: float, lines: list[str]) -> None:
    if abs(achieved - target) > TOLERANCE * target:
        assert len(lines) == 1, (achieved, lines)
        assert f"{achieved:.3f}" in lines[0], (achieved, lines)
    else:
        assert len(lines) <= 1, lines


# ---------------------------------------------------------------- the suite


def test_profile_counts_macs_like_an_independent_counter(case: tuple) -> None:
    _, model, task = case
    x = task.example_input(1)
    ours, theirs = count_macs(model, x), independent_macs(model, x)
    assert theirs > 0
    assert abs(ours - theirs) <= TOLERANCE * theirs, (ours, theirs)


def test_channel_pruning_halves_the_macs_or_says_why(case: tuple) -> None:
    name, model, task = case
    config = ChannelPruneConfig(macs_ratio=0.5, criterion="l1", round_to=4)
    result, lines = run_method(model, config, task)
    if result is None:
        pytest.skip(f"{name}: channel pruning raised a one-line UserError")
    x = task.example_input(2)
    assert result(x).shape == model(x).shape
    assert_met_or_one_warning(macs_ratio(result, model, x[:1]), 0.5, lines)


def test_factorization_meets_its_target_or_warns_once(case: tuple) -> None:
    _, model, task = case
    result, lines = run_method(model, FactorizeConfig(macs_ratio=0.7), task)
    assert result is not None
    x = task.example_input(2)
    assert result(x).shape == model(x).shape
    assert_met_or_one_warning(macs_ratio(result, model, x[:1]), 0.7, lines)


def test_fine_grained_pruning_reaches_its_sparsity(case: tuple) -> None:
    _, model, task = case
    result, lines = run_method(model, PruneConfig(granularity="element", sparsity=0.5), task)
    assert result is not None and not lines
    assert sparsity_of(result) == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_ptq_int8_onnx_runs_in_onnx_runtime(case: tuple, tmp_path: Path) -> None:
    name, model, task = case
    config = QuantConfig(calibration_samples=32)
    result, _ = run_method(model, config, task)
    if result is None:
        pytest.skip(f"{name}: PTQ raised a one-line UserError")
    x = task.example_input(4)
    path = get_engine().export(result, x[:1], tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})
    assert output.shape == (1, CLASSES) and np.isfinite(output).all()
    with torch.no_grad():
        simulated = result(x[:1]).numpy()
    assert np.abs(output - simulated).max() <= 0.1 * np.abs(simulated).max() + 1e-3
