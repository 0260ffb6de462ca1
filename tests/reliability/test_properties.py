"""Property-based tests: random small models, command lines and recipes.

Random convolutional networks (widths, groups, strides, kernel sizes; residual, concat,
split and channel-shuffle blocks; functional activations and pooling) go through the
profiler, the ONNX export, channel pruning and PTQ with its int8 export. Each either works,
with outputs consistent with the reference within a tolerance, or raises ``UserError``;
anything else fails the test. Random command lines exit with 0 or 2, never a traceback, and
random recipe documents parse or raise ``UserError``.

The default profile runs a few examples per property (``HYPOTHESIS_PROFILE=long`` runs
hundreds: ``HYPOTHESIS_PROFILE=long python -m pytest tests/reliability/test_properties.py``).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mobiledl import apply
from mobiledl.cli import main
from mobiledl.compress.prune.channel import plan_channels
from mobiledl.compress.prune.surgery import mask_channels, prune_groups
from mobiledl.compress.quantize import QuantConfig
from mobiledl.core.clone import clone_module
from mobiledl.data.prepare import make_task
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.pipeline.recipe import parse_recipe
from mobiledl.profile import profile_model

settings.register_profile(
    "fast",
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- random networks


@dataclass(frozen=True)
class Layer:
    """One block of a random network (see ``RandomNet``)."""

    kind: str
    width: int
    kernel: int
    stride: int
    groups: int
    activation: str


def conv_bn(c_in: int, layer: Layer) -> nn.Sequential:
    groups = layer.groups if c_in % layer.groups == 0 and layer.width % layer.groups == 0 else 1
    return nn.Sequential(
        nn.Conv2d(c_in, layer.width, layer.kernel, layer.stride, layer.kernel // 2, groups=groups),
        nn.BatchNorm2d(layer.width),
    )


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "silu":
        return x * torch.sigmoid(x)
    return F.hardswish(x)


class Block(nn.Module):
    """A conv block, a residual pair, two concatenated branches, a split-and-merge or a
    channel shuffle, according to ``layer.kind``."""

    def __init__(self, c_in: int, layer: Layer) -> None:
        super().__init__()
        self.layer = layer
        if layer.kind == "conv":
            self.a = conv_bn(c_in, layer)
            self.out_channels = layer.width
        elif layer.kind == "residual":
            same = Layer("conv", c_in, layer.kernel, 1, layer.groups, layer.activation)
            self.a, self.b = conv_bn(c_in, same), conv_bn(c_in, same)
            self.out_channels = c_in
        elif layer.kind == "concat":
            self.a = conv_bn(c_in, layer)
            self.b = conv_bn(c_in, Layer("conv", layer.width, 1, layer.stride, 1, "relu"))
            self.out_channels = 2 * layer.width
        elif layer.kind == "split":
            self.sizes = [c_in // 2, c_in - c_in // 2]
            work = Layer("conv", self.sizes[1], layer.kernel, 1, 1, layer.activation)
            self.a = conv_bn(self.sizes[1], work)
            self.out_channels = c_in
        else:  # shuffle: two groups (none for an odd width)
            self.groups = 2 if c_in % 2 == 0 else 1
            self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind, act = self.layer.kind, self.layer.activation
        if kind == "conv":
            return activate(self.a(x), act)
        if kind == "residual":
            return F.relu(x + self.b(activate(self.a(x), act)))
        if kind == "concat":
            return torch.cat([activate(self.a(x), act), self.b(x)], dim=1)
        if kind == "split":
            keep, work = torch.split(x, self.sizes, dim=1)
            return torch.cat([keep, activate(self.a(work), act)], dim=1)
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class RandomNet(nn.Module):
    """Stem conv, random blocks, global pooling (average or max) and a linear classifier."""

    def __init__(self, in_channels: int, layers: list[Layer], pool: str, classes: int) -> None:
        super().__init__()
        channels = in_channels
        blocks = []
        for layer in layers:
            block = Block(channels, layer)
            blocks.append(block)
            channels = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = pool
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        x = x.mean(dim=(2, 3)) if self.pool == "avg" else x.amax(dim=(2, 3))
        return self.classifier(x)


layers = st.builds(
    Layer,
    kind=st.sampled_from(["conv", "residual", "concat", "split", "shuffle"]),
    width=st.sampled_from([4, 6, 8, 12, 16]),
    kernel=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 1, 2]),
    groups=st.sampled_from([1, 1, 2, 4]),
    activation=st.sampled_from(["relu", "relu6", "silu", "hardswish"]),
)


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor]:
    """A random network in eval mode and an input batch for it."""
    in_channels = draw(st.sampled_from([1, 3]))
    size = draw(st.integers(6, 12))
    stem = Layer("conv", draw(st.sampled_from([4, 8])), 3, 1, 1, "relu")
    blocks = [stem, *draw(st.lists(layers, min_size=1, max_size=4))]
    classes = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = RandomNet(in_channels, blocks, draw(st.sampled_from(["avg", "max"])), classes)
    _randomize_norms(model)
    return model.eval(), torch.randn(4, in_channels, size, size)


def _randomize_norms(model: nn.Module) -> None:
    """Batch norms with non-trivial statistics, so folding and pruning have work to do."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)


def close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> bool:
    scale = float(expected.abs().max()) + 1e-6
    return actual.shape == expected.shape and float((actual - expected).abs().max()) <= (
        tolerance * scale + 1e-5
    )


# ---------------------------------------------------------------- model properties


@given(net=networks())
def test_profile_counts_every_parameter(net: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = net
    try:
        report = profile_model(model, x[:1])
    except UserError:
        return
    measurement = report.measurement("random")
    assert measurement.params == sum(p.numel() for p in model.parameters())
    assert measurement.macs > 0 and measurement.peak_memory_bytes >= x[:1].numel() * 4


@given(net=networks())
def test_onnx_export_matches_pytorch(net: tuple[nn.Module, torch.Tensor], tmp_path: Path) -> None:
    model, x = net
    engine = get_engine()
    try:
        path = engine.export(model, x[:1], tmp_path / "m.onnx")
    except UserError:
        return
    with torch.no_grad():
        expected = model(x)
    actual = torch.from_numpy(engine.load(path).run(x.numpy()))
    assert close(actual, expected, 1e-4)


@given(
    net=networks(),
    sparsity=st.sampled_from([0.25, 0.5, 0.75]),
    scope=st.sampled_from(["layer", "global"]),
)
def test_channel_pruning_equals_masking(
    net: tuple[nn.Module, torch.Tensor], sparsity: float, scope: str
) -> None:
    model, x = net
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # channels the graph cannot map stay
            plan = plan_channels(model, x[:1], "l1", sparsity=sparsity, round_to=1, scope=scope)
    except UserError:
        return
    pruned = prune_groups(clone_module(model), plan.graph, plan.keep).eval()
    masked = mask_channels(clone_module(model), plan.graph, plan.keep).eval()
    with torch.no_grad():
        assert close(pruned(x), masked(x), 1e-4)
    assert sum(p.numel() for p in pruned.parameters()) <= sum(p.numel() for p in model.parameters())


@given(net=networks(), per_channel=st.booleans())
def test_ptq_int8_export_matches_fake_quantization(
    net: tuple[nn.Module, torch.Tensor], per_channel: bool, tmp_path: Path
) -> None:
    model, x = net
    data = torch.randn(30, *x.shape[1:]).numpy()
    task = make_task("random", data, np.arange(30) % 3, 0)
    try:
        quantized = apply(model, QuantConfig(per_channel=per_channel, calibration_samples=16), task)
        path = get_engine().export(quantized, x[:1], tmp_path / "q.onnx")
    except UserError:
        return
    with torch.no_grad():
        expected = quantized(x)
    actual = torch.from_numpy(get_engine().load(path).run(x.numpy()))
    # integer kernels requantize between layers: a few grid steps of the output scale
    assert close(actual, expected, 0.15)


# ---------------------------------------------------------------- command lines and recipes

WORDS = [
    "models", "train", "eval", "profile", "export", "bench", "prune", "quantize", "run",
    "apply", "ptq", "--json", "--task", "digits", "mnist1d", "--model", "lenet5", "resnet8",
    "--epochs", "--lr", "--out", "--input-shape", "--no-latency", "--bits", "--threads",
    "--seed", "--sparsity", "--batch", "--repeats", "--max-memory-gb", "--image-size",
    "--label-smoothing", "--width-mult", "--method", "--help",
]  # fmt: skip
VALUES = [
    "0", "-1", "1", "2", "nan", "inf", "-inf", "1e309", "", " ", "x", "1,3,8,8",
    "1,3,100000,100000", "../x", "/", "/proc/x", "a" * 300, "\x00", "0.5", "100000",
    "é", "--", "-", "{model}", "{out}",
]  # fmt: skip
#: Flags whose numbers would start minutes of work if valid: only small values are drawn.
BOUNDED = {"--epochs": ["0", "-1", "x", "nan"], "--repeats": ["1", "0", "-5", "x"]}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=7))
    argv = []
    for word in words:
        argv.append(word)
        if word in BOUNDED:
            argv.append(draw(st.sampled_from(BOUNDED[word])))
        elif word.startswith("--") and draw(st.booleans()):
            argv.append(draw(st.sampled_from(VALUES) | st.text(max_size=8)))
    if "train" in argv and "--epochs" not in argv:
        argv += ["--epochs", "0"]
    if {"profile", "bench"} & set(argv) and "--repeats" not in argv:
        argv += ["--repeats", "1"]
    return argv


@given(argv=command_lines())
def test_random_command_lines_never_trace_back(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.pt"
    if not model.exists():
        from mobiledl.models import create_model, save_model

        save_model(model, create_model("lenet5", 10, 1, 8))
    argv = [a.replace("{model}", str(model)).replace("{out}", str(tmp_path / "o")) for a in argv]
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), err[-2000:]
    assert "Traceback" not in err


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
STEP_KINDS = ["train", "prune", "channel_prune", "ptq", "qat", "kmeans", "export", "benchmark",
              "encode", "distill", "factorize", "finetune", "quantize", "adapt"]  # fmt: skip
FIELDS = ["epochs", "lr", "sparsity", "macs_ratio", "file", "name", "weight_bits", "teacher",
          "finetune", "batch_sizes", "bits", "kd", "method", "granularity", "train"]  # fmt: skip


@st.composite
def recipes(draw: st.DrawFn) -> object:
    steps = draw(
        st.lists(
            st.fixed_dictionaries(
                {"step": st.sampled_from(STEP_KINDS) | json_values},
                optional={f: json_values for f in FIELDS},
            )
            | json_values,
            max_size=4,
        )
    )
    header = {
        "name": draw(st.text(max_size=8) | json_values),
        "task": draw(st.fixed_dictionaries({"name": st.just("digits")}) | json_values),
        "model": draw(st.fixed_dictionaries({"arch": st.just("lenet5")}) | json_values),
    }
    document = {**header, "steps": steps}
    return draw(st.just(document) | json_values)


@settings(max_examples=8 * settings.default.max_examples)
@given(document=recipes())
def test_random_recipes_parse_or_raise_user_error(document: object) -> None:
    try:
        parse_recipe(document, "random.yaml")
    except UserError as exc:
        assert "\n" not in str(exc)
