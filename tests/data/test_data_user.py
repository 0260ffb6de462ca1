"""User data: image folders, .npz and IDX files, and the errors for bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobiledl.data import Task, build_task
from mobiledl.errors import UserError

RNG = np.random.default_rng(0)


def write_images(
    root: Path, counts: dict[str, int], size=(6, 5), mode: str = "L", ext: str = "png"
) -> None:
    """``counts[class]`` random images of ``size`` (H, W) per class subfolder."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            channels = {"L": (), "RGB": (3,)}[mode]
            pixels = RNG.integers(0, 256, (*size, *channels), dtype=np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.{ext}")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (gzipped if ``path`` ends with .gz) holding a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)


def mnist_like(n: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % classes
    return RNG.integers(0, 256, (n, 7, 7), dtype=np.uint8), y.astype(np.uint8)


def check(task: Task, n: int, input_shape: tuple[int, ...], num_classes: int) -> None:
    sizes = [len(task.split(s)[1]) for s in ("train", "val", "test")]
    assert sum(sizes) == n and min(sizes) > 0
    assert task.input_shape == input_shape and task.num_classes == num_classes
    assert task.x_train.dtype == torch.float32 and task.y_train.dtype == torch.int64
    for s in ("train", "val", "test"):  # every class in every split
        assert set(task.split(s)[1].tolist()) == set(range(num_classes))


def raises(spec: Path, match: str, **kwargs) -> str:
    """Assert build_task raises a one-line UserError containing ``match``; return the message."""
    with pytest.raises(UserError) as e:
        build_task(str(spec), **kwargs)
    message = str(e.value)
    assert match in message, message
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------- image folders


def test_gray_folder(tmp_path: Path) -> None:
    write_images(tmp_path / "ds", {"dog": 5, "cat": 6, "bird": 4})
    (tmp_path / "ds" / "cat" / "notes.txt").write_text("ignored")
    task = build_task(str(tmp_path / "ds"), seed=1)
    check(task, 15, (1, 6, 5), 3)
    assert task.class_names == ["bird", "cat", "dog"]
    assert task.name == "ds"
    resized = build_task(str(tmp_path / "ds"), image_size=8, seed=1)
    assert resized.input_shape == (1, 8, 8)


def test_rgb_folder_with_mixed_modes_and_sizes(tmp_path: Path) -> None:
    write_images(tmp_path / "ds", {"a": 3, "b": 2}, size=(9, 9), mode="RGB", ext="jpg")
    write_images(tmp_path / "ds", {"b": 1}, size=(4, 6), mode="L", ext="bmp")
    task = build_task(str(tmp_path / "ds"), image_size=(5, 7))
    check(task, 6, (3, 5, 7), 2)
    raises(tmp_path / "ds", "0.bmp")  # mixed sizes without an image size names a file


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    raises(tmp_path / "empty", "empty")
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "x.png")
    raises(tmp_path / "flat", "subfolder")
    write_images(tmp_path / "few", {"many": 4, "rare": 2})
    msg = raises(tmp_path / "few", "'rare'")
    assert "2 samples" in msg
    write_images(tmp_path / "bad", {"a": 3, "b": 3})
    (tmp_path / "bad" / "b" / "broken.png").write_bytes(b"not a png at all")
    raises(tmp_path / "bad", "broken.png")
    write_images(tmp_path / "noimg", {"a": 0, "b": 0})
    raises(tmp_path / "noimg", "no images")


# ---------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((30, 12), (1, 1, 12)), ((30, 6, 5), (1, 6, 5)), ((30, 3, 4, 4), (3, 4, 4))],
)
def test_npz_shapes(tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=RNG.normal(size=shape), y=np.arange(30) % 3)
    task = build_task(str(path))
    check(task, 30, expected, 3)
    assert task.name == "d"


def test_npz_fixed_test_split_and_float_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    y = (np.arange(40) % 4).astype(np.float32)
    np.savez(path, x=RNG.normal(size=(40, 8, 8)), y=y, x_test=np.ones((9, 8, 8)), y_test=y[:9])
    task = build_task(str(path), seed=2)
    assert len(task.x_test) == 9 and len(task.x_train) + len(task.x_val) == 40
    assert task.input_shape == (1, 8, 8)
    assert torch.equal(task.y_test, torch.as_tensor(y[:9], dtype=torch.int64))
    other = build_task(str(path), seed=3)
    assert torch.equal(task.y_test, other.y_test) and not torch.equal(task.y_val, other.y_val)
    assert build_task(str(path), image_size=4).input_shape == (1, 4, 4)


def test_npz_errors(tmp_path: Path) -> None:
    x = RNG.normal(size=(12, 4))
    y = np.arange(12) % 3
    cases = {
        "noy.npz": ({"x": x}, "no array 'y'"),
        "nox.npz": ({"y": y}, "no array 'x'"),
        "len.npz": ({"x": x, "y": y[:10]}, "12 inputs but 10 labels"),
        "neg.npz": ({"x": x, "y": y - 1}, ">= 0"),
        "frac.npz": ({"x": x, "y": y + 0.5}, "integers"),
        "str.npz": ({"x": x, "y": y.astype(str)}, "integers"),
        "gap.npz": ({"x": x, "y": y * 2}, "class '1'"),
        "rank.npz": ({"x": RNG.normal(size=(12, 1, 2, 2, 2)), "y": y}, "shaped"),
        "half.npz": ({"x": x, "y": y, "x_test": x}, "x_test"),
        "range.npz": ({"x": x, "y": y, "x_test": x[:2], "y_test": np.array([0, 3])}, "label 3"),
        "tshape.npz": ({"x": x, "y": y, "x_test": x[:2, :3], "y_test": y[:2]}, "test inputs"),
    }
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / name, **arrays)
        msg = raises(tmp_path / name, match)
        assert name in msg
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04garbage")
    raises(tmp_path / "corrupt.npz", "corrupt.npz")
    raises(tmp_path / "missing.npz", "missing.npz")


# ---------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder(tmp_path: Path, gz: bool) -> None:
    ext = ".gz" if gz else ""
    x, y = mnist_like(40)
    xt, yt = mnist_like(8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", x)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", y)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", xt)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", yt)
    task = build_task(str(tmp_path))
    assert task.input_shape == (1, 7, 7) and task.num_classes == 4
    assert len(task.x_test) == 8 and len(task.x_train) + len(task.x_val) == 40
    assert torch.equal(task.y_test, torch.as_tensor(yt, dtype=torch.int64))


def test_idx_single_file_and_mixed_gz(tmp_path: Path) -> None:
    x, y = mnist_like(20)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)  # labels next to it, not gzipped
    task = build_task(str(tmp_path / "train-images-idx3-ubyte.gz"), image_size=14)
    check(task, 20, (1, 14, 14), 4)
    folder = build_task(str(tmp_path))  # the folder without t10k files splits 60/20/20
    check(folder, 20, (1, 7, 7), 4)


def test_idx_errors(tmp_path: Path) -> None:
    x, y = mnist_like(20)
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    write_idx(images, x)
    raises(images, "train-labels-idx1-ubyte")  # labels missing
    raises(tmp_path, "train-labels")
    write_idx(labels, y[:15])
    raises(images, "20 images")
    write_idx(labels, y)
    images.write_bytes(images.read_bytes()[:-10])
    msg = raises(images, "truncated")
    assert "train-images-idx3-ubyte" in msg
    images.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    raises(images, "magic")
    write_idx(images, x)
    raises(labels, "1-D")  # passing the labels file
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x[:4])
    raises(tmp_path, "t10k-labels-idx1-ubyte")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "bad-images-idx3-ubyte.gz").write_bytes(b"not gzip data")
    write_idx(tmp_path / "bad-labels-idx1-ubyte", y)
    raises(tmp_path / "bad-images-idx3-ubyte.gz", "bad-images-idx3-ubyte.gz")
    write_idx(labels, np.where(y == 3, 5, y))  # class 3 missing, 5 present
    raises(images, "class '3'")


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    raises(path, "data.csv")


def balanced_npz(path: Path, per_class: int, classes: int = 3, offset: float = 0.0) -> Path:
    """``per_class`` random 1x4x4 images of each class, pixels shifted by ``offset``."""
    x = RNG.random((per_class * classes, 1, 4, 4)).astype(np.float32) + offset
    np.savez(path, x=x, y=np.repeat(np.arange(classes), per_class))
    return path


def test_split_fractions_set_the_split_sizes(tmp_path: Path) -> None:
    path = balanced_npz(tmp_path / "data.npz", 100)
    default = build_task(str(path))
    assert (len(default.x_train), len(default.x_val), len(default.x_test)) == (180, 60, 60)
    task = build_task(str(path), split="0.7,0.1,0.2")
    assert (len(task.x_train), len(task.x_val), len(task.x_test)) == (210, 30, 60)
    assert build_task(str(path), split=(0.7, 0.1, 0.2)).y_train.tolist() == task.y_train.tolist()


def test_split_with_its_own_test_split_keeps_the_train_val_ratio(tmp_path: Path) -> None:
    x = RNG.random((300, 1, 4, 4)).astype(np.float32)
    y = np.repeat(np.arange(3), 100)
    np.savez(tmp_path / "own.npz", x=x, y=y, x_test=x[:30], y_test=y[:30])
    task = build_task(str(tmp_path / "own.npz"), split="0.6,0.3,0.1")
    assert (len(task.x_train), len(task.x_val), len(task.x_test)) == (201, 99, 30)  # 67:33


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ("0.6,0.4", "three positive fractions"),
        ("0.6,0.2,0.1", "must sum to 1"),
        ("0.6,0.4,0", "three positive fractions"),
        ("x,y,z", "three positive fractions"),
    ],
)
def test_bad_split_is_one_user_error(tmp_path: Path, split: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_task(str(balanced_npz(tmp_path / "data.npz", 10)), split=split)


def test_separate_train_val_test_files_are_used_as_given(tmp_path: Path) -> None:
    files = [
        balanced_npz(tmp_path / f"{name}.npz", n, offset=offset)
        for name, n, offset in (("train", 20, 0.0), ("val", 5, 1.0), ("test", 7, 2.0))
    ]
    task = build_task(",".join(str(f) for f in files))
    assert (len(task.x_train), len(task.x_val), len(task.x_test)) == (60, 15, 21)
    assert task.num_classes == 3
    assert task.x_train.mean().item() == pytest.approx(0.0, abs=1e-5)  # the train file's stats
    assert task.x_test.mean().item() > task.x_val.mean().item() > 1.0  # not re-split or mixed


def test_separate_files_must_agree(tmp_path: Path) -> None:
    train = balanced_npz(tmp_path / "train.npz", 5)
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 1, 5, 5), np.float32), y=np.arange(3))
    np.savez(tmp_path / "extra.npz", x=np.zeros((4, 1, 4, 4), np.float32), y=np.arange(4))
    with pytest.raises(UserError, match="differ in shape"):
        build_task(f"{train},{train},{tmp_path / 'wide.npz'}")
    with pytest.raises(UserError, match="label 3 is not a class of the train file"):
        build_task(f"{train},{tmp_path / 'extra.npz'},{train}")
