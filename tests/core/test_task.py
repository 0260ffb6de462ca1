"""The ``Task`` interface: ``TensorTask`` (the built-ins) and a task of one's own whose batches
are dicts of token ids and masks, trained, evaluated, profiled, measured and run in ONNX
Runtime through the same code as image tasks."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import mobiledl
from mobiledl.core.inputs import (
    InputSpec,
    batch_size_of,
    call_model,
    describe_specs,
    example_from_specs,
    map_inputs,
    repeat_batch,
    slice_batch,
    specs_match,
    specs_of,
)
from mobiledl.core.task import Batch, Task, TensorTask
from mobiledl.data import Task as LegacyTask
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.measure import artifact_outputs, measure_model
from mobiledl.profile import profile_model
from mobiledl.train import TrainConfig, evaluate, predict, train

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB, LENGTH, CLASSES = 8, 12, 3


class BagOfTokensTask(Task):
    """Variable-length token sequences padded to ``LENGTH``: ``{"tokens", "mask"}`` batches.

    The class is the token most sequences of it repeat (ids 0..2); other ids are noise.
    """

    name = "bag"
    num_classes = CLASSES
    input_kind = "tokens"

    def __init__(self, per_split: int = 96) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = {split: self._make(per_split, generator) for split in self.splits}

    @staticmethod
    def _make(n: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        y = torch.arange(n) % CLASSES
        tokens = torch.randint(CLASSES, VOCAB, (n, LENGTH), generator=generator)
        signal = torch.rand(n, LENGTH, generator=generator) < 0.6
        tokens = torch.where(signal, y[:, None], tokens)
        lengths = torch.randint(4, LENGTH + 1, (n,), generator=generator)
        mask = (torch.arange(LENGTH)[None] < lengths[:, None]).float()
        return {"tokens": tokens * mask.long(), "mask": mask}, y

    def loader(
        self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        self.check_split(split)
        inputs, y = self.data[split]
        order = (
            torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(len(y))
        )
        for start in range(0, len(y), batch_size):
            index = order[start : start + batch_size]
            yield {name: tensor[index] for name, tensor in inputs.items()}, y[index]

    def num_samples(self, split: str) -> int:
        self.check_split(split)
        return len(self.data[split][1])

    def example_input(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return slice_batch(self.data["test"][0], 0, batch_size)


class MaskedMean(nn.Module):
    """Mean of the embeddings of the unmasked tokens, then a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.classifier = nn.Linear(16, CLASSES)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        summed = (self.embed(tokens) * mask.unsqueeze(-1)).sum(dim=1)
        return self.classifier(summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0))


@pytest.fixture(scope="module")
def bag() -> BagOfTokensTask:
    return BagOfTokensTask()


@pytest.fixture(scope="module")
def trained(bag: BagOfTokensTask) -> MaskedMean:
    torch.manual_seed(0)
    model = MaskedMean()
    config = TrainConfig(epochs=8, batch_size=16, optimizer="adamw", lr=0.02, progress=False)
    train(model, bag, config)
    return model


def image_task(n: int = 12) -> TensorTask:
    x, y = torch.randn(n, 1, 4, 4), torch.arange(n) % 2
    return TensorTask("img", 2, x, y, x, y, x, y)


def token_task(n: int = 12, vocab: int = 5) -> TensorTask:
    x, y = torch.randint(0, vocab, (n, 6)), torch.arange(n) % 2
    return TensorTask(
        "tok", 2, x, y, x, y, x, y, input_kind="tokens", input_name="tokens", vocab_size=vocab
    )


# ---------------------------------------------------------------- TensorTask


def test_the_old_name_is_the_tensor_task() -> None:
    assert LegacyTask is TensorTask and issubclass(TensorTask, Task)
    assert mobiledl.Task is Task and mobiledl.TensorTask is TensorTask
    with pytest.raises(TypeError):
        Task()  # the interface itself is abstract


def test_tensor_task_batches_counts_and_specs() -> None:
    task = image_task()
    batches = list(task.loader("train", batch_size=5))
    assert [len(y) for _, y in batches] == [5, 5, 2]
    assert task.num_samples("test") == 12
    assert task.input_kind == "image" and (task.in_channels, task.image_size) == (1, (4, 4))
    assert task.input_specs() == (InputSpec("input", (None, 1, 4, 4), torch.float32),)
    with pytest.raises(UserError, match="unknown split 'dev'"):
        task.num_samples("dev")


def test_token_tensor_task() -> None:
    task = token_task()
    assert task.input_specs() == (InputSpec("tokens", (None, 6), torch.int64, high=5),)
    assert task.example_input(3).dtype == torch.int64
    with pytest.raises(UserError, match="token ids, not images"):
        task.in_channels  # noqa: B018


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"vocab_size": None}, "vocab_size"),
        ({"vocab_size": 3}, r"token ids must lie in \[0, 3\)"),
        ({"x_train": torch.rand(12, 6)}, "integer"),
    ],
)
def test_bad_token_tasks_are_user_errors(change: dict, fragment: str) -> None:
    task = token_task()
    fields = {
        "name": "tok",
        "num_classes": 2,
        **{
            f"{kind}_{split}": getattr(task, f"{kind}_{split}")
            for kind in "xy"
            for split in task.splits
        },
        "input_kind": "tokens",
        "vocab_size": 5,
        **change,
    }
    with pytest.raises(UserError, match=fragment):
        TensorTask(**fields)


# ---------------------------------------------------------------- inputs of any structure


def test_call_model_passes_each_structure() -> None:
    def seen(*args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[int, list[str]]:
        return len(args), sorted(kwargs)

    a, b = torch.zeros(2, 3), torch.ones(2, 1)
    assert call_model(seen, a) == (1, [])
    assert call_model(seen, (a, b)) == (2, [])
    assert call_model(seen, {"tokens": a, "mask": b}) == (0, ["mask", "tokens"])


def test_structure_helpers_keep_the_structure() -> None:
    batch = {"tokens": torch.arange(10).view(5, 2), "mask": torch.ones(5, 2)}
    assert batch_size_of(batch) == 5
    assert slice_batch(batch, 1, 3)["tokens"].tolist() == [[2, 3], [4, 5]]
    repeated = repeat_batch(batch, 4)
    assert repeated["tokens"].shape == (4, 2) and repeated["tokens"].is_contiguous()
    assert (repeated["tokens"] == batch["tokens"][0]).all()
    arrays = map_inputs(torch.Tensor.numpy, (batch["tokens"], batch["mask"]))
    assert isinstance(arrays, tuple) and all(isinstance(a, np.ndarray) for a in arrays)
    specs = specs_of(batch)
    assert [s.name for s in specs] == ["tokens", "mask"] and specs[0].shape == (None, 2)
    assert [s.name for s in specs_of((batch["mask"], batch["mask"]))] == ["input_0", "input_1"]


def test_examples_from_specs() -> None:
    specs = (
        InputSpec("tokens", (None, 7), torch.int64, high=4),
        InputSpec("mask", (None, 7), torch.bool),
    )
    tokens, mask = example_from_specs(specs, 3)
    assert tokens.shape == (3, 7) and int(tokens.min()) >= 0 and int(tokens.max()) < 4
    assert mask.all()
    assert not example_from_specs(specs[:1], 2, zeros=True).any()
    with pytest.raises(UserError, match="dynamic size"):
        example_from_specs([InputSpec("x", (None, None))])


def test_specs_match_compares_shape_and_integer_kind() -> None:
    image = (InputSpec("input", (None, 1, 8, 8)),)
    tokens = (InputSpec("tokens", (None, 40), torch.int64),)
    assert specs_match(image, (InputSpec("other", (None, 1, 8, 8)),))  # one input: any name
    assert not specs_match(image, (InputSpec("input", (None, 1, 16, 16)),))
    assert not specs_match(tokens, (InputSpec("tokens", (None, 40), torch.float32),))
    assert specs_match(tokens, (InputSpec("tokens", (None, None), torch.int64),))
    assert describe_specs(tokens) == "shaped [40] int64"


# ---------------------------------------------------------------- a task of one's own


def test_own_task_trains_and_evaluates(bag: BagOfTokensTask, trained: MaskedMean) -> None:
    assert evaluate(trained, bag, "test") > 0.9
    logits = predict(trained, bag.example_input(10), batch_size=4)
    assert logits.shape == (10, CLASSES)


def test_own_task_specs_default_to_its_example(bag: BagOfTokensTask) -> None:
    assert bag.input_specs() == (
        InputSpec("tokens", (None, LENGTH), torch.int64),
        InputSpec("mask", (None, LENGTH), torch.float32),
    )


def test_profiler_takes_dict_inputs(bag: BagOfTokensTask, trained: MaskedMean) -> None:
    profile = profile_model(trained, bag.example_input(2))
    assert profile.macs == 2 * 16 * CLASSES  # the classifier; the embedding is a lookup
    assert profile.input_shape == [(2, LENGTH), (2, LENGTH)]
    assert profile.params == VOCAB * 16 + 16 * CLASSES + CLASSES


def test_own_task_exports_and_runs_in_onnxruntime(
    bag: BagOfTokensTask, trained: MaskedMean, tmp_path
) -> None:
    engine = get_engine()
    path = engine.export(trained, bag.example_input(1), tmp_path / "bag.onnx")
    runner = engine.load(path)
    assert [(s.name, s.dtype, s.shape) for s in runner.input_specs] == [
        ("tokens", torch.int64, (None, LENGTH)),
        ("mask", torch.float32, (None, LENGTH)),
    ]
    batch = bag.example_input(16)
    assert engine.parity_check(trained, runner, batch) < 1e-5
    positional = runner.run((batch["tokens"].numpy(), batch["mask"].numpy()))
    assert np.allclose(positional, runner.run(batch))
    outputs, targets = artifact_outputs(engine, runner, bag)
    assert bag.metric(outputs, targets) == pytest.approx(evaluate(trained, bag))
    with pytest.raises(UserError, match="no value given for input 'mask'"):
        runner.run({"tokens": batch["tokens"]})


def test_measure_model_on_own_task(bag: BagOfTokensTask, trained: MaskedMean) -> None:
    measurement = measure_model(trained, "bag", bag, repeats=3)
    assert measurement.accuracy == pytest.approx(evaluate(trained, bag))
    assert measurement.bytes > 0 and measurement.latency_ms_median > 0
    assert measurement.params == VOCAB * 16 + 16 * CLASSES + CLASSES


class SpectralLogits(nn.Module):
    """``trained``'s logits through a real FFT and back: same values, but
    ``aten::fft_rfft`` has no ONNX mapping, so the model cannot be exported."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.inner(tokens, mask)
        return torch.fft.irfft(torch.fft.rfft(logits), n=logits.shape[-1])


def test_measure_model_keeps_pytorch_fields_when_export_fails(
    bag: BagOfTokensTask, trained: MaskedMean, caplog: pytest.LogCaptureFixture
) -> None:
    model = SpectralLogits(trained)
    with pytest.raises(UserError, match="cannot export"):
        measure_model(model, "spectral", bag, repeats=3)
    with caplog.at_level("WARNING", logger="mobiledl"):
        measurement = measure_model(model, "spectral", bag, repeats=3, unexportable_ok=True)
    assert measurement.accuracy == pytest.approx(evaluate(trained, bag), abs=1e-6)
    assert measurement.params == VOCAB * 16 + 16 * CLASSES + CLASSES
    assert measurement.bytes is None and measurement.latency_ms_median is None
    assert "export failed" in measurement.extra["null_fields"]["bytes"]
    assert "not measured in onnxruntime" in caplog.text


def test_own_task_trains_through_apply(bag: BagOfTokensTask) -> None:
    torch.manual_seed(0)
    model = MaskedMean()
    result = mobiledl.apply(model, TrainConfig(epochs=2, batch_size=16, progress=False), bag)
    report = mobiledl.report_of(result)
    assert report.method == "train" and not math.isnan(report.values["best_val_accuracy"])
