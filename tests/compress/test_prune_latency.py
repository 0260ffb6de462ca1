"""Latency-aware channel allocation: engine-measured slopes and the search that uses them."""

from __future__ import annotations

import pytest
import torch

from mobiledl.compress.prune.channel import (
    ChannelPlanner,
    channel_importance,
    plan_channels,
    prune_channels,
)
from mobiledl.compress.prune.graph import build_dependency_graph
from mobiledl.compress.prune.latency import LatencyProbe, segment_latency_slopes
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.profile import profile_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _planner(name: str = "resnet20", size: int = 16) -> tuple[torch.nn.Module, ChannelPlanner]:
    torch.manual_seed(0)
    model = create_model(name, 10, 1, size).eval()
    example = torch.randn(1, 1, size, size)
    graph = build_dependency_graph(model, example)
    importance = channel_importance(model, graph, "l1", None, 1)
    return model, ChannelPlanner(model, graph, importance, example, 8)


def test_search_cuts_where_the_time_is() -> None:
    _, planner = _planner()
    full = planner.full_counts()
    fast = max(range(len(full)), key=lambda i: full[i])  # one wide segment saves all the time
    slopes = [0.0] * len(full)
    slopes[fast] = 1.0
    latency_counts = planner.latency_search(0.5, slopes)
    uniform_counts = planner.search(0.5, "layer")
    assert latency_counts[fast] < uniform_counts[fast]
    ratio = planner.macs(latency_counts) / planner.total_macs
    assert ratio == pytest.approx(0.5, rel=0.02)


def test_slopes_are_measured_per_segment() -> None:
    model, planner = _planner("resnet8", 8)
    probe = LatencyProbe(repeats=3, clock="wall")
    slopes = segment_latency_slopes(model, planner, torch.randn(1, 1, 8, 8), probe)
    assert len(slopes) == len(planner.segments)
    assert all(s >= 0.0 for s in slopes)


def test_latency_scope_meets_the_mac_target_and_runs() -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 1, 8).eval()
    example = torch.randn(1, 1, 8, 8)
    probe = LatencyProbe(repeats=3, clock="wall")
    pruned = prune_channels(model, example, "l1", macs_ratio=0.5, scope="latency", latency=probe)
    ratio = profile_model(pruned, example).macs / profile_model(model, example).macs
    assert ratio == pytest.approx(0.5, abs=0.03)  # 8-channel steps of a tiny model
    assert pruned(example).shape == (1, 10)


def test_latency_scope_needs_a_mac_target() -> None:
    model = create_model("resnet8", 10, 1, 8).eval()
    with pytest.raises(UserError, match="macs_ratio"):
        plan_channels(model, torch.randn(1, 1, 8, 8), "l1", sparsity=0.5, scope="latency")


def test_probe_rejects_bad_settings() -> None:
    with pytest.raises(UserError, match="repeats"):
        LatencyProbe(repeats=1)
