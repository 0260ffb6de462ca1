"""One search end to end: efficiency models, accuracy predictor, strategy, final measurement.

1. Latency: the lookup table is timed on this machine and the predictor's correction is fitted
   on ``latency_samples`` measured random sub-networks (or a saved latency model is reused).
2. Accuracy: ``predictor_samples`` random sub-networks are measured (BN recalibration, then
   validation accuracy) by the evaluator — in process or on Ray — and the MLP is fitted.
3. The strategy (evolution, random, pareto or proxyless) proposes candidates that meet the
   constraints; the ``top_k`` best by predicted accuracy are measured by the evaluator and the
   most accurate on validation data wins.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from mobiledl.automl.nas.efficiency import (
    CostTable,
    LatencyPredictor,
    LatencyTable,
    TimingConfig,
    mape,
    measure_latency,
)
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.evaluate import Evaluator
from mobiledl.automl.nas.extract import extract_subnet
from mobiledl.automl.nas.predictor import AccuracyPredictor, fit_accuracy_predictor, rmse
from mobiledl.automl.nas.proxyless import ProxylessConfig, proxyless_search
from mobiledl.automl.nas.search import (
    Candidate,
    Constraints,
    EvolutionConfig,
    Objective,
    evolutionary_search,
    pareto_front,
    pareto_search,
    random_search,
)
from mobiledl.automl.nas.space import Arch
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError

logger = logging.getLogger(__name__)

Strategy = Literal["evolution", "random", "pareto", "proxyless"]
STRATEGIES = ("evolution", "random", "pareto", "proxyless")


@dataclass
class SearchConfig:
    """Sizes of each stage of the search; ``seed`` fixes every random choice."""

    strategy: Strategy = "evolution"
    predictor_samples: int = 120
    latency_samples: int = 40
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    random_samples: int = 1000
    proxyless: ProxylessConfig = field(default_factory=ProxylessConfig)
    top_k: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy '{self.strategy}'; choose {', '.join(STRATEGIES)}")
        if self.predictor_samples < 4 or self.latency_samples < 3 or self.top_k < 1:
            raise UserError("need predictor_samples >= 4, latency_samples >= 3 and top_k >= 1")


@dataclass
class SearchResult:
    """The winner, every measured finalist, the front of all candidates scored."""

    best: Candidate
    best_val_accuracy: float
    finalists: list[tuple[Candidate, float]]
    front: list[Candidate]
    seen: list[Candidate]
    predictor: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "best": {**self.best.to_dict(), "val_accuracy": self.best_val_accuracy},
            "finalists": [{**c.to_dict(), "val_accuracy": acc} for c, acc in self.finalists],
            "front": [c.to_dict() for c in self.front],
            "candidates_scored": len(self.seen),
            "accuracy_predictor": self.predictor,
        }


def sample_archs(supernet: OFASupernet, count: int, seed: int) -> list[Arch]:
    """``count`` distinct random architectures (the largest and smallest first)."""
    space, rng = supernet.space, random.Random(seed)
    archs = {space.largest(): None, space.smallest(): None}
    for _ in range(count * 20):
        if len(archs) >= count:
            break
        archs[space.sample(rng)] = None
    return list(archs)[:count]


def fit_latency_model(
    supernet: OFASupernet, samples: int, seed: int, timing: TimingConfig | None = None
) -> tuple[LatencyPredictor, dict[str, float]]:
    """Time the lookup table, measure ``samples`` sub-networks, fit the correction."""
    logger.info("latency: timing the lookup table in ONNX Runtime")
    table = LatencyTable.build(supernet, timing)
    archs = sample_archs(supernet, samples, seed + 1)
    logger.info(f"latency: measuring {len(archs)} sub-networks")
    measured = measure_subnet_latency(supernet, archs, timing)
    predictor = LatencyPredictor(table)
    lut_only = [predictor.lut_sum(supernet, a) for a in archs]
    predictor.fit(supernet, archs, measured)
    fitted = [predictor.predict(supernet, a) for a in archs]
    return predictor, {"fit_mape": mape(fitted, measured), "lut_sum_mape": mape(lut_only, measured)}


def measure_subnet_latency(
    supernet: OFASupernet, archs: list[Arch], timing: TimingConfig | None = None
) -> list[float]:
    """Measured ONNX Runtime latency (ms) of each extracted sub-network."""
    models = [extract_subnet(supernet, a) for a in archs]
    return measure_latency(models, (1, supernet.in_channels, *supernet.input_size), timing)


def fit_predictor(
    supernet: OFASupernet, evaluator: Evaluator, samples: int, seed: int
) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Measure ``samples`` sub-networks with ``evaluator`` and fit the accuracy MLP."""
    archs = sample_archs(supernet, samples, seed)
    logger.info(f"accuracy: measuring {len(archs)} sub-networks")
    accuracies = evaluator(archs)
    predictor = fit_accuracy_predictor(supernet.space, archs, accuracies, seed=seed)
    stats = {
        "samples": len(archs),
        "train_rmse": rmse(predictor.predict(archs), accuracies),
        "measured_min": min(accuracies),
        "measured_max": max(accuracies),
    }
    return predictor, stats


def run_search(
    supernet: OFASupernet,
    task: TensorTask,
    constraints: Constraints,
    latency: LatencyPredictor,
    evaluator: Evaluator,
    config: SearchConfig | None = None,
    predictor: tuple[AccuracyPredictor, dict[str, Any]] | None = None,
) -> SearchResult:
    """Search for the most accurate sub-network that meets ``constraints``.

    ``predictor`` (an accuracy predictor and its statistics from :func:`fit_predictor`) is
    fitted here with ``evaluator`` unless given, e.g. to share it between several budgets.
    """
    config = config or SearchConfig()
    fitted = predictor or fit_predictor(supernet, evaluator, config.predictor_samples, config.seed)
    objective = Objective(supernet, fitted[0], latency, CostTable(supernet))
    logger.info(f"search: {config.strategy}")
    candidates = _propose(supernet, task, objective, constraints, latency, config)
    finalists = [c for c in candidates if c.meets(constraints)][: config.top_k]
    if not finalists:
        raise UserError(f"the {config.strategy} search found no sub-network within the budget")
    logger.info(f"search: measuring {len(finalists)} finalists")
    scores = evaluator([c.arch for c in finalists])
    ranked = sorted(zip(finalists, scores, strict=True), key=lambda pair: -pair[1])
    feasible = [c for c in objective.seen if c.meets(constraints)]
    return SearchResult(
        ranked[0][0], ranked[0][1], ranked, pareto_front(feasible), objective.seen, fitted[1]
    )


def _propose(
    supernet: OFASupernet,
    task: TensorTask,
    objective: Objective,
    constraints: Constraints,
    latency: LatencyPredictor,
    config: SearchConfig,
) -> list[Candidate]:
    """Candidates of the chosen strategy, best predicted accuracy first."""
    rng = random.Random(config.seed)
    if config.strategy == "random":
        return random_search(objective, constraints, config.random_samples, rng)
    if config.strategy == "evolution":
        return evolutionary_search(objective, constraints, config.evolution, rng)
    if config.strategy == "pareto":
        front = pareto_search(objective, constraints, config.evolution, rng)
        return sorted(front, key=lambda c: -c.accuracy)
    derived = [
        objective(
            proxyless_search(
                supernet, task, res, constraints, latency, objective.costs, config.proxyless
            )
        )
        for res in supernet.space.resolutions
    ]
    return sorted(derived, key=lambda c: -c.accuracy)
