"""Mapping engine kernels to modules: weights, exporter scopes, joins; rows and totals."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from mobiledl.profile.engine_profile import (
    EngineProfile,
    KernelTime,
    ModuleIndex,
    NodeOrigin,
    attribute,
)


class Residual(nn.Module):
    """``x + body(x)``: the add is the block's, not its ``nn.Sequential`` body's."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), Residual(), Residual())


def test_scope_of_a_numbered_child_repeats_its_parents_name() -> None:
    index = ModuleIndex(_net())
    assert index.resolve(NodeOrigin(scope=("1", "body", "body.2"))) == "1.body.2"
    assert index.resolve(NodeOrigin(scope=())) == ""  # the model's own forward
    names_only = ModuleIndex()
    scope = ("features", "features.1", "conv1", "conv")
    assert names_only.resolve(NodeOrigin(scope=scope)) == "features.1.conv1.conv"


def test_scope_must_name_a_module_of_the_model() -> None:
    index = ModuleIndex(_net())
    assert index.resolve(NodeOrigin(scope=("conv_1",))) is None  # a torch.fx graph's flat name
    assert index.resolve(NodeOrigin(scope=("1", "body_1"))) == "1.body"  # a repeated call


def test_weights_name_their_module_before_the_scope() -> None:
    index = ModuleIndex(_net())
    origin = NodeOrigin(scope=("2",), weights=("t7", "1.body.0.weight_quantized", "1.body.0.bias"))
    assert index.resolve(origin) == "1.body.0"
    names_only = ModuleIndex()
    assert names_only.resolve(NodeOrigin(weights=("onnx::Conv_9", "head.fc.weight_q"))) == "head.fc"
    assert names_only.resolve(NodeOrigin(weights=("onnx::Conv_9",))) is None


def test_a_join_belongs_to_the_module_around_its_region_not_a_container() -> None:
    region = (NodeOrigin(weights=("2.body.0.weight",)), NodeOrigin(weights=("2.body.2.weight",)))
    assert ModuleIndex(_net()).resolve(NodeOrigin(region=region)) == "2"
    assert ModuleIndex().resolve(NodeOrigin(region=region)) == "2.body"  # no classes to check
    assert ModuleIndex(_net()).resolve(NodeOrigin(region=(NodeOrigin(),))) is None


def test_fx_graph_modules_keep_their_layers_classes() -> None:
    traced = fx.symbolic_trace(_net())
    assert type(traced.get_submodule("2")) is not Residual  # fx rebuilt it as a bare Module
    region = (NodeOrigin(weights=("2.body.0.weight",)), NodeOrigin(weights=("2.body.2.weight",)))
    assert ModuleIndex(traced).resolve(NodeOrigin(region=region)) == "2"


def _kernel(name: str, op: str, times: tuple[float, ...], origin: NodeOrigin | None) -> KernelTime:
    return KernelTime(name, op, times, macs=100, bytes=10, origin=origin)


def test_rows_group_kernels_and_keep_unmapped_time() -> None:
    kernels = [
        _kernel("a", "Conv+Relu", (1.0, 3.0, 2.0), NodeOrigin(weights=("0.weight",))),
        _kernel("b", "Add", (0.5, 0.5, 0.5), NodeOrigin(scope=("0",))),
        _kernel("c", "Transpose", (0.2, 0.2, 0.2), None),
        _kernel("d", "Transpose", (0.1, 0.1, 0.1), None),
        _kernel("e", "Flatten", (0.1, 0.1, 0.1), NodeOrigin(scope=())),
    ]
    rows = {row.name: row for row in attribute(kernels, ModuleIndex(_net()))}
    assert list(rows) == ["0", "(unmapped: Transpose)", "(model)"]
    assert rows["0"].time_ms == 2.5  # the median of the per-run sums 1.5, 3.5, 2.5
    assert rows["0"].ops == ["Conv+Relu", "Add"] and rows["0"].kernels == ["a", "b"]
    assert rows["0"].macs_per_s == pytest.approx(200 / 2.5e-3)
    assert rows["(unmapped: Transpose)"].time_ms == pytest.approx(0.3)
    assert rows["(unmapped: Transpose)"].kind == "unmapped" and rows["(model)"].kind == "model"
    assert sum(row.share for row in rows.values()) == pytest.approx(1.0)


def test_profile_totals_and_table() -> None:
    kernels = [
        _kernel("a", "Conv", (0.9,), NodeOrigin(weights=("0.weight",))),
        _kernel("t", "Transpose", (0.1,), None),
    ]
    profile = EngineProfile(
        name="net",
        engine="onnxruntime",
        batch_size=1,
        threads=1,
        runs=1,
        layers=attribute(kernels, ModuleIndex(_net())),
        engine_run_ms=1.25,
        latency_ms_median=1.1,
        latency_ms_p90=1.2,
    )
    totals = profile.totals()
    assert totals["layers_ms"] == pytest.approx(1.0) and totals["coverage"] == pytest.approx(0.9)
    assert totals["layers_over_engine_run"] == pytest.approx(0.8)
    row = profile.measurement().to_dict()
    assert row["latency_ms_median"] == 1.1 and len(row["extra"]["layers"]) == 2
    table = profile.table(top=1)
    assert "1 more rows" in table and "(unmapped" not in table and "90.0%" in table
