"""The sequence classifiers: built for a token task, saved and rebuilt from their record,
profiled (Conv1d, attention and linear MACs; embeddings are lookups), exported with an int64
input that ONNX Runtime runs like PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobiledl.core.inputs import InputSpec
from mobiledl.core.task import TensorTask
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.models import (
    create_model,
    create_model_for_task,
    example_input_for,
    input_specs,
    list_models,
    load_model,
    model_info,
    model_input_kind,
    save_model,
)
from mobiledl.profile import profile_model

pytestmark = pytest.mark.usefixtures("single_thread")

SEQUENCE_MODELS = ["seq_cnn", "tiny_transformer"]
VOCAB, LENGTH = 16, 20


def token_task(n: int = 30) -> TensorTask:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, VOCAB, (n, LENGTH), generator=g), torch.arange(n) % 3
    return TensorTask(
        "tok", 3, x, y, x, y, x, y, input_kind="tokens", input_name="tokens", vocab_size=VOCAB
    )


def test_sequence_models_are_registered_as_token_models() -> None:
    assert [info.name for info in list_models(inputs="tokens")] == SEQUENCE_MODELS
    assert all(info.inputs == "image" for info in list_models(inputs="image"))
    for name in SEQUENCE_MODELS:
        info = model_info(name)
        assert info.description and info.paper and info.to_dict()["inputs"] == "tokens"


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_built_for_a_task_trains_a_step(name: str) -> None:
    task = token_task()
    torch.manual_seed(0)
    model = create_model_for_task(name, task)
    assert model.mobiledl_arch == {
        "name": name,
        "num_classes": 3,
        "vocab_size": VOCAB,
        "seq_len": LENGTH,
        "width_mult": 1.0,
    }
    assert model_input_kind(model) == "tokens"
    logits = model(task.x_train[:8])
    assert logits.shape == (8, 3)
    torch.nn.functional.cross_entropy(logits, task.y_train[:8]).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_record_gives_input_specs_and_reloads(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, 3, vocab_size=VOCAB, seq_len=LENGTH).eval()
    assert input_specs(model.mobiledl_arch) == (
        InputSpec("tokens", (None, LENGTH), torch.int64, high=VOCAB),
    )
    x = example_input_for(model.mobiledl_arch, 4)
    assert x.dtype == torch.int64 and x.shape == (4, LENGTH) and int(x.max()) < VOCAB
    loaded = load_model(save_model(tmp_path / "m.pt", model))
    assert torch.equal(loaded.model(x), model(x))


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_onnx_export_takes_int64_tokens(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, 3, vocab_size=VOCAB, seq_len=LENGTH).eval()
    specs = input_specs(model.mobiledl_arch)
    engine = get_engine()
    runner = engine.load(
        engine.export(model, example_input_for(model.mobiledl_arch), tmp_path / "m.onnx", specs)
    )
    assert runner.input_specs == (InputSpec("tokens", (None, LENGTH), torch.int64),)
    assert engine.parity_check(model, runner, example_input_for(model.mobiledl_arch, 8)) < 1e-4


def test_width_mult_scales_the_sequence_models() -> None:
    for name in SEQUENCE_MODELS:
        full = sum(p.numel() for p in create_model(name).parameters())
        half = sum(p.numel() for p in create_model(name, width_mult=0.5).parameters())
        assert half < full


def test_seq_cnn_macs_are_its_convolutions_and_classifier() -> None:
    model = create_model("seq_cnn", 10, vocab_size=VOCAB, seq_len=40)
    profile = profile_model(model, torch.zeros(1, 40, dtype=torch.int64))
    layers = {layer.name: layer for layer in profile.layers}
    # Conv1d: Cout * Lout * Cin * k; lengths 40 -> 40 -> 20 -> 10 (strides 1, 2, 2)
    expected_convs = [32 * 40 * 32 * 5, 64 * 20 * 32 * 5, 64 * 10 * 64 * 5]
    assert [layers[f"features.{i}"].macs for i in (0, 3, 6)] == expected_convs
    assert layers["embed"].macs == 0 and layers["embed"].params == VOCAB * 32
    assert profile.macs == sum(expected_convs) + 64 * 10


def test_tiny_transformer_macs_count_attention() -> None:
    dim, length, layers = 32, 40, 2
    model = create_model("tiny_transformer", 10, vocab_size=VOCAB, seq_len=length)
    profile = profile_model(model, torch.zeros(1, length, dtype=torch.int64))
    projections = length * dim * (3 * dim + dim)  # q, k, v in; out
    attention = 2 * length * length * dim  # Q K^T and A V over all heads
    feed_forward = 2 * length * dim * 2 * dim
    assert profile.macs == layers * (projections + attention + feed_forward) + dim * 10


def test_wrong_input_kind_is_a_user_error() -> None:
    with pytest.raises(UserError, match="takes token ids.*in_channels does not apply"):
        create_model("seq_cnn", 10, 3)
    with pytest.raises(UserError, match="takes images.*vocab_size does not apply"):
        create_model("resnet8", 10, vocab_size=8)
    with pytest.raises(UserError, match="seq_len of model 'seq_cnn' must be an integer >= 1"):
        create_model("seq_cnn", seq_len=0)
    with pytest.raises(UserError, match="'resnet8' takes images but task 'tok' gives token ids"):
        create_model_for_task("resnet8", token_task())
