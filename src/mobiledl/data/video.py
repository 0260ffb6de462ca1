"""Video tasks generated from the real handwritten digits scikit-learn ships (nothing downloaded).

Each clip is ``T = 8`` frames of one digit image (upscaled, on a black ``S x S`` canvas,
``S = 32`` by default), as ``(N, T, 1, S, S)`` tensors. The digit images are split into
train / validation / test first (stratified by digit, as ``digits`` is), so no digit image
appears in two splits; each image then gives one clip with seeded random parameters.

- ``video-motion``: the digit slides 2 px per frame right, left, down or up; the class is the
  direction. Reversed in time, a clip shows the opposite direction, and both clips hold the
  same frames: a model that ignores frame order (TSN) cannot beat chance on the axis's sign.
- ``video-rotation``: the canvas turns about its centre by 30 degrees per frame, clockwise
  (class 0) or counter-clockwise (class 1), from a random start angle; the digit sits off
  centre, so it both spins and travels along an arc. Reversed, a clockwise clip is a
  counter-clockwise one, again with the same frames.
- ``video-digit`` (control): the digit stands still at a random place; the class is the digit.
  Time does not matter: every frame alone decides.

Every split is normalized with the training split's mean and standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mobiledl.core.inputs import CLIP
from mobiledl.core.task import TensorTask
from mobiledl.data.prepare import DEFAULT_SPLIT, ImageSize, Split, parse_image_size, split_indices
from mobiledl.errors import UserError

FRAMES = 8
DEFAULT_SIZE = 32
MIN_SIZE = 16
#: Pixels per frame of ``video-motion`` at the default size (scaled with the canvas).
MOTION_STEP = 2
#: Degrees per frame of ``video-rotation``.
ROTATION_STEP = 30.0
DIRECTIONS = ["right", "left", "down", "up"]
#: (dy, dx) of each direction.
VELOCITY = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
ROTATIONS = ["clockwise", "counter-clockwise"]
DIGIT_NAMES = [str(i) for i in range(10)]


def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


def _upscale(images: np.ndarray, size: int) -> torch.Tensor:
    """``(N, 8, 8)`` digits resized bilinearly to ``(N, size, size)``."""
    x = torch.from_numpy(images)[:, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def place(digit: torch.Tensor, size: int, top: int, left: int) -> torch.Tensor:
    """An ``size x size`` black canvas with ``digit`` pasted at ``(top, left)``."""
    canvas = torch.zeros(size, size)
    d = digit.shape[0]
    canvas[top : top + d, left : left + d] = digit
    return canvas


def motion_clip(
    digit: torch.Tensor, size: int, direction: int, top: int, left: int, step: int
) -> torch.Tensor:
    """``(T, size, size)``: ``digit`` starting at ``(top, left)`` moving ``step`` px per frame."""
    dy, dx = VELOCITY[direction]
    frames = [place(digit, size, top + t * step * dy, left + t * step * dx) for t in range(FRAMES)]
    return torch.stack(frames)


def rotation_clip(canvas: torch.Tensor, start: float, sign: int) -> torch.Tensor:
    """``(T, S, S)``: ``canvas`` turned about its centre by ``start + sign * t * step`` degrees
    (``sign`` +1: clockwise on screen, -1: counter-clockwise)."""
    angles = torch.tensor([math.radians(start + sign * t * ROTATION_STEP) for t in range(FRAMES)])
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    # grid_sample reads the output pixel at p from theta @ p: the inverse of the rotation.
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    size = canvas.shape[-1]
    grid = F.affine_grid(theta, [FRAMES, 1, size, size], align_corners=False)
    source = canvas.expand(FRAMES, 1, size, size)
    return F.grid_sample(source, grid, align_corners=False)[:, 0]


def _motion(digits: torch.Tensor, size: int, rng: np.random.Generator) -> tuple[list, list]:
    step = max(1, MOTION_STEP * size // DEFAULT_SIZE)
    d = digits.shape[-1]
    travel = step * (FRAMES - 1)
    clips, labels = [], []
    for digit in digits:
        direction = int(rng.integers(4))
        along = int(rng.integers(size - d - travel + 1))
        across = int(rng.integers(size - d + 1))
        dy, dx = VELOCITY[direction]
        start = along if dy + dx > 0 else along + travel
        top, left = (start, across) if dy else (across, start)
        clips.append(motion_clip(digit, size, direction, top, left, step))
        labels.append(direction)
    return clips, labels


def _rotation(digits: torch.Tensor, size: int, rng: np.random.Generator) -> tuple[list, list]:
    d = digits.shape[-1]
    clips, labels = [], []
    for digit in digits:
        label = int(rng.integers(2))
        top = (size - d) // 2
        canvas = place(digit, size, top, size // 2 + size // 4 - d // 2)  # centre at radius S/4
        clips.append(rotation_clip(canvas, float(rng.uniform(0, 360)), 1 if label == 0 else -1))
        labels.append(label)
    return clips, labels


def _static(
    digits: torch.Tensor, size: int, rng: np.random.Generator, targets: np.ndarray
) -> tuple[list, list]:
    d = digits.shape[-1]
    clips = []
    for digit in digits:
        top, left = (int(v) for v in rng.integers(size - d + 1, size=2))
        clips.append(place(digit, size, top, left).expand(FRAMES, size, size))
    return clips, [int(t) for t in targets]


#: task name -> (digit size as a fraction of the canvas, class names, clip generator).
KINDS: dict[str, tuple[float, list[str], Callable[..., tuple[list, list]]]] = {
    "video-motion": (0.5, DIRECTIONS, _motion),
    "video-rotation": (0.375, ROTATIONS, _rotation),
    "video-digit": (0.5, DIGIT_NAMES, _static),
}


def _clips(
    name: str, images: np.ndarray, targets: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    fraction, _, generate = KINDS[name]
    digits = _upscale(images, round(size * fraction))
    extra = (targets,) if generate is _static else ()
    clips, labels = generate(digits, size, rng, *extra)
    return torch.stack(clips)[:, :, None].contiguous(), torch.tensor(labels, dtype=torch.int64)


def video_task(
    name: str, image_size: ImageSize = None, seed: int = 0, split: Split = DEFAULT_SPLIT
) -> TensorTask:
    """Built-in video task ``name`` (see the module docstring): ``(N, 8, 1, S, S)`` clips."""
    size = parse_image_size(image_size) or (DEFAULT_SIZE, DEFAULT_SIZE)
    if size[0] != size[1] or size[0] < MIN_SIZE:
        raise UserError(f"task '{name}' needs square frames of >= {MIN_SIZE} px; got {size}")
    images, targets = _digit_images()
    rng = np.random.default_rng(seed)
    parts = {}
    indices = split_indices(targets, seed, False, split)
    for part, index in zip(("train", "val", "test"), indices, strict=True):
        parts[part] = _clips(name, images[index], targets[index], size[0], rng)
    mean, std = parts["train"][0].mean(), parts["train"][0].std()
    data = {}
    for part, (x, y) in parts.items():
        data[f"x_{part}"], data[f"y_{part}"] = (x - mean) / std, y
    classes = KINDS[name][1]
    return TensorTask(
        name=name,
        num_classes=len(classes),
        class_names=list(classes),
        input_kind=CLIP,
        input_name="clip",
        **data,
    )


def _builtin(name: str) -> Callable[..., TensorTask]:
    def build(
        image_size: ImageSize = None, seed: int = 0, split: Split = DEFAULT_SPLIT
    ) -> TensorTask:
        return video_task(name, image_size, seed, split)

    build.__doc__ = f"Built-in video task '{name}'."
    return build


VIDEO_TASKS: dict[str, Callable[..., TensorTask]] = {name: _builtin(name) for name in KINDS}
