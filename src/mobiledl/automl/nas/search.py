"""Search strategies over the supernet's sub-networks under efficiency constraints.

- :func:`evolutionary_search`: OFA's evolutionary search (Cai et al., ICLR 2020, Sec. 3.3;
  Real et al. 2019): a population of feasible architectures; each generation keeps the best
  ``parents`` fraction and refills with mutations and crossovers of parents, discarding
  children that break the constraints.
- :func:`random_search`: the baseline, uniform samples that meet the constraints.
- :func:`pareto_search`: multi-objective evolution (non-dominated sorting and crowding distance
  of NSGA-II, Deb et al. 2002) for the accuracy-latency front.

Candidates are scored by the accuracy predictor and the efficiency models
(:class:`Objective`), so a search runs thousands of candidates without executing any.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mobiledl.automl.nas.efficiency import CostTable, LatencyPredictor
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.predictor import AccuracyPredictor
from mobiledl.automl.nas.space import Arch, SearchSpace
from mobiledl.errors import UserError


@dataclass(frozen=True)
class Constraints:
    """Budgets a sub-network must meet; ``None`` means unconstrained."""

    latency_ms: float | None = None
    macs: int | None = None
    peak_memory_kb: float | None = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "macs", "peak_memory_kb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"the {name} budget must be > 0; got {value}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("latency_ms", "macs", "peak_memory_kb")}


@dataclass(frozen=True)
class Candidate:
    """An architecture with its predicted accuracy and latency, MACs and peak memory."""

    arch: Arch
    accuracy: float
    latency_ms: float
    macs: int
    peak_memory_bytes: int

    def meets(self, constraints: Constraints) -> bool:
        c = constraints
        return (
            (c.latency_ms is None or self.latency_ms <= c.latency_ms)
            and (c.macs is None or self.macs <= c.macs)
            and (c.peak_memory_kb is None or self.peak_memory_bytes <= c.peak_memory_kb * 1024)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch.to_dict(),
            "label": self.arch.label(),
            "predicted_accuracy": self.accuracy,
            "predicted_latency_ms": self.latency_ms,
            "macs": self.macs,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


class Objective:
    """Scores architectures (cached): predicted accuracy, predicted latency, MACs, memory."""

    def __init__(
        self,
        supernet: OFASupernet,
        accuracy: AccuracyPredictor,
        latency: LatencyPredictor,
        costs: CostTable,
    ) -> None:
        self.supernet, self.accuracy, self.latency, self.costs = supernet, accuracy, latency, costs
        self._cache: dict[Arch, Candidate] = {}

    @property
    def space(self) -> SearchSpace:
        return self.supernet.space

    def __call__(self, arch: Arch) -> Candidate:
        if arch not in self._cache:
            self._cache[arch] = Candidate(
                arch,
                self.accuracy.predict([arch])[0],
                self.latency.predict(self.supernet, arch),
                self.costs.macs(arch),
                self.costs.peak_memory_bytes(arch),
            )
        return self._cache[arch]

    @property
    def seen(self) -> list[Candidate]:
        """Every candidate scored so far, in order of first scoring."""
        return list(self._cache.values())


def check_budget(costs: CostTable, constraints: Constraints) -> None:
    """``UserError`` early if even the smallest sub-network breaks the MAC or memory budget."""
    smallest = costs.supernet.space.smallest()
    macs, peak = costs.macs(smallest), costs.peak_memory_bytes(smallest)
    candidate = Candidate(smallest, 0.0, 0.0, macs, peak)
    if not candidate.meets(constraints):
        raise UserError(
            f"no sub-network meets the constraints {constraints.to_dict()}: the smallest one "
            f"has {macs:,} MACs and peak memory {peak / 1024:.1f} kB"
        )


def _feasible_sample(
    objective: Objective, constraints: Constraints, rng: random.Random, tries: int = 2000
) -> Candidate:
    for _ in range(tries):
        candidate = objective(objective.space.sample(rng))
        if candidate.meets(constraints):
            return candidate
    smallest = objective(objective.space.smallest())
    if smallest.meets(constraints):
        return smallest
    raise UserError(
        f"no sub-network meets the constraints {constraints.to_dict()}: the smallest one has "
        f"latency {smallest.latency_ms:.3f} ms, {smallest.macs:,} MACs and peak memory "
        f"{smallest.peak_memory_bytes / 1024:.1f} kB"
    )


def random_search(
    objective: Objective, constraints: Constraints, samples: int, rng: random.Random
) -> list[Candidate]:
    """``samples`` feasible random architectures, best predicted accuracy first."""
    found = [_feasible_sample(objective, constraints, rng) for _ in range(samples)]
    return sorted(_unique(found), key=lambda c: -c.accuracy)


@dataclass
class EvolutionConfig:
    """Population size, generations, parent fraction, mutation share and probability."""

    population: int = 100
    generations: int = 30
    parents: float = 0.25
    mutation_share: float = 0.5
    mutate_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.population < 4 or self.generations < 1:
            raise UserError("evolution needs population >= 4 and generations >= 1")
        if not 0 < self.parents < 1 or not 0 <= self.mutation_share <= 1:
            raise UserError("parents must lie in (0, 1) and mutation_share in [0, 1]")


def _children(
    parents: list[Candidate],
    count: int,
    objective: Objective,
    constraints: Constraints,
    config: EvolutionConfig,
    rng: random.Random,
) -> list[Candidate]:
    """``count`` feasible children: mutations first, then crossovers of random parents."""
    space, children = objective.space, []
    mutations = int(round(count * config.mutation_share))
    for _ in range(count * 50):
        if len(children) == count:
            break
        if len(children) < mutations:
            arch = space.mutate(rng.choice(parents).arch, rng, config.mutate_prob)
        else:
            first, second = rng.choice(parents), rng.choice(parents)
            arch = space.crossover(first.arch, second.arch, rng)
        candidate = objective(arch)
        if candidate.meets(constraints):
            children.append(candidate)
    return children + [rng.choice(parents) for _ in range(count - len(children))]


def _evolve(
    objective: Objective,
    constraints: Constraints,
    config: EvolutionConfig,
    rng: random.Random,
    select: Callable[[list[Candidate], int], list[Candidate]],
) -> list[Candidate]:
    population = [_feasible_sample(objective, constraints, rng) for _ in range(config.population)]
    keep = max(2, int(config.population * config.parents))
    for _ in range(config.generations):
        parents = select(_unique(population), keep)
        children = _children(
            parents, config.population - len(parents), objective, constraints, config, rng
        )
        population = parents + children
    return population


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    return list({c.arch: c for c in candidates}.values())


def evolutionary_search(
    objective: Objective,
    constraints: Constraints,
    config: EvolutionConfig,
    rng: random.Random,
) -> list[Candidate]:
    """The final population's distinct architectures, best predicted accuracy first."""

    def best(population: list[Candidate], count: int) -> list[Candidate]:
        return sorted(population, key=lambda c: -c.accuracy)[:count]

    final = _evolve(objective, constraints, config, rng, best)
    return sorted(_unique(final), key=lambda c: -c.accuracy)


def pareto_search(
    objective: Objective,
    constraints: Constraints,
    config: EvolutionConfig,
    rng: random.Random,
) -> list[Candidate]:
    """NSGA-II selection on (accuracy up, latency down); returns the front of all candidates
    seen that meet the constraints, fastest first."""
    _evolve(objective, constraints, config, rng, nsga_select)
    feasible = [c for c in objective.seen if c.meets(constraints)]
    return pareto_front(feasible)


def dominates(a: Candidate, b: Candidate) -> bool:
    """``a`` is at least as accurate and as fast as ``b``, and better in one."""
    return (
        a.accuracy >= b.accuracy
        and a.latency_ms <= b.latency_ms
        and (a.accuracy > b.accuracy or a.latency_ms < b.latency_ms)
    )


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The non-dominated candidates, sorted by latency."""
    front = [c for c in candidates if not any(dominates(o, c) for o in candidates)]
    return sorted(_unique(front), key=lambda c: (c.latency_ms, -c.accuracy))


def nsga_select(population: list[Candidate], count: int) -> list[Candidate]:
    """Fill ``count`` places front by front; split the last front by crowding distance."""
    remaining, chosen = list(population), []
    while remaining and len(chosen) < count:
        front = [c for c in remaining if not any(dominates(o, c) for o in remaining)]
        remaining = [c for c in remaining if c not in front]
        if len(chosen) + len(front) > count:
            front = sorted(front, key=_crowding(front), reverse=True)[: count - len(chosen)]
        chosen += front
    return chosen


def _crowding(front: list[Candidate]) -> Callable[[Candidate], float]:
    """Crowding distance in (accuracy, latency), normalised; boundary points are infinite."""
    distance = {id(c): 0.0 for c in front}
    for key in (lambda c: c.accuracy, lambda c: c.latency_ms):
        ordered = sorted(front, key=key)
        span = (key(ordered[-1]) - key(ordered[0])) or 1.0
        distance[id(ordered[0])] = distance[id(ordered[-1])] = float("inf")
        for prev, mid, nxt in zip(ordered, ordered[1:], ordered[2:], strict=False):
            distance[id(mid)] += (key(nxt) - key(prev)) / span
    return lambda c: distance[id(c)]
