"""The search space: canonical architectures, evolutionary operators, encoding, records."""

from __future__ import annotations

import random

import pytest

from mobiledl.automl.nas.space import Arch, SearchSpace, default_space
from mobiledl.errors import UserError


def test_make_zeroes_unused_slots_and_validates(space: SearchSpace):
    arch = space.make([5, 5, 3, 5], [3, 3, 2, 3], [1, 2], (8, 8))
    assert arch.kernels == (5, 0, 3, 5) and arch.expands == (3, 0, 2, 3)
    assert space.active_slots(arch) == [0, 2, 3]
    with pytest.raises(UserError, match="kernel 4"):
        space.make([4, 5, 3, 5], [3, 3, 2, 3], [2, 2], (8, 8))
    with pytest.raises(UserError, match="resolution"):
        space.make([5, 5, 3, 5], [3, 3, 2, 3], [2, 2], (7, 7))


def test_operators_stay_in_space_and_canonical(space: SearchSpace):
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(30)]
    children = [space.mutate(a, rng, 0.5) for a in archs]
    children += [space.crossover(a, b, rng) for a, b in zip(archs, archs[1:], strict=False)]
    for arch in archs + children:
        space.check(arch)
        assert arch == space.make(
            arch.kernels_full(space), arch.expands_full(space), arch.depths, arch.resolution
        )
    assert len(set(archs)) > 20
    assert any(c not in archs for c in children)


def test_mutation_with_zero_probability_is_identity(space: SearchSpace):
    rng = random.Random(1)
    arch = space.sample(rng)
    assert space.mutate(arch, rng, 0.0) == arch


def test_encoding_is_one_hot_and_distinguishes(space: SearchSpace):
    small, large = space.smallest(), space.largest()
    slots = space.num_slots
    expected = slots * (2 + 2) + len(space.stages) * 2 + 2
    assert len(space.encode(small)) == expected
    active = len(space.active_slots(large))
    assert sum(space.encode(large)) == 2 * active + len(space.stages) + 1
    assert space.encode(small) != space.encode(large)


def test_records_round_trip():
    space = default_space()
    rng = random.Random(2)
    arch = space.sample(rng)
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert Arch.from_dict(arch.to_dict(), space) == arch
    with pytest.raises(UserError):
        Arch.from_dict({"kernels": [3]}, space)
    with pytest.raises(UserError, match="odd"):
        space.restrict(kernel_sizes=(4,))
