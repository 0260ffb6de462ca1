"""The Python API under wrong arguments: a ``UserError`` naming the function and argument,
never a raw ``AttributeError`` / ``TypeError`` from deep inside."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mobiledl import apply
from mobiledl.compress.distill import DistillConfig
from mobiledl.compress.factorize import FactorizeConfig
from mobiledl.compress.prune import ChannelPruneConfig, PruneConfig
from mobiledl.compress.quantize import KMeansConfig, QuantConfig, TernaryConfig
from mobiledl.data import build_task
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.measure import measure_model
from mobiledl.models import create_model, load_model, save_model
from mobiledl.pipeline import run_recipe
from mobiledl.profile import profile_model
from mobiledl.resources import memory_limit
from mobiledl.train import AdaptConfig, TrainConfig, evaluate, predict, train


@pytest.fixture(scope="module")
def task() -> Any:
    return build_task("digits")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return create_model("lenet5", 10, 1, 8)


X = torch.randn(1, 1, 8, 8)
NAN, INF = float("nan"), float("inf")

# (id, call(model, task, tmp_path), regex of the message)
CALLS: list[tuple[str, Callable[..., Any], str]] = [
    ("build_task-int", lambda m, t, p: build_task(123), "task .* must be a path .*; got int"),
    ("build_task-none", lambda m, t, p: build_task(None), "must be a path .*; got NoneType"),
    ("build_task-seed-text", lambda m, t, p: build_task("digits", seed="a"), "seed must be"),
    ("build_task-seed-negative", lambda m, t, p: build_task("digits", seed=-1), "seed must be"),
    ("build_task-size", lambda m, t, p: build_task("digits", image_size=0), "image size"),
    ("build_task-huge", lambda m, t, p: build_task("digits", image_size=10**5), "needs about"),
    ("create_model-int", lambda m, t, p: create_model(1), "model name must be a string"),
    ("create_model-classes-text", lambda m, t, p: create_model("lenet5", "10"), "num_classes"),
    ("create_model-classes-huge", lambda m, t, p: create_model("lenet5", 10**9), "needs about"),
    ("create_model-size-text", lambda m, t, p: create_model("lenet5", 10, 1, "8"), "image_size"),
    ("create_model-size-one", lambda m, t, p: create_model("lenet5", image_size=(8,)), "(H, W)"),
    ("create_model-width-text", lambda m, t, p: create_model("lenet5", 10, 1, 8, "1"), "width"),
    ("create_model-width-nan", lambda m, t, p: create_model("lenet5", width_mult=NAN), "width"),
    ("load_model-int", lambda m, t, p: load_model(123), "model file must be a path"),
    ("load_model-missing", lambda m, t, p: load_model(p / "none.pt"), "model file not found"),
    ("save_model-str", lambda m, t, p: save_model(p / "m.pt", "x"), "cannot save str"),
    ("save_model-path-none", lambda m, t, p: save_model(None, m), "must be a path"),
    ("save_model-dir", lambda m, t, p: save_model(p, m), "is a directory"),
    ("train-dict", lambda m, t, p: train(m, t, {"epochs": 1}), "config must be a TrainConfig"),
    ("train-none", lambda m, t, p: train(m, t, None), "config must be a TrainConfig"),
    ("train-task-str", lambda m, t, p: train(m, "digits", TrainConfig()), "task must be a Task"),
    ("train-model-str", lambda m, t, p: train("m", t, TrainConfig()), "model must be an nn"),
    ("train-on-best-str", lambda m, t, p: train(m, t, TrainConfig(), on_best="x"), "callable"),
    ("train-loss-str", lambda m, t, p: train(m, t, TrainConfig(), extra_loss="x"), "callable"),
    ("evaluate-task-str", lambda m, t, p: evaluate(m, "digits"), "evaluate: task must be"),
    ("evaluate-model-str", lambda m, t, p: evaluate("m", t), "evaluate: model must be"),
    ("evaluate-split", lambda m, t, p: evaluate(m, t, "bogus"), "unknown split 'bogus'"),
    ("predict-numpy", lambda m, t, p: predict(m, np.zeros((1, 1, 8, 8))), "inputs must be a"),
    ("predict-batch-zero", lambda m, t, p: predict(m, X, 0), "batch_size must be an integer"),
    ("measure-batch-zero", lambda m, t, p: measure_model(m, "m", t, batch_size=0), ">= 1"),
    ("measure-repeats-zero", lambda m, t, p: measure_model(m, "m", t, repeats=0), ">= 1"),
    ("measure-threads-zero", lambda m, t, p: measure_model(m, "m", t, threads=0), "threads"),
    ("measure-task-str", lambda m, t, p: measure_model(m, "m", "digits"), "task must be a Task"),
    ("measure-model-str", lambda m, t, p: measure_model("m", "m", t), "model must be an nn"),
    ("measure-no-input", lambda m, t, p: measure_model(m, "m"), "needs a task or an example"),
    ("profile-list", lambda m, t, p: profile_model(m, [1, 2]), "example input must be a tensor"),
    ("profile-shape", lambda m, t, p: profile_model(m, torch.randn(1, 3, 8, 8)), "failed on"),
    ("profile-model-str", lambda m, t, p: profile_model("m", X), "model must be an nn.Module"),
    ("profile-bits-zero", lambda m, t, p: profile_model(m, X, bits=0), "bits must be a positive"),
    ("apply-config-str", lambda m, t, p: apply(m, "ptq", t), "apply needs a method config"),
    ("apply-model-str", lambda m, t, p: apply("m", QuantConfig(), t), "apply needs an nn.Module"),
    ("apply-task-str", lambda m, t, p: apply(m, QuantConfig(), "digits"), "task must be a Task"),
    ("apply-no-task", lambda m, t, p: apply(m, QuantConfig()), "needs a task"),
    ("export-model-str", lambda m, t, p: get_engine().export("m", X, p / "m.onnx"), "must be an"),
    ("export-dir", lambda m, t, p: get_engine().export(m, X, p), "is a directory"),
    ("engine-unknown", lambda m, t, p: get_engine("tflite2"), "unknown engine"),
    ("engine-threads", lambda m, t, p: get_engine().load(p / "x.onnx", 0), "no such ONNX file"),
    ("run_recipe-missing", lambda m, t, p: run_recipe(p / "none.yaml", p / "o"), "not found"),
    ("run_recipe-out-file", lambda m, t, p: run_recipe(p / "r.yaml", p / "f"), "not a directory"),
    ("prune-sparsity-text", lambda m, t, p: PruneConfig(sparsity="0.5"), "must be float"),
    ("prune-sparsity-nan", lambda m, t, p: PruneConfig(sparsity=NAN), "finite number"),
    ("prune-sparsity-one", lambda m, t, p: PruneConfig(sparsity=1.0), "must lie in"),
    ("prune-layer-sparsity", lambda m, t, p: PruneConfig(sparsity={"a": 2.0}), "must lie in"),
    ("channel-macs-nan", lambda m, t, p: ChannelPruneConfig(macs_ratio=NAN), "finite number"),
    ("quant-bits-float", lambda m, t, p: QuantConfig(weight_bits=8.0), "must be int"),
    ("quant-bits-one", lambda m, t, p: QuantConfig(weight_bits=1), "weight_bits"),
    ("kmeans-bits-zero", lambda m, t, p: KMeansConfig(bits=0), "kmeans bits must lie"),
    ("ternary-threshold", lambda m, t, p: TernaryConfig(threshold=INF), "finite number"),
    ("factorize-energy", lambda m, t, p: FactorizeConfig(energy=NAN), "finite number"),
    ("train-epochs-text", lambda m, t, p: TrainConfig(epochs="1"), "epochs must be int"),
    ("train-lr-inf", lambda m, t, p: TrainConfig(lr=INF), "lr must be a finite number"),
    ("train-momentum", lambda m, t, p: TrainConfig(momentum=1.5), "momentum must be"),
    ("train-seed", lambda m, t, p: TrainConfig(seed=-1), "seed must be"),
    ("train-kd-alpha-nan", lambda m, t, p: TrainConfig(kd_alpha=NAN), "finite number"),
    ("adapt-lr-negative", lambda m, t, p: AdaptConfig(lr=-1.0), "lr must be"),
    ("adapt-segments", lambda m, t, p: AdaptConfig(checkpoint_segments=0), "checkpoint_segments"),
    ("distill-weight", lambda m, t, p: DistillConfig(feature_weight=-1.0), "feature_weight"),
    (
        "memory-limit",
        lambda m, t, p: _limited(lambda: build_task("digits", image_size=256)),
        "0.001",
    ),
]


def _limited(call: Callable[[], Any]) -> Any:
    with memory_limit(0.001):
        return call()


@pytest.mark.parametrize(("call", "match"), [pytest.param(c, m, id=i) for i, c, m in CALLS])
def test_bad_api_call(
    model: torch.nn.Module, task: Any, tmp_path: Path, call: Callable[..., Any], match: str
) -> None:
    (tmp_path / "f").write_text("a file")
    (tmp_path / "r.yaml").write_text("name: r\n")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(UserError, match=match) as caught:
        call(model, task, tmp_path)
    assert "\n" not in str(caught.value)
    assert sorted(tmp_path.iterdir()) == before
