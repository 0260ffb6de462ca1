"""ProxylessNAS-style search: binary gates give architecture gradients, and the expected
latency term moves the derived architecture under a tight budget."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mobiledl.automl.nas.efficiency import CostTable, LatencyPredictor, LatencyTable, all_unit_keys
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.proxyless import (
    ProxylessConfig,
    ProxylessSearch,
    expected_cost,
    proxyless_search,
)
from mobiledl.automl.nas.search import Constraints


def _latency(supernet: OFASupernet) -> LatencyPredictor:
    """A table where bigger kernels, expand ratios and resolutions cost more."""
    entries = {}
    for key in all_unit_keys(supernet):
        res = key[-1][0]
        cost = 0.001 * res if key[0] != "block" else 0.002 * key[3] * key[4] * res / 8
        entries[key] = cost
    return LatencyPredictor(LatencyTable(entries))


def test_binary_gates_give_architecture_gradients(supernet: OFASupernet, small_task):
    search = ProxylessSearch(supernet, (8, 8))
    generator = torch.Generator().manual_seed(0)
    logits = search(small_task.x_val[:32], generator)
    F.cross_entropy(logits, small_task.y_val[:32]).backward()
    active = [g for g in search._gates if g.gate.grad is not None]
    assert active and all(int(g.gate.sum()) == 1 for g in active)
    search.gate_gradients()
    assert search.op_alpha.grad.abs().sum() > 0 and search.depth_alpha.grad.abs().sum() > 0
    assert all(p.grad is None for p in search.supernet.parameters())


def test_expected_latency_is_the_mean_of_sampled_architectures(supernet: OFASupernet):
    latency = _latency(supernet)
    search = ProxylessSearch(supernet, (8, 8))
    with torch.no_grad():
        search.op_alpha.normal_(generator=torch.Generator().manual_seed(0))
    expected = expected_cost(search, latency.table.entries, tuple(latency.coef)).detach()
    probs = F.softmax(search.op_alpha, 1).detach()
    depth_probs = F.softmax(search.depth_alpha, 1).detach()
    generator, total, draws = torch.Generator().manual_seed(1), 0.0, 1500
    space = supernet.space
    for _ in range(draws):
        ops = [search.ops[int(torch.multinomial(p, 1, generator=generator))] for p in probs]
        depths = [
            space.depths[int(torch.multinomial(p, 1, generator=generator))] for p in depth_probs
        ]
        arch = space.make([k for k, _ in ops], [e for _, e in ops], depths, (8, 8))
        total += latency.predict(supernet, arch)
    assert abs(total / draws - float(expected)) < 0.03 * float(expected)


def test_tight_budget_gives_a_faster_architecture(supernet: OFASupernet, small_task):
    latency, costs = _latency(supernet), CostTable(supernet)
    config = ProxylessConfig(steps=15, batch_size=16, lr=0.3, cost_weight=5.0)
    smallest = latency.predict(supernet, supernet.space.smallest())
    loose = proxyless_search(
        supernet, small_task, (8, 8), Constraints(latency_ms=10.0), latency, costs, config
    )
    tight = proxyless_search(
        supernet, small_task, (8, 8), Constraints(latency_ms=smallest), latency, costs, config
    )
    assert latency.predict(supernet, tight) < latency.predict(supernet, loose)
