"""``apply`` on a token model: training methods run; methods written for images (channel
pruning and PTQ also take video clips; the temporal shift only clips) refuse with one line
naming the method and the kinds of input; a model and task of different kinds are
caught before any method runs."""

from __future__ import annotations

import pytest
import torch

from mobiledl import apply, list_methods, report_of
from mobiledl.compress.distill import DistillConfig
from mobiledl.compress.quantize.config import KMeansConfig
from mobiledl.core.inputs import CLIP, IMAGE, TOKENS, kind_label
from mobiledl.core.task import TensorTask
from mobiledl.data import build_task
from mobiledl.errors import UserError
from mobiledl.models import create_model, create_model_for_task
from mobiledl.train import TrainConfig, evaluate

pytestmark = pytest.mark.usefixtures("single_thread")
GENERIC = {"train", "distill"}


@pytest.fixture(scope="module")
def tokens() -> TensorTask:
    return build_task("mnist1d-tokens", seed=0)


@pytest.fixture(scope="module")
def model(tokens: TensorTask) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model_for_task("seq_cnn", tokens, width_mult=0.5)


def test_train_and_distill_run_on_token_models(tokens: TensorTask, model: torch.nn.Module) -> None:
    trained = apply(model, TrainConfig(epochs=3, progress=False), tokens)
    assert report_of(trained).values["best_val_accuracy"] > 0.3
    assert trained.mobiledl_arch["history"][-1]["method"] == "train"
    student = apply(trained, DistillConfig(train=TrainConfig(epochs=1, progress=False)), tokens)
    assert report_of(student).method == "distill"
    assert evaluate(student, tokens) > 0.3


def test_image_methods_refuse_token_models(tokens: TensorTask, model: torch.nn.Module) -> None:
    image_only = [m for m in list_methods() if m.name not in GENERIC]
    assert image_only and all(m.inputs and TOKENS not in m.inputs for m in image_only)
    assert {m.inputs for m in image_only} == {(IMAGE,), (IMAGE, CLIP), (CLIP,)}
    assert all(m.inputs is None for m in list_methods() if m.name in GENERIC)
    for method in image_only:
        with pytest.raises(UserError) as info:
            apply(model, method.config_type(), tokens)
        handled = " or ".join(kind_label(kind) for kind in method.inputs)
        assert str(info.value) == (
            f"method '{method.name}' handles {handled}; this model takes token ids"
        ), method.name


def test_image_methods_refuse_token_models_without_a_task(model: torch.nn.Module) -> None:
    with pytest.raises(UserError, match="handles images; this model takes token ids"):
        apply(model, KMeansConfig())


def test_feature_distillation_needs_images(tokens: TensorTask, model: torch.nn.Module) -> None:
    with pytest.raises(
        UserError, match=r"feature distillation \('hint'\) .*\(use feature 'none'\)"
    ):
        apply(model, DistillConfig(feature="hint"), tokens)


def test_model_and_task_of_different_kinds(tokens: TensorTask) -> None:
    image_model = create_model("lenet5", 10, 1, (1, 40))
    with pytest.raises(UserError, match="the model takes images but task 'mnist1d-tokens'"):
        apply(image_model, TrainConfig(epochs=1), tokens)
