"""The SRAM planner: lifetimes, arena placement, in-place depthwise, order search; and the
arena executor that proves a plan by running it in one real byte buffer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mobiledl.deploy.mcu.arena import run_planned
from mobiledl.deploy.mcu.graph import read_graph
from mobiledl.deploy.mcu.planner import candidate_orders, plan_memory
from mobiledl.deploy.mcu.reference import quantize_input, run
from tests.deploy.mcu.conftest import random_images

MODELS = ["mcunet", "mobilenet_v2", "resnet8", "lenet5"]


def _disjoint(plan) -> bool:
    for a in plan.slots:
        for b in plan.slots:
            if a is b or not a.overlaps_in_time(b):
                continue
            if a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                return False
    return True


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_arena_run_is_identical_to_the_reference(int8_onnx, name: str, in_place: bool) -> None:
    graph = read_graph(int8_onnx(name))
    plan = plan_memory(graph, in_place_depthwise=in_place)
    assert _disjoint(plan)
    assert plan.lower_bound_bytes <= plan.arena_bytes
    x = quantize_input(graph, random_images(graph, 3))
    assert np.array_equal(run_planned(plan, x), run(graph, x))


def test_in_place_depthwise_shares_the_input_slot(int8_onnx) -> None:
    graph = read_graph(int8_onnx("mobilenet_v2"))
    plain, in_place = plan_memory(graph, False), plan_memory(graph, True)
    assert in_place.arena_bytes < plain.arena_bytes
    assert in_place.in_place and not plain.in_place
    for op_index in in_place.in_place:
        op = graph.ops[op_index]
        assert op.kind == "depthwise"
        assert in_place.offset(op.output) == in_place.offset(op.inputs[0])
        temp = in_place.temporary(op_index)
        assert temp.size >= graph.tensors[op.output].shape[2] * graph.tensors[op.output].shape[3]


def test_a_corrupt_plan_changes_the_output(int8_onnx) -> None:
    """Put a block's main-path output on the slot of its residual input (still live): the
    arena run no longer matches the reference, so the equality tests above have teeth."""
    graph = read_graph(int8_onnx("mcunet"))
    plan = plan_memory(graph, in_place_depthwise=False)
    add = next(op for op in graph.ops if op.kind == "add")
    main, shortcut = (next(s for s in plan.slots if n in s.tensors) for n in add.inputs)
    assert shortcut.start < main.start <= shortcut.end  # the residual is live meanwhile
    corrupt = dataclasses.replace(plan, slots=[dataclasses.replace(s) for s in plan.slots])
    moved = next(s for s in corrupt.slots if s.name == main.name)
    moved.offset = shortcut.offset
    x = quantize_input(graph, random_images(graph, 2))
    assert not np.array_equal(run_planned(corrupt, x), run(graph, x))


def test_order_search_over_branches(int8_onnx) -> None:
    """ResNet-8's downsampling blocks run a shortcut conv beside the main path: several
    topological orders, the plan keeps the one with the smallest live peak."""
    graph = read_graph(int8_onnx("resnet8"))
    orders = candidate_orders(graph)
    assert len(orders) > 2
    best = plan_memory(graph)
    fixed = plan_memory(graph, search_order=False)
    assert best.lower_bound_bytes <= fixed.lower_bound_bytes
    x = quantize_input(graph, random_images(graph, 2))
    assert np.array_equal(run_planned(best, x), run(graph, x))


def test_mobilenet_v2_035_at_144(mobilenet_v2_144) -> None:
    """The issue's reference points: 303.8 kB layer by layer, 283.5 kB in place (kB = 1024 B).
    Both are the bottleneck of block 2: its 48-channel expansion at 72x72 beside the 36x36
    depthwise output (layer by layer), or beside the 8-channel block input (in place)."""
    graph = read_graph(mobilenet_v2_144)
    expansion, block_input, strided = 48 * 72 * 72, 8 * 72 * 72, 48 * 36 * 36
    assert plan_memory(graph, in_place_depthwise=False).arena_bytes == expansion + strided
    plan = plan_memory(graph, in_place_depthwise=True)
    assert plan.arena_bytes == expansion + block_input
    assert plan.peak_step.layer == "features.2.body.expand.conv"
