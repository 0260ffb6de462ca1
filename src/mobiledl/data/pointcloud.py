"""Point-cloud tasks generated offline from ``mobiledl.apps.pointcloud.shapes`` (nothing
downloaded).

- ``shapes3d``: clouds of ``POINTS`` surface points ``(N, P, 3)`` of eight shape classes
  (sphere, cube, cylinder, cone, torus, plane, dumbbell, snowman), each posed at random (rotation,
  scale, shift, noise, sampling density). ``CLOUDS`` clouds are split by the split fractions;
  every split is generated from its own seed (``shape_split``), so no cloud is in two splits
  and the same seed gives the same clouds. Coordinates are left in their units (no
  normalization): the voxel models' voxel sizes are in those units.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

from mobiledl.apps.pointcloud.shapes import SHAPES, shape_split
from mobiledl.core.inputs import POINTS
from mobiledl.core.task import TensorTask
from mobiledl.data.prepare import DEFAULT_SPLIT, ImageSize, Split
from mobiledl.errors import UserError

CLOUDS = 1200
POINTS_PER_CLOUD = 256


@functools.lru_cache(maxsize=8)
def _split(part: str, count: int, points: int, seed: int) -> tuple[Tensor, Tensor]:
    """``shape_split``, kept for the process: ``train`` then ``eval`` in one process (tests,
    benchmarks) generate the clouds once."""
    return shape_split(part, count, points, seed=seed)


def shapes3d(
    image_size: ImageSize = None,
    seed: int = 0,
    split: Split = DEFAULT_SPLIT,
    clouds: int = CLOUDS,
    points: int = POINTS_PER_CLOUD,
) -> TensorTask:
    """The ``shapes3d`` task (see the module docstring): ``clouds`` clouds of ``points``."""
    if image_size is not None:
        raise UserError(
            f"task 'shapes3d' has point-cloud inputs; an image size ({image_size!r}) does not apply"
        )
    data = {}
    for part, fraction in zip(("train", "val", "test"), split, strict=True):
        x, y = _split(part, max(1, round(clouds * fraction)), points, seed)
        data[f"x_{part}"], data[f"y_{part}"] = x.clone(), y.clone()
    return TensorTask(
        name="shapes3d",
        num_classes=len(SHAPES),
        class_names=list(SHAPES),
        input_kind=POINTS,
        input_name="points",
        **data,
    )


POINTCLOUD_TASKS: dict[str, Callable[..., TensorTask]] = {"shapes3d": shapes3d}
