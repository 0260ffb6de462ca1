"""Search strategies on a known objective: an accuracy predictor fitted to a synthetic score
and a fixed latency table, so the best feasible architecture can be found by enumeration."""

from __future__ import annotations

import itertools
import random
import zlib

import pytest

from mobiledl.automl.nas.efficiency import CostTable, LatencyPredictor, LatencyTable, all_unit_keys
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.predictor import fit_accuracy_predictor
from mobiledl.automl.nas.search import (
    Constraints,
    EvolutionConfig,
    Objective,
    dominates,
    evolutionary_search,
    nsga_select,
    pareto_front,
    pareto_search,
    random_search,
)
from mobiledl.automl.nas.space import Arch, SearchSpace
from mobiledl.errors import UserError


def every_arch(space: SearchSpace) -> list[Arch]:
    out = []
    for depths in itertools.product(space.depths, repeat=len(space.stages)):
        for res in space.resolutions:
            slots = sum(depths)
            for ks in itertools.product(space.kernel_sizes, repeat=slots):
                for es in itertools.product(space.expand_ratios, repeat=slots):
                    k, e = iter(ks), iter(es)
                    kernels = [next(k) if i < d else 3 for d in depths for i in range(2)]
                    expands = [next(e) if i < d else 2 for d in depths for i in range(2)]
                    out.append(space.make(kernels, expands, depths, res))
    return out


def score(arch: Arch) -> float:
    """A synthetic accuracy: more, larger blocks and higher resolution are better."""
    return (
        0.5
        + 0.02 * sum(arch.kernels) / 5
        + 0.03 * sum(arch.expands) / 3
        + 0.01 * arch.resolution[0]
    )


@pytest.fixture(scope="module")
def objective(space: SearchSpace) -> Objective:
    supernet = OFASupernet(space, 10, 1, (8, 8))
    archs = every_arch(space)
    predictor = fit_accuracy_predictor(space, archs, [score(a) for a in archs], epochs=300)
    keys = all_unit_keys(supernet)
    # zlib.crc32, not hash(): str hashes change with PYTHONHASHSEED, so the table (and whether
    # the budget leaves a front of two) would differ from run to run.
    table = LatencyTable({k: 0.01 + 0.001 * (zlib.crc32(repr(k).encode()) % 7) for k in keys})
    return Objective(supernet, predictor, LatencyPredictor(table), CostTable(supernet))


def test_predictor_learns_the_score(objective: Objective):
    archs = every_arch(objective.space)
    predicted = objective.accuracy.predict(archs)
    errors = [abs(p - score(a)) for p, a in zip(predicted, archs, strict=True)]
    assert max(errors) < 0.02


def test_evolution_finds_the_best_feasible(objective: Objective):
    archs = every_arch(objective.space)
    budget = Constraints(macs=sorted(objective.costs.macs(a) for a in archs)[len(archs) // 3])
    feasible = [objective(a) for a in archs if objective(a).meets(budget)]
    best = max(c.accuracy for c in feasible)
    config = EvolutionConfig(population=24, generations=12)
    found = evolutionary_search(objective, budget, config, random.Random(0))
    assert all(c.meets(budget) for c in found)
    assert found[0].accuracy == pytest.approx(best, abs=1e-6)
    baseline = random_search(objective, budget, 20, random.Random(0))
    assert all(c.meets(budget) for c in baseline)
    assert baseline[0].accuracy <= found[0].accuracy


def test_pareto_search_returns_a_front(objective: Objective):
    parts = (objective.supernet, objective.accuracy, objective.latency, objective.costs)
    objective = Objective(*parts)  # an empty cache: ``seen`` is this search's candidates
    budget = Constraints(latency_ms=objective(objective.space.largest()).latency_ms * 0.8)
    front = pareto_search(
        objective, budget, EvolutionConfig(population=16, generations=5), random.Random(0)
    )
    assert len(front) >= 2 and all(c.meets(budget) for c in front)
    assert not any(dominates(a, b) for a in front for b in front)
    latencies = [c.latency_ms for c in front]
    assert latencies == sorted(latencies)
    seen = [c for c in objective.seen if c.meets(budget)]
    assert pareto_front(seen) == front
    assert len(nsga_select(seen, 5)) == 5


def test_impossible_budget_is_a_user_error(objective: Objective):
    with pytest.raises(UserError, match="no sub-network meets"):
        random_search(objective, Constraints(peak_memory_kb=0.01), 3, random.Random(0))
    with pytest.raises(UserError, match="> 0"):
        Constraints(latency_ms=-1.0)
