"""The trainer learns, is deterministic, keeps the best-on-val weights, and distills."""

import pytest
import torch
from torch import nn

from mobiledl.data.task import Task
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig, evaluate, logit_distillation_loss, train


def blob_task(seed: int = 0, n: int = 240) -> Task:
    """Three Gaussian blobs in 2-D, shaped like 1x1x2 images: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.arange(n) % 3
    x = centers[y] + 0.5 * torch.randn(n, 2, generator=g)
    x = x.view(n, 1, 1, 2)
    third = n // 3
    return Task(
        "blobs",
        3,
        x[:third],
        y[:third],
        x[third : 2 * third],
        y[third : 2 * third],
        x[2 * third :],
        y[2 * third :],
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_training_reaches_high_accuracy() -> None:
    task = blob_task()
    torch.manual_seed(0)
    model = mlp()
    before = evaluate(model, task)
    result = train(model, task, TrainConfig(epochs=10, batch_size=16, progress=False))
    assert evaluate(model, task) > max(0.9, before)
    assert len(result.history) == 10
    assert 0 <= result.best_epoch < 10


def test_training_is_deterministic_for_a_seed() -> None:
    task = blob_task()
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = mlp()
        train(model, task, TrainConfig(epochs=3, batch_size=16, seed=3, progress=False))
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_model_keeps_best_validation_weights() -> None:
    task = blob_task()
    torch.manual_seed(0)
    model = mlp()
    snapshots: list[tuple[int, float, dict]] = []

    def on_best(m: nn.Module, epoch: int, acc: float) -> None:
        snapshots.append((epoch, acc, {k: v.clone() for k, v in m.state_dict().items()}))

    result = train(model, task, TrainConfig(epochs=6, progress=False), on_best=on_best)
    epoch, acc, state = snapshots[-1]
    assert epoch == result.best_epoch and acc == result.best_val_accuracy
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    assert evaluate(model, task, "val") == pytest.approx(result.best_val_accuracy)


def test_adamw_and_label_smoothing_train() -> None:
    task = blob_task()
    torch.manual_seed(0)
    model = mlp()
    config = TrainConfig(
        epochs=10, batch_size=8, optimizer="adamw", label_smoothing=0.1, progress=False
    )
    train(model, task, config)
    assert evaluate(model, task) > 0.9


def test_distillation_loss_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.randn(8, 5)
    assert logit_distillation_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_distillation_loss(logits, torch.randn(8, 5), 4.0).item() > 0


def test_student_learns_from_teacher() -> None:
    task = blob_task()
    torch.manual_seed(0)
    teacher = mlp()
    train(teacher, task, TrainConfig(epochs=8, batch_size=16, progress=False))
    student = mlp()
    config = TrainConfig(epochs=8, batch_size=16, kd_alpha=1.0, progress=False)  # KD only
    train(student, task, config, teacher=teacher)
    assert evaluate(student, task) > 0.85


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", -1), ("batch_size", 0), ("optimizer", "rmsprop"), ("kd_alpha", 2.0)],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(UserError, match=field):
        TrainConfig(**{field: value})
