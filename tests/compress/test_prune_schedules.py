"""Schedules: AGP values, iterative rounds, lottery rewinding, targets reached, config errors."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from mobiledl.compress.prune import (
    PruneConfig,
    agp_sparsity,
    apply_masks,
    current_masks,
    prune,
    rewind,
    sparsity_of,
)
from mobiledl.compress.prune.schedules import (
    iterative_sparsity,
    on_training_steps,
    parameter_snapshot,
)
from mobiledl.data import Task
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def blob_task() -> Task:
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=generator) * 3
    y = torch.arange(240) % 3
    x = centers[y] + torch.randn(240, 8, generator=generator)
    return Task("blobs", 3, x[:160], y[:160], x[160:200], y[160:200], x[200:], y[200:])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def quick(epochs: int = 1, **changes: object) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=32, progress=False, **changes)


def test_agp_follows_the_cubic_schedule_of_zhu_and_gupta() -> None:
    assert agp_sparsity(0, 0.9, 100) == 0.0
    assert agp_sparsity(50, 0.9, 100) == pytest.approx(0.9 * (1 - 0.5**3))
    assert agp_sparsity(100, 0.9, 100) == pytest.approx(0.9)
    assert agp_sparsity(150, 0.9, 100) == pytest.approx(0.9)
    assert agp_sparsity(10, 0.8, 100, initial=0.2, start=10) == pytest.approx(0.2)
    assert agp_sparsity(60, 0.8, 100, initial=0.2, start=10) == pytest.approx(0.8 - 0.6 / 8)


def test_iterative_rounds_remove_equal_fractions_of_the_rest() -> None:
    assert iterative_sparsity(0.9, 1, 2) == pytest.approx(1 - 0.1**0.5)
    assert iterative_sparsity(0.9, 2, 2) == pytest.approx(0.9)


def test_training_step_hook_ignores_eval_forwards() -> None:
    model, steps = mlp(), []
    with on_training_steps(model, steps.append):
        model.train()(torch.randn(2, 8))
        model.eval()(torch.randn(2, 8))
        model.train()(torch.randn(2, 8))
    model.train()(torch.randn(2, 8))
    assert steps == [0, 1]


def test_rewind_restores_early_weights_on_unpruned_positions() -> None:
    model = mlp()
    early = parameter_snapshot(model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    mask = (torch.rand(32, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    apply_masks(model, {"0.weight": mask})
    rewind(model, early)
    assert torch.equal(model[0].weight, early["0.weight"] * mask)
    assert torch.equal(model[2].weight, early["2.weight"])
    assert torch.equal(model[0].bias, early["0.bias"])


def test_lottery_keeps_the_rewound_weights_of_the_surviving_positions() -> None:
    model = mlp()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    config = PruneConfig(sparsity=0.75, schedule="lottery", steps=2, finetune=quick(lr=0.0))
    pruned = prune(model, config, blob_task())
    weight = pruned[0].weight
    kept = weight != 0
    assert sparsity_of(pruned) == pytest.approx(0.75, abs=0.01)
    assert torch.equal(weight[kept], initial["0.weight"][kept])


@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "agp", "lottery"])
def test_each_schedule_reaches_its_target_and_bakes(schedule: str) -> None:
    config = PruneConfig(sparsity=0.8, schedule=schedule, steps=2, finetune=quick(2))
    pruned = prune(mlp(), config, blob_task())
    assert sparsity_of(pruned) == pytest.approx(0.8, abs=0.01)
    assert not any(parametrize.is_parametrized(m) for m in pruned.modules())


def test_keep_masks_returns_a_masked_model() -> None:
    config = PruneConfig(sparsity=0.5, keep_masks=True)
    pruned = prune(mlp(), config)
    assert set(current_masks(pruned)) == {"0.weight", "2.weight"}


def test_macs_ratio_keeps_that_fraction_of_multiplications() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 2))
    example = torch.randn(1, 1, 4, 4)
    model.mobiledl_arch = {"in_channels": 1, "image_size": (4, 4)}
    pruned = prune(model, PruneConfig(macs_ratio=0.4))
    conv, linear = pruned[0].weight, pruned[2].weight
    dense_macs = conv.numel() * 16 + linear.numel()
    kept_macs = int(conv.ne(0).sum()) * 16 + int(linear.ne(0).sum())
    assert kept_macs / dense_macs == pytest.approx(0.4, abs=0.02)
    assert pruned(example).shape == (1, 2)


def test_exclude_leaves_a_layer_dense() -> None:
    pruned = prune(mlp(), PruneConfig(sparsity=0.5, exclude=("2",)))
    assert pruned[2].weight.ne(0).all() and sparsity_of(pruned, exclude=("2",)) == 0.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sparsity": 1.5}, "sparsity must lie in"),
        ({"sparsity": 0.5, "macs_ratio": 0.5}, "one of sparsity and macs_ratio, not both"),
        ({"macs_ratio": 0.0}, "macs_ratio must lie in"),
        ({"sparsity": 0.5, "criterion": "random"}, "unknown criterion 'random'"),
        ({"sparsity": 0.5, "schedule": "cyclic"}, "schedule must be one of 'oneshot'"),
        ({"sparsity": 0.5, "scope": "local"}, "scope must be one of"),
        ({"sparsity": 0.5, "schedule": "iterative"}, "needs finetune epochs"),
        ({"granularity": "2:4", "sparsity": 0.5}, "fixes the sparsity"),
        ({"sparsity": 0.5, "rewind_epochs": -1.0}, "rewind_epochs must be a finite number >= 0"),
        ({"granularity": "channel", "sparsity": 0.5, "schedule": "agp"}, "ChannelPruneConfig"),
        (
            {
                "sparsity": 0.5,
                "schedule": "lottery",
                "finetune": TrainConfig(epochs=1),
                "rewind_epochs": 1,
            },
            "rewind_epochs must lie in",
        ),
    ],
)
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        PruneConfig(**fields)


def test_data_criterion_without_task_is_a_user_error() -> None:
    with pytest.raises(UserError, match="'hessian' needs a task"):
        prune(mlp(), PruneConfig(sparsity=0.5, criterion="hessian"))
