"""User data chosen by path: an image folder, an ``.npz`` file or MNIST-format IDX files.

- folder of class subfolders with images: classes are the subfolder names, sorted;
  1 channel if every image is grayscale, else 3 (RGB);
- ``.npz`` with ``x`` and ``y`` (optionally ``x_test``, ``y_test`` for a fixed test split);
  ``x`` shaped ``(N, L)``, ``(N, H, W)`` or ``(N, C, H, W)``;
- three ``.npz`` files ``TRAIN,VAL,TEST`` (comma-separated), each with ``x`` and ``y``: the
  splits as given (``load_split_files``), nothing split in code;
- IDX: a folder with ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (each may
  be gzipped; ``t10k-*`` files give a fixed test split), or one images file with its labels
  file next to it.

Every problem raises a one-line ``UserError`` naming the file, folder or class.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mobiledl.core.task import TensorTask
from mobiledl.data.prepare import (
    DEFAULT_SPLIT,
    ImageSize,
    Split,
    as_nchw,
    check_labels,
    make_task,
    normalized_task,
    parse_image_size,
    resize,
)
from mobiledl.errors import UserError
from mobiledl.resources import available_bytes, check_fits
from mobiledl.validate import check_finite_data

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
# IDX type byte → big-endian numpy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_user_task(
    path: str | os.PathLike,
    image_size: ImageSize = None,
    seed: int = 0,
    split: Split = DEFAULT_SPLIT,
) -> TensorTask:
    """A ``Task`` from user data at ``path`` (folder of images, ``.npz`` or IDX), split by
    ``split`` (train, val, test fractions)."""
    p = Path(path)
    size = parse_image_size(image_size)
    if not p.exists():
        raise UserError(f"no such file or folder: {p}")
    if p.is_dir():
        if _find_idx(p, "train", "images") is not None:
            return _idx_folder(p, size, seed, split)
        return _image_folder(p, size, seed, split)
    if p.suffix.lower() == ".npz":
        return _npz(p, size, seed, split)
    return _idx_file(p, size, seed, split)


def load_split_files(paths: list[str], image_size: ImageSize = None) -> TensorTask:
    """A ``Task`` from three ``.npz`` files (train, val, test), each with ``x`` and ``y``.

    The splits are used as given; inputs are normalized with the train file's statistics.
    """
    if len(paths) != 3 or not all(paths):
        raise UserError(
            f"separate split files must be three paths TRAIN,VAL,TEST; got '{','.join(paths)}'"
        )
    size = parse_image_size(image_size)
    parts = [_split_file(Path(p), size) for p in paths]
    shapes = {tuple(x.shape[1:]) for x, _ in parts}
    if len(shapes) > 1:
        raise UserError(f"split files {','.join(paths)}: inputs differ in shape {sorted(shapes)}")
    num_classes = int(parts[0][1].max()) + 1
    for path, (_, y) in zip(paths[1:], parts[1:], strict=True):
        if int(y.max()) >= num_classes:
            raise UserError(f"{path}: label {int(y.max())} is not a class of the train file")
    names = [str(i) for i in range(num_classes)]
    return normalized_task(Path(paths[0]).stem, names, (parts[0], parts[1], parts[2]))


def _split_file(path: Path, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of one split's ``.npz``: ``(N, C, H, W)`` float32 inputs, int64 labels."""
    if not path.is_file() or path.suffix.lower() != ".npz":
        raise UserError(f"{path}: a split file must be an existing .npz file with x and y")
    arrays = _read_npz(path)
    x, y = as_nchw(arrays["x"], str(path)), check_labels(arrays["y"], str(path))
    if len(x) != len(y) or len(y) == 0:
        raise UserError(f"{path}: {len(x)} inputs and {len(y)} labels (need as many, >= 1)")
    xt = check_finite_data(torch.as_tensor(np.asarray(x), dtype=torch.float32), str(path))
    return resize(xt, size), torch.as_tensor(y, dtype=torch.int64)


# ---------------------------------------------------------------------- image folders


def _image_folder(root: Path, size: tuple[int, int] | None, seed: int, split: Split) -> TensorTask:
    entries = [e for e in sorted(root.iterdir()) if not e.name.startswith(".")]
    if not entries:
        raise UserError(f"{root}: folder is empty; expected one subfolder of images per class")
    classes = [e for e in entries if e.is_dir()]
    if not classes:
        raise UserError(
            f"{root}: no class subfolders; expected one subfolder of images per class, "
            "an .npz file or MNIST IDX files"
        )
    images: list[Image.Image] = []
    labels: list[int] = []
    files: list[Path] = []
    for label, folder in enumerate(classes):
        for f in sorted(folder.iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(_open_image(f))
                labels.append(label)
                files.append(f)
    if not images:
        raise UserError(f"{root}: no images found in its class subfolders")
    gray = all(im.mode in GRAY_MODES for im in images)
    target = size or (images[0].height, images[0].width)
    arrays = []
    for im, f in zip(images, files, strict=True):
        if size is None and (im.height, im.width) != target:
            raise UserError(
                f"{f}: image is {im.height}x{im.width} but {files[0]} is "
                f"{target[0]}x{target[1]}; give an image size to resize them all"
            )
        arrays.append(_pixels(im, gray, target))
    x = np.stack(arrays)
    y = np.asarray(labels, dtype=np.int64)
    names = [c.name for c in classes]
    name = root.name or str(root)
    return make_task(name, x, y, seed, class_names=names, source=str(root), split=split)


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None


def _pixels(im: Image.Image, gray: bool, size: tuple[int, int]) -> np.ndarray:
    """``(C, H, W)`` float32 pixels, converted to gray or RGB and resized bilinearly."""
    if gray:
        im = im if im.mode in ("I", "I;16", "F") else im.convert("L")
        if im.mode == "I;16":
            im = im.convert("I")
    else:
        im = im.convert("RGB")
    if (im.height, im.width) != size:
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


# ---------------------------------------------------------------------- npz


def _npz(path: Path, size: tuple[int, int] | None, seed: int, split: Split) -> TensorTask:
    arrays = _read_npz(path)
    has_test = "x_test" in arrays or "y_test" in arrays
    if has_test and not ("x_test" in arrays and "y_test" in arrays):
        raise UserError(f"{path}: npz has only one of 'x_test' and 'y_test'; give both or none")
    return _arrays_task(
        path,
        arrays["x"],
        arrays["y"],
        arrays.get("x_test"),
        arrays.get("y_test"),
        size,
        seed,
        split,
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (no pickles), which must hold ``x`` and ``y``."""
    try:
        _check_unpacked_size(path)
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise UserError(
            f"{path}: not a readable .npz file (corrupt or holding pickled objects: "
            f"{type(e).__name__})"
        ) from None
    for key in ("x", "y"):
        if key not in arrays:
            found = ", ".join(sorted(arrays)) or "none"
            raise UserError(f"{path}: npz has no array '{key}' (found: {found})")
    return arrays


def _check_unpacked_size(path: Path) -> None:
    """Refuse an archive whose arrays would not fit in memory once unpacked."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            check_fits(sum(info.file_size for info in archive.infolist()), f"{path}: its arrays")


def _arrays_task(
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    size: tuple[int, int] | None,
    seed: int,
    split: Split,
) -> TensorTask:
    """Validate in-memory arrays loaded from ``path`` and build the task."""
    src = str(path)
    x = as_nchw(x, src)
    y = check_labels(y, src)
    if len(x) != len(y):
        raise UserError(f"{src}: {len(x)} inputs but {len(y)} labels")
    if x_test is not None and y_test is not None:
        x_test = as_nchw(x_test, f"{src} (test)")
        y_test = check_labels(y_test, f"{src} (test)", num_classes=int(y.max(initial=-1)) + 1)
        if len(x_test) != len(y_test):
            raise UserError(f"{src}: {len(x_test)} test inputs but {len(y_test)} test labels")
    name = path.stem if path.is_file() else path.name
    return make_task(
        name, x, y, seed, x_test=x_test, y_test=y_test, image_size=size, source=src, split=split
    )


# ---------------------------------------------------------------------- IDX


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), from a plain or gzipped file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = _read_bounded(f, path)
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}: cannot read file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise UserError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex() or 'missing'}); user data "
            "must be an image folder, an .npz file or MNIST IDX files"
        )
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise UserError(f"{path}: corrupt IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise UserError(
            f"{path}: IDX data has {len(data) - header} bytes but shape {shape} needs {expected} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bounded(stream: io.BufferedIOBase, path: Path) -> bytes:
    """All of ``stream``, refusing to unpack more than the memory available."""
    limit, _ = available_bytes()
    data = stream.read(-1 if limit is None else limit + 1)
    if limit is not None and len(data) > limit:
        check_fits(len(data), f"{path}: its unpacked data")
    return data


def _find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
    """``{prefix}-{kind}-idx?-ubyte`` (or ``.idx?-ubyte``), optionally ``.gz``, in ``folder``."""
    n = 3 if kind == "images" else 1
    for stem in (f"{prefix}-{kind}-idx{n}-ubyte", f"{prefix}-{kind}.idx{n}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _labels_next_to(images: Path) -> Path:
    """The labels file that belongs to an IDX images file (``images`` → ``labels``, idx3 → idx1)."""
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    other = name[:-3] if name.endswith(".gz") else name + ".gz"
    if name != images.name:
        for candidate in (images.with_name(name), images.with_name(other)):
            if candidate.is_file():
                return candidate
    raise UserError(
        f"{images}: no IDX labels file next to it (expected a name like train-labels-idx1-ubyte)"
        if name == images.name
        else f"{images}: no IDX labels file {name} next to it"
    )


def _read_pair(images: Path, labels: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an IDX pair; ``labels`` defaults to the file next to ``images``."""
    x = read_idx(images)
    if x.ndim < 2:
        raise UserError(f"{images}: IDX file holds 1-D data (labels?); pass the images file")
    labels = labels or _labels_next_to(images)
    y = read_idx(labels)
    if y.ndim != 1:
        raise UserError(f"{labels}: IDX labels must be 1-D, got shape {y.shape}")
    if len(x) != len(y):
        raise UserError(f"{images}: {len(x)} images but {labels.name} has {len(y)} labels")
    return x, y


def _idx_folder(folder: Path, size: tuple[int, int] | None, seed: int, split: Split) -> TensorTask:
    train_images = _find_idx(folder, "train", "images")
    train_labels = _find_idx(folder, "train", "labels")
    if train_images is None or train_labels is None:
        raise UserError(f"{folder}: found train images but no train-labels-idx1-ubyte[.gz]")
    x, y = _read_pair(train_images, train_labels)
    test_images = _find_idx(folder, "t10k", "images")
    test_labels = _find_idx(folder, "t10k", "labels")
    if (test_images is None) != (test_labels is None):
        missing = "t10k-labels-idx1-ubyte" if test_labels is None else "t10k-images-idx3-ubyte"
        raise UserError(f"{folder}: has only one of the t10k files; {missing}[.gz] is missing")
    x_test = y_test = None
    if test_images is not None and test_labels is not None:
        x_test, y_test = _read_pair(test_images, test_labels)
    return _arrays_task(folder, x, y, x_test, y_test, size, seed, split)


def _idx_file(images: Path, size: tuple[int, int] | None, seed: int, split: Split) -> TensorTask:
    x, y = _read_pair(images)
    return _arrays_task(images, x, y, None, None, size, seed, split)
