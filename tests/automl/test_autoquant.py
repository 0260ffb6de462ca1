"""HAWQ's Hessian traces against the exact Hessian, the exact knapsack against brute force,
and autoquant end to end (budget respected, policy applied, unreachable budgets refused)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mobiledl.automl.compress import (
    allocate_bits,
    autoquant,
    choose_options,
    hawq_costs,
    hessian_traces,
)
from mobiledl.compress.quantize.mixed import InputQuantized, model_size_bytes
from mobiledl.data import Task
from mobiledl.errors import UserError
from tests.blobs import blobs_task, trained_lenet5

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def task() -> Task:
    return blobs_task()


@pytest.fixture(scope="module")
def trained(task: Task) -> nn.Module:
    return trained_lenet5(task)


def _exact_trace(model: nn.Module, task: Task, name: str, samples: int) -> float:
    layer = model.get_submodule(name)
    weight = layer.weight.detach().clone()
    x, y = task.x_train[:samples], task.y_train[:samples]

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        params = {f"{name}.weight": w}
        return task.loss(torch.func.functional_call(model, params, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss_of, weight)
    return float(hessian.reshape(weight.numel(), weight.numel()).diagonal().sum())


def test_hutchinson_traces_match_the_exact_hessian(trained: nn.Module, task: Task) -> None:
    model = trained.eval()
    per_layer = hessian_traces(model, task, samples=64, probes=200, seed=1)
    joint = hessian_traces(model, task, samples=64, probes=200, seed=1, joint=True)
    for name in ("features.0", "classifier.2"):
        exact = _exact_trace(model, task, name, 64)
        for traces in (per_layer, joint):  # both unbiased
            assert abs(traces.trace[name] - exact) <= 4 * traces.stderr[name] + 1e-6, name
        assert per_layer.stderr[name] < 0.1 * abs(exact), name
    assert per_layer.stderr["features.0"] < joint.stderr["features.0"]


def test_hawq_costs_fall_with_more_bits(trained: nn.Module, task: Task) -> None:
    traces = hessian_traces(trained, task, samples=64, probes=8)
    for name, costs in hawq_costs(trained, traces, [2, 4, 8]).items():
        assert costs[0] >= costs[1] >= costs[2] >= 0.0, name


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.floats(-5, 5), st.integers(1, 40)), min_size=1, max_size=3),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 120),
)
def test_knapsack_is_optimal_against_brute_force(items, capacity) -> None:
    costs = [[cost for cost, _ in item] for item in items]
    sizes = [[size for _, size in item] for item in items]
    feasible = [
        combo
        for combo in itertools.product(*(range(len(item)) for item in items))
        if sum(sizes[i][k] for i, k in enumerate(combo)) <= capacity
    ]
    if not feasible:
        with pytest.raises(UserError, match="no choice fits"):
            choose_options(costs, sizes, capacity)
        return
    chosen = choose_options(costs, sizes, capacity)
    assert sum(sizes[i][k] for i, k in enumerate(chosen)) <= capacity
    best = min(sum(costs[i][k] for i, k in enumerate(combo)) for combo in feasible)
    assert sum(costs[i][k] for i, k in enumerate(chosen)) == pytest.approx(best, abs=1e-9)


def test_coarse_units_still_respect_the_budget() -> None:
    sizes = [[1000, 3000, 7001]] * 3
    chosen = choose_options([[3.0, 1.0, 0.0]] * 3, sizes, 15_000, resolution=7)
    assert sum(sizes[i][k] for i, k in enumerate(chosen)) <= 15_000


def test_an_unreachable_budget_names_the_smallest_size() -> None:
    with pytest.raises(UserError, match=r"below the smallest reachable 1\.1 kB"):
        allocate_bits({"a": [1.0, 0.0]}, [2, 8], {"a": 1024}, {"a": 8}, 800, 1000)


def test_autoquant_fits_the_budget_and_spends_it(trained: nn.Module, task: Task) -> None:
    names = _layers(trained)
    uniform3, uniform4 = (model_size_bytes(trained, dict.fromkeys(names, b)) for b in (3, 4))
    budget = (uniform3 + uniform4) // 2
    result = autoquant(trained, task, budget, probes=8, samples=64)
    assert result.size_bytes <= budget == result.budget_bytes
    assert set(result.policy) == set(names)

    def cost(policy: dict[str, int]) -> float:
        return sum(result.costs[n][result.bits.index(b)] for n, b in policy.items())

    assert cost(result.policy) < cost(dict.fromkeys(names, 3))  # the spare bytes were spent
    quantized = result.model.get_submodule("features.0")
    assert isinstance(quantized, InputQuantized)  # act_bits=8 wraps the inputs
    generous = autoquant(trained, task, 10**7, search="measured")
    assert set(generous.policy.values()) == {8}


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def test_cli_writes_the_policy_and_refuses_an_unreachable_budget(tmp_path, capsys) -> None:
    import json

    from mobiledl.cli import main

    model = tmp_path / "m.pt"
    assert main(["train", "--model", "lenet5", "--task", "digits", "--epochs", "1",
                 "--out", str(model)]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "q.pt"
    argv = ["autoquant", str(model), "--task", "digits", "--size-kb", "40", "--probes", "4",
            "--hessian-samples", "64", "--no-latency", "--out", str(out)]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["extra"]["autoquant"]
    assert report["size_bytes"] <= 40 * 1024 == report["budget_bytes"]
    assert set(report["policy"].values()) <= {2, 3, 4, 5, 6, 8} and out.is_file()
    assert main(["eval", str(out), "--task", "digits"]) == 0
    capsys.readouterr()
    assert main([*argv[:5], "5", *argv[6:]]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "below the smallest reachable 17.2 kB" in error
