"""The trainer learns, is deterministic, keeps the best-on-val weights, and adds loss terms."""

import pytest
import torch
from torch import nn

from mobiledl.data.task import Task
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig, evaluate, train


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


class WeightedTerm:
    """A loss term of constant value that also scales the task's loss."""

    task_weight = 0.0

    def __call__(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0.0 + 5.0


def first_epoch_loss(task: Task, **kwargs: object) -> float:
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=16, progress=False)
    return train(mlp(), task, config, **kwargs).history[0]["train_loss"]


def test_loss_terms_scale_the_task_loss_and_add_in_order() -> None:
    task = blob_task()
    plain = first_epoch_loss(task)
    assert first_epoch_loss(task, extra_loss=WeightedTerm()) == pytest.approx(5.0)
    added = first_epoch_loss(task, extra_loss=[lambda m, x, y: y.sum() * 0.0 + 1.0])
    assert added == pytest.approx(plain + 1.0) and plain > 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", -1), ("batch_size", 0), ("optimizer", "rmsprop"), ("kd_alpha", 2.0)],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(UserError, match=field):
        TrainConfig(**{field: value})


def test_evaluate_on_samples_is_a_fixed_random_subset() -> None:
    from mobiledl.train.trainer import predict_split

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x, y = torch.randn(90, 1, 4, 4), torch.arange(90) % 3
    task = Task("t", 3, x[:30], y[:30], x[30:60], y[30:60], x[60:], y[60:])
    _, first = predict_split(model, task, "val", samples=10)
    _, again = predict_split(model, task, "val", samples=10)
    assert len(first) == 10 and torch.equal(first, again)
    _, ordered = predict_split(model, task, "val")
    assert not torch.equal(first, ordered[:10])  # drawn at random, not the first ten
    assert evaluate(model, task, "val", samples=1000) == evaluate(model, task, "val")
    with pytest.raises(UserError, match="samples must be an integer"):
        evaluate(model, task, "val", samples=0)
