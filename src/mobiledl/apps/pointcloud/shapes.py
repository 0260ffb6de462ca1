"""Point clouds of shape classes, generated offline and deterministically, for classification.

Primitives (sphere, cube, cylinder, cone, torus, plane) and compositions of them (a dumbbell:
two spheres on a bar; a snowman: two stacked spheres), sampled on their surfaces only, as a
depth sensor sees them, then posed at random: a rotation, a scale, a shift, Gaussian noise,
and a sampling density drawn per cloud (a cloud of ``points`` rows holds between a quarter
and all of them distinct; the rest repeat, as points a voxel merges). The same seed gives the
same clouds; ``shape_split`` gives fixed train / val / test splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mobiledl.errors import UserError

Sampler = Callable[[int, torch.Generator], Tensor]
SPLITS = {"train": 0, "val": 1, "test": 2}


def _uniform(count: int, gen: torch.Generator, low: float = -1.0, high: float = 1.0) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=gen)


def _angle(count: int, gen: torch.Generator) -> Tensor:
    return _uniform(count, gen, 0.0, 2 * math.pi)


def sphere(count: int, gen: torch.Generator) -> Tensor:
    """The unit sphere's surface."""
    return torch.nn.functional.normalize(torch.randn(count, 3, generator=gen), dim=1)


def cube(count: int, gen: torch.Generator) -> Tensor:
    """The surface of ``[-1, 1]^3``: a random face, a uniform point on it."""
    points = _uniform(3 * count, gen).view(count, 3)
    face = torch.randint(0, 6, (count,), generator=gen)
    points[torch.arange(count), face % 3] = (face // 3 * 2 - 1).float()
    return points


def cylinder(count: int, gen: torch.Generator) -> Tensor:
    """Radius 1, height 2, with its two caps (area-weighted: the side is 2/3 of the area)."""
    theta, z = _angle(count, gen), _uniform(count, gen)
    radius = torch.ones(count)
    cap = torch.rand(count, generator=gen) < 1 / 3
    radius[cap] = torch.rand(int(cap.sum()), generator=gen).sqrt()
    z[cap] = torch.sign(z[cap])
    return torch.stack([radius * theta.cos(), radius * theta.sin(), z], dim=1)


def cone(count: int, gen: torch.Generator) -> Tensor:
    """Apex at z = 1, a base of radius 1 at z = -1, with the base disc."""
    theta = _angle(count, gen)
    radius = torch.rand(count, generator=gen).sqrt()
    z = 1 - 2 * radius
    base = torch.rand(count, generator=gen) < 0.3
    z[base] = -1.0
    return torch.stack([radius * theta.cos(), radius * theta.sin(), z], dim=1)


def torus(count: int, gen: torch.Generator) -> Tensor:
    """A ring: tube radius 0.3 around a circle of radius 0.7."""
    theta, phi = _angle(count, gen), _angle(count, gen)
    ring = 0.7 + 0.3 * phi.cos()
    return torch.stack([ring * theta.cos(), ring * theta.sin(), 0.3 * phi.sin()], dim=1)


def plane(count: int, gen: torch.Generator) -> Tensor:
    """A flat square sheet ``[-1, 1]^2`` at z = 0."""
    return torch.stack([_uniform(count, gen), _uniform(count, gen), torch.zeros(count)], dim=1)


def _parts(
    count: int, gen: torch.Generator, parts: Sequence[tuple[Sampler, float, Tensor]]
) -> Tensor:
    """``count`` points split over ``(sampler, scale, centre)`` parts in proportion to area."""
    which = torch.randint(0, len(parts), (count,), generator=gen)
    points = torch.empty(count, 3)
    for index, (sampler, scale, centre) in enumerate(parts):
        rows = (which == index).nonzero().squeeze(1)
        points[rows] = sampler(rows.numel(), gen) * scale + centre
    return points


def _bar(count: int, gen: torch.Generator) -> Tensor:
    return cylinder(count, gen) * torch.tensor([0.15, 0.15, 0.6])


def dumbbell(count: int, gen: torch.Generator) -> Tensor:
    """Two spheres joined by a thin bar."""
    ends = [(sphere, 0.4, torch.tensor([0.0, 0.0, z])) for z in (-0.8, 0.8)]
    return _parts(count, gen, [*ends, (_bar, 1.0, torch.zeros(3))])


def snowman(count: int, gen: torch.Generator) -> Tensor:
    """A small sphere on a large one."""
    return _parts(count, gen, [(sphere, 0.6, torch.tensor([0.0, 0.0, -0.4])),
                               (sphere, 0.4, torch.tensor([0.0, 0.0, 0.6]))])  # fmt: skip


SHAPES: dict[str, Sampler] = {
    "sphere": sphere, "cube": cube, "cylinder": cylinder, "cone": cone, "torus": torus,
    "plane": plane, "dumbbell": dumbbell, "snowman": snowman,
}  # fmt: skip


def rotation(gen: torch.Generator) -> Tensor:
    """A uniformly random 3D rotation (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def posed(points: Tensor, distinct: int, noise: float, gen: torch.Generator) -> Tensor:
    """``points`` rotated, scaled (0.6 to 1.2), shifted (up to 0.2), noised, with only the
    first ``distinct`` rows kept distinct (the rest repeat them)."""
    repeat = torch.randint(0, distinct, (points.shape[0] - distinct,), generator=gen)
    points = torch.cat([points[:distinct], points[repeat]])
    scale = 0.6 + 0.6 * torch.rand(1, generator=gen)
    shift = _uniform(3, gen, -0.2, 0.2)
    return (
        points @ rotation(gen).T * scale + shift + noise * torch.randn(points.shape, generator=gen)
    )


def make_shapes(
    count: int,
    points: int = 512,
    classes: Sequence[str] = tuple(SHAPES),
    seed: int = 0,
    noise: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """``count`` clouds ``(count, points, 3)`` and their labels (index into ``classes``),
    balanced over the classes in a shuffled order."""
    unknown = [name for name in classes if name not in SHAPES]
    if unknown or not classes:
        raise UserError(f"unknown shape class(es) {unknown}; choose from {', '.join(SHAPES)}")
    if count < 1 or points < 4:
        raise UserError(f"need >= 1 cloud of >= 4 points; got {count} of {points}")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % len(classes)
    labels = labels[torch.randperm(count, generator=gen)]
    clouds = torch.empty(count, points, 3)
    for index, label in enumerate(labels.tolist()):
        distinct = int(torch.randint(points // 4, points + 1, (1,), generator=gen))
        surface = SHAPES[classes[label]](points, gen)
        clouds[index] = posed(surface, distinct, noise, gen)
    return clouds, labels


def shape_split(
    split: str, count: int, points: int = 512, classes: Sequence[str] = tuple(SHAPES), seed: int = 0
) -> tuple[Tensor, Tensor]:
    """A fixed split (``train``, ``val`` or ``test``): its own seed, never another split's."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; choose {', '.join(SPLITS)}")
    return make_shapes(count, points, classes, seed=3 * seed + SPLITS[split])
