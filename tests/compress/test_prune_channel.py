"""Physical channel pruning on every zoo model: smaller, same as masked, exports, round-trips."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl.compress.prune.channel import plan_channels, prune_channels
from mobiledl.compress.prune.surgery import mask_channels
from mobiledl.deploy import get_engine
from mobiledl.models import create_model, load_model, save_model
from mobiledl.profile import profile_model

ZOO = [
    "lenet300",
    "lenet5",
    "resnet8",
    "resnet20",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v2",
    "squeezenet",
    "mcunet",
]


pytestmark = pytest.mark.usefixtures("single_thread")


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch norms random statistics and affine parameters, so channels differ."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return model.eval()


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    scale = max(1.0, float(expected.abs().max()))
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) <= tolerance * scale


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_prunes_to_a_smaller_model_equal_to_the_masked_one(name: str, tmp_path: Path):
    torch.manual_seed(0)
    model = randomized(create_model(name, num_classes=10, in_channels=3, image_size=16))
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every zoo pattern is mapped: no channel left behind
        plan = plan_channels(model, x, "l1", sparsity=0.5)
        pruned = prune_channels(model, x, "l1", sparsity=0.5)

    assert profile_model(pruned, x[:1]).macs < profile_model(model, x[:1]).macs
    masked = mask_channels(copy.deepcopy(model), plan.graph, plan.keep)
    assert_close(output(pruned, x), output(masked, x), 1e-5)

    engine = get_engine("onnxruntime")
    path = engine.export(pruned, x, tmp_path / "pruned.onnx")
    assert engine.parity_check(pruned, path, x) <= 1e-4

    save_model(tmp_path / "pruned.pt", pruned)
    loaded = load_model(tmp_path / "pruned.pt").model
    assert_close(output(loaded, x), output(pruned, x), 1e-6)


def test_original_model_is_untouched_and_ends_keep_their_width():
    model = randomized(create_model("resnet8", in_channels=3, image_size=16))
    before = copy.deepcopy(model.state_dict())
    pruned = prune_channels(model, torch.randn(1, 3, 16, 16), "l2", sparsity=0.5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert pruned.features[0].conv.in_channels == 3  # input channels never pruned
    assert pruned.classifier.out_features == 10  # nor the classes


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_macs_ratio_is_met_within_two_percent_with_counts_rounded_to_8(name: str, scope: str):
    model = randomized(create_model(name, in_channels=1, image_size=16))
    x = torch.randn(1, 1, 16, 16)
    pruned = prune_channels(model, x, "l1", macs_ratio=0.5, scope=scope)
    ratio = profile_model(pruned, x).macs / profile_model(model, x).macs
    assert abs(ratio - 0.5) <= 0.02 * 0.5
    for module in pruned.modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels % 8 == 0 and module.out_channels >= 8


def test_bn_scale_prunes_the_channels_with_the_smallest_gammas():
    model = randomized(create_model("lenet5", image_size=8))  # no batch norm: falls back to l1
    assert prune_channels(model, torch.randn(1, 1, 8, 8), "bn_scale", sparsity=0.5)
    model = randomized(create_model("resnet8", image_size=8))
    stem_bn = model.features[0].bn
    with torch.no_grad():
        stem_bn.weight.copy_(10.0 * torch.arange(1, 17))  # dominates the group sum
    plan = plan_channels(model, torch.randn(1, 1, 8, 8), "bn", sparsity=0.5)
    group = next(i for i, g in enumerate(plan.graph.groups) if "features.0.bn" in g.layers)
    member = next(m for m in plan.graph.groups[group].members if m.slot.module == "features.0.bn")
    kept = plan.graph.groups[group].kept_positions(member, plan.keep[group])
    assert kept.tolist() == list(range(8, 16))


def test_taylor_criterion_uses_task_data():
    from mobiledl.data import build_task

    task = build_task("digits")
    model = create_model("resnet8", image_size=8)
    pruned = prune_channels(
        model, task.example_input(1), "taylor", sparsity=0.5, task=task, num_batches=2
    )
    assert (
        profile_model(pruned, task.example_input(1)).macs
        < profile_model(model, task.example_input(1)).macs
    )
