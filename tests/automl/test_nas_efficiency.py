"""Efficiency models: unit tables reproduce the profiler, the latency table times every unit,
and the predictor's least squares recovers a known correction."""

from __future__ import annotations

import random

import pytest
import torch

from mobiledl.automl.nas.efficiency import (
    CostTable,
    LatencyPredictor,
    LatencyTable,
    TimingConfig,
    all_unit_keys,
    mape,
    units_of,
)
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.extract import extract_subnet
from mobiledl.errors import UserError
from mobiledl.profile import profile_model


def test_unit_costs_match_the_profiler(supernet: OFASupernet):
    costs, rng = CostTable(supernet), random.Random(0)
    for arch in [supernet.space.largest()] + [supernet.space.sample(rng) for _ in range(4)]:
        profile = profile_model(extract_subnet(supernet, arch), torch.zeros(1, 1, 8, 8))
        assert costs.macs(arch) == profile.macs
        assert costs.peak_memory_bytes(arch) == profile.peak_memory_bytes


def test_latency_table_times_every_unit(space):
    supernet = OFASupernet(space.restrict(resolutions=((8, 8),)), 10, 1, (8, 8))
    table = LatencyTable.build(supernet, TimingConfig(warmup=1, repeats=3))
    assert set(table.entries) == set(all_unit_keys(supernet))
    assert all(v > 0 for v in table.entries.values())
    assert LatencyTable.from_dict(table.to_dict()).entries == table.entries
    for arch in (supernet.space.smallest(), supernet.space.largest()):
        assert all(key in table.entries for key in units_of(supernet, arch))
    with pytest.raises(UserError, match="no entry"):
        table.lookup(("head", (6, 6)))


def test_predictor_recovers_a_linear_correction(supernet: OFASupernet):
    keys = all_unit_keys(supernet)
    table = LatencyTable({key: 0.01 * (i + 1) for i, key in enumerate(keys)})
    predictor, rng = LatencyPredictor(table), random.Random(1)
    archs = [supernet.space.sample(rng) for _ in range(20)]
    truth = [
        0.8 * predictor.lut_sum(supernet, a) - 0.003 * len(units_of(supernet, a)) + 0.02
        for a in archs
    ]
    predictor.fit(supernet, archs, truth)
    assert predictor.coef == pytest.approx([0.8, -0.003, 0.02], rel=1e-6, abs=1e-9)
    predicted = [predictor.predict(supernet, a) for a in archs]
    assert mape(predicted, truth) < 1e-6
    restored = LatencyPredictor.from_dict(predictor.to_dict())
    assert restored.predict(supernet, archs[0]) == pytest.approx(predicted[0])
    assert mape([1.1, 0.9], [1.0, 1.0]) == pytest.approx(10.0)
