"""Ray evaluation gives exactly the in-process results (skipped when Ray is not installed)."""

from __future__ import annotations

import random

import pytest
import torch

from mobiledl.automl.nas.efficiency import LatencyPredictor, LatencyTable, all_unit_keys
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.evaluate import EvalSpec, LocalEvaluator, RayEvaluator
from mobiledl.automl.nas.run import SearchConfig, run_search
from mobiledl.automl.nas.search import Constraints, EvolutionConfig

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_evaluator(space, small_task, randomize):
    torch.manual_seed(0)
    supernet = randomize(OFASupernet(space, 10, 1, (8, 8)))
    with RayEvaluator(supernet, small_task, EvalSpec(seed=0), num_cpus=2, chunk_size=3) as ev:
        yield supernet, ev


def test_ray_scores_equal_local_scores(ray_evaluator, small_task):
    supernet, remote = ray_evaluator
    rng = random.Random(0)
    archs = [supernet.space.sample(rng) for _ in range(7)]
    local = LocalEvaluator(supernet, small_task, EvalSpec(seed=0))(archs)
    assert remote(archs) == local
    assert len(set(local)) > 1


def test_ray_search_equals_in_process_search(ray_evaluator, small_task):
    supernet, remote = ray_evaluator
    table = LatencyTable({k: 0.01 for k in all_unit_keys(supernet)})
    latency = LatencyPredictor(table)
    config = SearchConfig(predictor_samples=8, evolution=EvolutionConfig(6, 2), top_k=3)
    budget = Constraints(macs=150_000)
    local_ev = LocalEvaluator(supernet, small_task, EvalSpec(seed=0))
    local = run_search(supernet, small_task, budget, latency, local_ev, config)
    on_ray = run_search(supernet, small_task, budget, latency, remote, config)
    assert on_ray.to_dict() == local.to_dict()
