"""Turn raw arrays into a ``Task``: resize, stratified split, normalization with train stats.

Built-in and user datasets both end here, so every task is split and normalized the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.resources import check_fits, tensor_bytes
from mobiledl.validate import check_finite_data

#: Train, validation and test fractions of a task split in code (each class on its own).
DEFAULT_SPLIT = (0.6, 0.2, 0.2)
Split = tuple[float, float, float]
MIN_PER_CLASS = 3  # one sample each for train, val and test
#: Float copies of the data a task holds while it is split and normalized.
TASK_COPIES = 3

ImageSize = int | Sequence[int] | str | None


def parse_image_size(image_size: ImageSize) -> tuple[int, int] | None:
    """``None``, ``S``, ``(H, W)``, ``"S"`` or ``"H,W"`` → ``(H, W)`` or ``None``."""
    if image_size is None:
        return None
    value = image_size
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").split(",")
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"image size must be 'S' or 'H,W', got '{image_size}'") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, Sequence) and len(value) == 1:
        value = (value[0], value[0])
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise UserError(f"image size must be a positive int or (H, W), got {image_size!r}")
    return int(value[0]), int(value[1])


def as_nchw(x: np.ndarray, source: str) -> np.ndarray:
    """``(N, L)`` → ``(N, 1, 1, L)``, ``(N, H, W)`` → ``(N, 1, H, W)``, ``(N, C, H, W)`` kept."""
    if x.dtype.kind not in "biuf":
        raise UserError(f"{source}: inputs must be numeric, got dtype {x.dtype}")
    if x.ndim == 2:
        return x[:, None, None, :]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    raise UserError(
        f"{source}: inputs must be shaped (N, L), (N, H, W) or (N, C, H, W), got {x.shape}"
    )


def resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize of an ``(N, C, H, W)`` batch; a no-op if ``size`` is None or current."""
    if size is None or tuple(x.shape[2:]) == size:
        return x
    resized = (*x.shape[:2], *size)
    check_fits(TASK_COPIES * tensor_bytes(resized), f"data resized to {size[0]}x{size[1]}")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def parse_split(value: str | Sequence[float] | None) -> Split:
    """``"TRAIN,VAL,TEST"`` (or three numbers) → fractions; ``None`` → ``DEFAULT_SPLIT``.

    Three positive numbers summing to 1 within 1e-6, else a one-line ``UserError``.
    """
    if value is None:
        return DEFAULT_SPLIT
    text = value if isinstance(value, str) else ",".join(str(v) for v in value)
    try:
        fractions = tuple(float(part) for part in text.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or not all(0 < f <= 1 for f in fractions):
        raise UserError(f"split must be three positive fractions TRAIN,VAL,TEST; got '{text}'")
    if abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split fractions must sum to 1; '{text}' sums to {sum(fractions):g}")
    return fractions[0], fractions[1], fractions[2]


def stratified_split(
    y: np.ndarray, fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, ...]:
    """Index arrays ``(rest, part_1, ..., part_k)``: each class split by ``fractions``.

    Every part gets at least one sample of each class (given enough samples), the rest goes
    to the first array. Deterministic for a seed; each part is shuffled so classes interleave.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for i, frac in enumerate(fractions, start=1):
            k = max(1, round(frac * len(idx)))
            parts[i].append(idx[start : start + k])
            start += k
        parts[0].append(idx[start:])
    return tuple(rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)


def split_indices(
    y: np.ndarray, seed: int, has_test: bool, split: Split = DEFAULT_SPLIT
) -> tuple[np.ndarray, ...]:
    """``(train, val, test)`` index arrays by ``split``, or ``(train, val)`` if the data has its
    own test split (train and val then keep the ratio ``split`` gives them)."""
    _, val, test = split
    if has_test:
        return stratified_split(y, (val / (1 - test),), seed)
    return stratified_split(y, (val, test), seed)


def check_labels(y: np.ndarray, source: str, num_classes: int | None = None) -> np.ndarray:
    """Labels as int64; a UserError if they are not integers or fall outside the classes."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{source}: labels must be a 1-D array, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise UserError(f"{source}: labels must be integers, found non-integer values")
    elif y.dtype.kind not in "biu":
        raise UserError(f"{source}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise UserError(f"{source}: labels must be >= 0, found {int(y.min())}")
    if num_classes is not None and len(y) and y.max() >= num_classes:
        raise UserError(
            f"{source}: label {int(y.max())} is out of range; classes are 0..{num_classes - 1}"
        )
    return y


def make_task(
    name: str,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray,
    seed: int,
    *,
    class_names: list[str] | None = None,
    x_test: np.ndarray | torch.Tensor | None = None,
    y_test: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
    source: str | None = None,
    split: Split = DEFAULT_SPLIT,
) -> TensorTask:
    """Split ``(x, y)`` into train/val/test by ``split`` (or train/val if a test split is
    given), resize and normalize every split with the train split's per-channel mean and std.

    ``x`` is ``(N, C, H, W)``; ``y`` holds int labels ``0..K-1``, ``K`` = ``len(class_names)``
    or ``max(y) + 1``. ``source`` names the data in error messages (default: ``name``).
    """
    source = source or name
    if len(x) != len(y):
        raise UserError(f"{source}: {len(x)} inputs but {len(y)} labels")
    if x_test is not None and y_test is not None and len(x_test) != len(y_test):
        raise UserError(f"{source}: {len(x_test)} test inputs but {len(y_test)} test labels")
    if len(y) == 0:
        raise UserError(f"{source}: no samples")
    num_classes = len(class_names) if class_names else int(y.max()) + 1
    class_names = class_names or [str(i) for i in range(num_classes)]
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() < MIN_PER_CLASS:
        c = int(counts.argmin())
        raise UserError(
            f"{source}: class '{class_names[c]}' has {counts[c]} samples; each class needs at "
            f"least {MIN_PER_CLASS} (labels must be 0..K-1 with every class present)"
        )
    xt = resize(
        check_finite_data(torch.as_tensor(np.asarray(x), dtype=torch.float32), source), image_size
    )
    yt = torch.as_tensor(y, dtype=torch.int64)
    if x_test is None or y_test is None:
        train, val, test = split_indices(y, seed, False, split)
        x_te, y_te = xt[test], yt[test]
    else:
        train, val = split_indices(y, seed, True, split)
        x_te = torch.as_tensor(np.asarray(x_test), dtype=torch.float32)
        x_te = resize(check_finite_data(x_te, source, "test inputs"), image_size)
        y_te = torch.as_tensor(y_test, dtype=torch.int64)
        if x_te.shape[1:] != xt.shape[1:]:
            raise UserError(
                f"{source}: test inputs are shaped {tuple(x_te.shape[1:])} but training inputs "
                f"{tuple(xt.shape[1:])}"
            )
    parts = ((xt[train], yt[train]), (xt[val], yt[val]), (x_te, y_te))
    return normalized_task(name, class_names, parts)


Part = tuple[torch.Tensor, torch.Tensor]


def normalized_task(
    name: str, class_names: list[str], parts: tuple[Part, Part, Part]
) -> TensorTask:
    """The task of ``(train, val, test)`` ``(x, y)`` pairs, every ``x`` normalized with the
    train split's per-channel mean and standard deviation."""
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = parts
    mean = x_tr.double().mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.double().std(dim=(0, 2, 3), keepdim=True)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))

    def norm(v: torch.Tensor) -> torch.Tensor:
        return ((v.double() - mean) / std).float().contiguous()

    return TensorTask(
        name=name,
        num_classes=len(class_names),
        x_train=norm(x_tr),
        y_train=y_tr,
        x_val=norm(x_val),
        y_val=y_val,
        x_test=norm(x_te),
        y_test=y_te,
        class_names=list(class_names),
    )
