"""Distillation: Hinton logit KD, FitNets hints with a learned adapter, attention transfer."""

import pytest
import torch
from torch import nn

from mobiledl.compress.distill import (
    FeatureDistiller,
    HintAdapter,
    LogitDistillation,
    attention_map,
    attention_transfer_loss,
    default_feature_layers,
    hint_loss,
    logit_distillation_loss,
)
from mobiledl.data.task import Task
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.usefixtures("single_thread")


def test_distillation_loss_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.randn(8, 5)
    assert logit_distillation_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert logit_distillation_loss(logits, torch.randn(8, 5), 4.0).item() > 0


def test_logit_term_mixes_kd_and_the_task_loss_by_alpha() -> None:
    teacher = nn.Linear(3, 4)
    logits, x = torch.randn(6, 4), torch.randn(6, 3)
    term = LogitDistillation(teacher, alpha=0.25, temperature=2.0)
    kd = logit_distillation_loss(logits, teacher(x).detach(), 2.0)
    assert term.task_weight == 0.75 and not teacher.training
    torch.testing.assert_close(term(nn.Identity(), x, logits), 0.25 * kd)
    with pytest.raises(UserError, match="kd alpha"):
        LogitDistillation(teacher, alpha=1.5)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))


def test_student_learns_from_teacher_by_logit_kd_alone() -> None:
    task = blob_images()
    torch.manual_seed(0)
    teacher, student = mlp(), mlp()
    config = TrainConfig(epochs=20, batch_size=16, progress=False)
    train(teacher, task, config)
    assert evaluate(student, task) < 0.5
    train(student, task, config, extra_loss=LogitDistillation(teacher, alpha=1.0))  # KD only
    assert evaluate(student, task) > 0.85


def test_attention_map_by_hand() -> None:
    # two channels over two positions: mean of squares = (1 + 9) / 2 = 5 and (4 + 0) / 2 = 2
    features = torch.tensor([[[[1.0, 2.0]], [[-3.0, 0.0]]]])
    expected = torch.tensor([[5.0, 2.0]]) / 29**0.5
    assert torch.allclose(attention_map(features), expected)


def test_attention_transfer_loss_by_hand() -> None:
    student = torch.tensor([[[[1.0, 0.0]]]])  # attention (1, 0)
    teacher = torch.tensor([[[[0.0, 2.0]], [[0.0, 1.0]]]])  # attention (0, 1), two channels
    assert attention_transfer_loss(student, teacher).item() == pytest.approx(1.0)
    # channel count and scale do not matter, only where the activation is
    wide = torch.cat([3 * teacher, 3 * teacher], dim=1)
    assert attention_transfer_loss(wide, teacher).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(UserError, match="equal spatial sizes"):
        attention_transfer_loss(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 3, 3))


def test_hint_loss_by_hand() -> None:
    adapter = HintAdapter(2, 3, spatial=True)
    assert isinstance(adapter.map, nn.Conv2d) and adapter.map.kernel_size == (1, 1)
    with torch.no_grad():
        adapter.map.weight.copy_(
            torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])[..., None, None]
        )
    student = torch.tensor([[[[1.0]], [[2.0]]]])
    assert hint_loss(student, torch.tensor([[[[1.0]], [[2.0]], [[3.0]]]]), adapter).item() == 0
    # teacher all zero: 1/2 * mean(1, 4, 9)
    loss = hint_loss(student, torch.zeros(1, 3, 1, 1), adapter).item()
    assert loss == pytest.approx(0.5 * 14 / 3)
    assert isinstance(HintAdapter(4, 6, spatial=False).map, nn.Linear)


def test_hint_adapter_learns_the_channel_map() -> None:
    torch.manual_seed(0)
    student = torch.randn(16, 4, 2, 2)
    mixing = torch.randn(6, 4)
    teacher = torch.einsum("oc,nchw->nohw", mixing, student)
    adapter = HintAdapter(4, 6, spatial=True)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.2, momentum=0.9)
    first = hint_loss(student, teacher, adapter).item()
    for _ in range(150):
        optimizer.zero_grad()
        loss = hint_loss(student, teacher, adapter)
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3 * first


def blob_images(n: int = 96) -> Task:
    """Three classes of 1x8x8 images, each brighter in one third of the image."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    for label in range(3):
        x[y == label, :, :, label * 2 : label * 2 + 3] += 1.0
    third = n // 3
    parts = (x[:third], y[:third], x[third : 2 * third], y[third : 2 * third])
    return Task("blobs", 3, *parts, x[2 * third :], y[2 * third :])


@pytest.mark.parametrize("kind", ["hint", "attention"])
def test_feature_distiller_trains_with_the_trainer(kind: str) -> None:
    task = blob_images()
    torch.manual_seed(0)
    teacher = create_model("resnet8", 3, 1, 8).eval()
    student = create_model("resnet8", 3, 1, 8, width_mult=0.5)
    example = task.example_input(1)
    assert default_feature_layers(teacher, example) == ["features.1", "features.2", "features.3"]
    with FeatureDistiller(student, teacher, example, kind) as distiller:
        adapters = [p.detach().clone() for p in distiller.parameters()]
        assert len(adapters) == (3 if kind == "hint" else 0)
        config = TrainConfig(epochs=1, batch_size=16, progress=False)
        terms = [LogitDistillation(teacher), distiller]
        result = train(student, task, config, extra_loss=terms)
        assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
        for before, after in zip(adapters, distiller.parameters(), strict=True):
            assert not torch.equal(before, after)  # the adapters were trained with the student
    hooked = [m for m in (*student.modules(), *teacher.modules()) if m._forward_hooks]
    assert not hooked and not teacher._forward_pre_hooks


def test_distiller_runs_the_teacher_itself_without_logit_kd() -> None:
    torch.manual_seed(0)
    teacher = create_model("resnet8", 3, 1, 8).eval()
    student = create_model("resnet8", 3, 1, 8, width_mult=0.5)
    x = torch.randn(4, 1, 8, 8)
    with FeatureDistiller(student, teacher, x[:1], "attention", ["features.3"]) as distiller:
        loss = distiller(student, x, student(x))
    assert loss.item() > 0 and loss.requires_grad


def test_bad_layers_name_the_module() -> None:
    model = create_model("resnet8", 3, 1, 8)
    with pytest.raises(UserError, match="no module 'features.7'"):
        FeatureDistiller(model, model, torch.randn(1, 1, 8, 8), "hint", ["features.7"])
    with pytest.raises(UserError, match="unknown feature distillation 'gram'"):
        FeatureDistiller(model, model, torch.randn(1, 1, 8, 8), "gram")  # type: ignore[arg-type]
