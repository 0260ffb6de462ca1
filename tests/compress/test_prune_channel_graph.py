"""The channel dependency graph on functional user models, unsupported patterns, and the
reconstruction criterion."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.compress.prune.channel import plan_channels, prune_channels
from mobiledl.compress.prune.graph import Slot, build_dependency_graph
from mobiledl.compress.prune.reconstruction import sample_inputs
from mobiledl.compress.prune.surgery import mask_channels
from mobiledl.data import Task
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.profile import profile_model

pytestmark = pytest.mark.usefixtures("single_thread")


class FunctionalNet(nn.Module):
    """Written with functional ops: cat, +, F.relu, mean (a gate), view -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.left = nn.Conv2d(16, 16, 3, padding=1)
        self.right = nn.Conv2d(16, 16, 1)
        self.skip = nn.Conv2d(16, 32, 1)
        self.gate = nn.Conv2d(32, 32, 1)
        self.head = nn.Conv2d(32, 24, 3, padding=1)
        self.fc = nn.Linear(24 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn(self.stem(x)))
        b = torch.cat([self.left(a), self.right(a)], dim=1)
        b = F.relu(b + self.skip(a))
        b = b * torch.sigmoid(self.gate(b.mean((2, 3), keepdim=True)))
        c = F.max_pool2d(F.relu(self.head(b)), 2)
        return self.fc(c.view(c.size(0), -1))


def output_group(graph, module: str):
    """The group holding ``module``'s output channels."""
    (group,) = [
        g for g in graph.groups if any(m.slot == Slot(module, "out") for m in g.members)
    ] or [g for g in graph.groups if any(m.slot == Slot(module, "channel") for m in g.members)]
    return group


def output(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model.eval()(x)


def check_pruned(model: nn.Module, x: Tensor, **kwargs) -> nn.Module:
    """Prune; assert fewer MACs, masked equivalence (1e-5) and ONNX Runtime parity (1e-4)."""
    plan = plan_channels(model, x, "l1", **kwargs)
    pruned = prune_channels(model, x, "l1", **kwargs)
    assert profile_model(pruned, x[:1]).macs < profile_model(model, x[:1]).macs
    masked = mask_channels(copy.deepcopy(model), plan.graph, plan.keep)
    expected = output(masked, x)
    assert (output(pruned, x) - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
    engine = get_engine("onnxruntime")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = engine.export(pruned, x, Path(tmp) / "m.onnx")
        assert engine.parity_check(pruned, path, x) <= 1e-4
    return pruned


def test_functional_model_prunes_with_cat_add_mean_and_view():
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.randn(2, 3, 8, 8)
    pruned = check_pruned(model, x, sparsity=0.5, round_to=4)
    assert pruned.stem.in_channels == 3 and pruned.fc.out_features == 10
    # cat(left, right) + skip: the two concatenated layers and skip share one group
    graph = build_dependency_graph(model, x)
    group = output_group(graph, "skip")
    assert {"left", "right", "skip", "gate", "head"} <= set(group.layers)
    assert len(group.segments()) == 2  # left and right are rounded on their own
    assert pruned.left.out_channels + pruned.right.out_channels == pruned.skip.out_channels
    # view -> linear: each head channel maps to its 4x4 = 16 consecutive features
    head = output_group(graph, "head")
    fc_in = next(m for m in head.members if m.slot.module == "fc")
    assert fc_in.units.tolist() == [u for u in range(24) for _ in range(16)]
    assert pruned.fc.in_features == pruned.head.out_channels * 16


def test_graph_couples_residuals_depthwise_squeeze_excite_and_shuffle():
    x = torch.randn(1, 3, 16, 16)
    resnet = build_dependency_graph(create_model("resnet8", in_channels=3), x)
    stage1 = output_group(resnet, "features.0.conv")
    assert "features.1.conv2.conv" in stage1.layers  # added to the stem by the residual
    v1 = build_dependency_graph(create_model("mobilenet_v1", in_channels=3), x)
    stem = output_group(v1, "features.0.conv")
    depthwise = next(m for m in stem.members if m.slot.module == "features.1.depthwise.conv")
    assert depthwise.slot.kind == "channel"
    v3 = build_dependency_graph(create_model("mobilenet_v3_small", in_channels=3), x)
    block = "features.1.body"
    inner = output_group(v3, f"{block}.se.reduce")
    assert inner.prunable and inner.layers == [f"{block}.se.reduce", f"{block}.se.expand"]
    gated = output_group(v3, f"{block}.se.expand")
    assert f"{block}.depthwise.conv" in gated.layers  # the gate scales the block channels
    shuffle = build_dependency_graph(create_model("shufflenet_v2", in_channels=3), x)
    trunk = output_group(shuffle, "features.1.left.1.conv")
    member = next(m for m in trunk.members if m.slot.module == "features.1.left.1.conv")
    assert torch.bincount(member.units).min() >= 1
    assert trunk.width < len(member.units) * 2  # shuffle + chunk tie channels together


class Unsupported(nn.Module):
    """Each branch has a pattern the graph cannot map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mixing = nn.LocalResponseNorm(2)  # a layer type without a pruning rule
        self.mid = nn.Conv2d(16, 16, 1)
        self.sliced = nn.Conv2d(16, 16, 1)
        self.last = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.stem(x))
        b = self.mixing(a)
        c = F.relu(self.mid(b))
        s = self.sliced(c)
        d = s[:, : s.shape[1] // 2].sum(1, keepdim=True)
        e = self.last(c) + d
        return self.fc(e.view(-1, 16 * 8 * 8))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_unsupported_patterns_warn_naming_the_layer_and_the_model_stays_correct():
    torch.manual_seed(0)
    model = Unsupported().eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning) as record:
        graph = build_dependency_graph(model, x)
    message = " ".join(str(w.message) for w in record)
    assert "layer 'mixing' (LocalResponseNorm): layer type LocalResponseNorm has no" in message
    assert "slices the channels at bounds computed at run time" in message
    assert "reshapes the channels to fixed sizes" in message
    assert [g.layers for g in graph.prunable_groups] == [["mid", "sliced", "last"]]
    with pytest.warns(UserWarning):
        pruned = check_pruned(model, x, sparsity=0.5)
    assert pruned.mid.out_channels == 8 and pruned.stem.out_channels == 16
    with pytest.raises(UserError, match="layer 'mixing' .* no pruning rule.*strict"):
        prune_channels(model, x, sparsity=0.5, strict=True)


def test_per_layer_on_a_frozen_layer_and_an_untraceable_model_are_user_errors():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UserError, match="layer 'stem' cannot be pruned.*LocalResponseNorm"):
        plan_channels(Unsupported(), x, per_layer={"stem.weight": 0.5})
    with pytest.raises(UserError, match="no prunable layer 'nope'"):
        plan_channels(FunctionalNet(), x, per_layer={"nope": 0.5})

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(UserError, match="Branchy cannot be traced"):
        prune_channels(Branchy(), x, sparsity=0.5)
    with pytest.raises(UserError, match="either sparsity or macs_ratio"):
        prune_channels(FunctionalNet(), x, sparsity=0.5, macs_ratio=0.5)
    with pytest.raises(UserError, match="needs a task"):
        prune_channels(FunctionalNet(), x, "reconstruction", sparsity=0.5)


def test_per_layer_prunes_only_the_named_group():
    x = torch.randn(1, 3, 8, 8)
    pruned = prune_channels(FunctionalNet(), x, per_layer={"head": 0.5}, round_to=1)
    assert pruned.head.out_channels == 12 and pruned.stem.out_channels == 16


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        return self.fc(self.conv2(h).mean((2, 3)))


def _toy_task() -> Task:
    """Inputs whose channels carry very different energy, so data matters for selection."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([3.0, 0.1, 1.0, 0.3]).reshape(1, 4, 1, 1)

    def data(n: int) -> tuple[Tensor, Tensor]:
        return torch.randn(n, 4, 8, 8, generator=generator) * scale, torch.randint(0, 2, (n,))

    return Task("toy", 2, *data(512), *data(64), *data(256))


def test_reconstruction_preserves_the_next_layer_better_than_l1():
    torch.manual_seed(0)
    model, task = TwoLayer().eval(), _toy_task()
    x = task.x_test  # held out: the refit saw training samples only

    def conv2_error(pruned: nn.Module) -> float:
        with torch.no_grad():
            reference = model.conv2(F.relu(model.conv1(x)))
            approx = pruned.conv2(F.relu(pruned.conv1(x)))
        return float((approx - reference).square().sum() / reference.square().sum())

    kwargs = {"per_layer": {"conv1": 0.5}, "round_to": 1, "task": task}
    l1 = conv2_error(prune_channels(model, x[:1], "l1", **kwargs))
    reconstruction = conv2_error(prune_channels(model, x[:1], "reconstruction", **kwargs))
    assert reconstruction < 0.5 * l1
    assert len(sample_inputs(task, 100)) == 100
