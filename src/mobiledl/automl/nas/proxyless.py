"""ProxylessNAS-style differentiable search (Cai et al., "ProxylessNAS: Direct Neural
Architecture Search on Target Task and Hardware", ICLR 2019), run on the trained supernet.

Every block slot is a mixed operation over the ``(kernel, expand)`` choices and every stage
a mixed operation over its depths (the stage output after ``d`` blocks); architecture
parameters ``alpha`` give their probabilities ``p = softmax(alpha)``. Each step binarizes the
paths (Sec. 3.2): two candidates are sampled by ``p`` and renormalised, a binary gate ``g``
picks one, and the output is ``sum_j g_j o_j`` — only one path is active, yet ``dL/dg_j`` is
defined and gives ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)``. Latency enters as its
expectation under ``p`` computed from the lookup table (Sec. 3.3), which is differentiable in
``alpha``; the loss adds ``weight * relu(E[cost] / budget - 1)`` for the latency and MAC
budgets. The supernet's weights are frozen (they were trained for every sub-network by
progressive shrinking), so ``alpha`` learns from validation batches alone. The derived
architecture takes the most probable choice of every mixed operation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.automl.nas.efficiency import CostTable, LatencyPredictor
from mobiledl.automl.nas.elastic import OFASupernet, Resize
from mobiledl.automl.nas.evaluate import one_thread
from mobiledl.automl.nas.search import Constraints
from mobiledl.automl.nas.space import Arch, Resolution
from mobiledl.core.clone import clone_module
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError


@dataclass
class ProxylessConfig:
    """Steps and batch size of the search, Adam learning rate of ``alpha``, cost weight."""

    steps: int = 150
    batch_size: int = 64
    lr: float = 0.05
    cost_weight: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise UserError("proxyless search needs steps >= 1 and batch_size >= 1")


@dataclass
class _Gate:
    """One binarized mixed operation of a step: its alpha row, sampled paths and gate."""

    alpha: nn.Parameter
    row: int
    paths: Tensor
    probs: Tensor
    gate: Tensor


class ProxylessSearch(nn.Module):
    """Architecture parameters over a frozen copy of the supernet at one resolution."""

    def __init__(self, supernet: OFASupernet, resolution: Resolution) -> None:
        super().__init__()
        self.supernet = clone_module(supernet).requires_grad_(False).train()
        self.resolution = resolution
        space = supernet.space
        self.ops = list(itertools.product(space.kernel_sizes, space.expand_ratios))
        self.op_alpha = nn.Parameter(torch.zeros(space.num_slots, len(self.ops)))
        self.depth_alpha = nn.Parameter(torch.zeros(len(space.stages), len(space.depths)))
        self._gates: list[_Gate] = []

    def _binarize(self, alpha: nn.Parameter, row: int, generator: torch.Generator) -> _Gate:
        logits = alpha.detach()[row]
        probs = F.softmax(logits, dim=0)
        paths = torch.multinomial(probs, min(2, len(logits)), generator=generator)
        local = F.softmax(logits[paths], dim=0)
        chosen = torch.multinomial(local, 1, generator=generator)
        gate = F.one_hot(chosen[0], len(paths)).float().requires_grad_(True)
        record = _Gate(alpha, row, paths, local, gate)
        self._gates.append(record)
        return record

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        net, space = self.supernet, self.supernet.space
        self._gates = []
        if tuple(x.shape[-2:]) != self.resolution:
            x = Resize(self.resolution)(x)
        x = net.first(net.stem(x))
        for stage in range(len(space.stages)):
            depth = self._binarize(self.depth_alpha, stage, generator)
            wanted = [space.depths[int(i)] for i in depth.paths]
            outputs = {}
            for index in range(max(wanted)):
                x = self._mixed_block(stage * space.max_depth + index, x, generator)
                outputs[index + 1] = x
            x = sum(g * outputs[d] for g, d in zip(depth.gate, wanted, strict=True))
        x = F.adaptive_avg_pool2d(net.head(x), 1)
        return net.classifier(torch.flatten(x, 1))

    def _mixed_block(self, slot: int, x: Tensor, generator: torch.Generator) -> Tensor:
        gate = self._binarize(self.op_alpha, slot, generator)
        block = self.supernet.blocks[slot]
        outs = [block(x, *self.ops[int(i)]) for i in gate.paths]
        return sum(g * o for g, o in zip(gate.gate, outs, strict=True))

    def gate_gradients(self) -> None:
        """Accumulate ``dL/dalpha`` from the gates' gradients (ProxylessNAS Eq. 4)."""
        for record in self._gates:
            if record.gate.grad is None:
                continue
            q, dg = record.probs, record.gate.grad
            if record.alpha.grad is None:
                record.alpha.grad = torch.zeros_like(record.alpha)
            record.alpha.grad[record.row, record.paths] += q * (dg - (dg * q).sum())

    def expected_units(self) -> tuple[list[Tensor], Tensor]:
        """Per-slot probability of being used, and per-slot op probabilities."""
        space = self.supernet.space
        depth_p = F.softmax(self.depth_alpha, dim=1)
        used = []
        for stage in range(len(space.stages)):
            for index in range(space.max_depth):
                mask = torch.tensor([float(d > index) for d in space.depths])
                used.append((depth_p[stage] * mask).sum())
        return used, F.softmax(self.op_alpha, dim=1)

    def derive(self) -> Arch:
        """The most probable choice of every mixed operation."""
        space = self.supernet.space
        ops = [self.ops[int(i)] for i in self.op_alpha.argmax(dim=1)]
        depths = [space.depths[int(i)] for i in self.depth_alpha.argmax(dim=1)]
        return space.make([k for k, _ in ops], [e for _, e in ops], depths, self.resolution)


def expected_cost(
    search: ProxylessSearch, unit_cost: dict[tuple, float], coef: tuple[float, float, float]
) -> Tensor:
    """``a * E[sum of unit costs] + b * E[units] + c`` under the current probabilities."""
    space, res = search.supernet.space, search.resolution
    used, op_p = search.expected_units()
    total = torch.tensor(unit_cost[("stem", res)] + unit_cost[("head", res)])
    units = torch.tensor(2.0)
    for slot, p_used in enumerate(used):
        stage, index = divmod(slot, space.max_depth)
        costs = torch.tensor(
            [unit_cost[("block", stage, min(index, 1), k, e, res)] for k, e in search.ops]
        )
        total = total + p_used * (op_p[slot] * costs).sum()
        units = units + p_used
    return coef[0] * total + coef[1] * units + coef[2]


def proxyless_search(
    supernet: OFASupernet,
    task: TensorTask,
    resolution: Resolution,
    constraints: Constraints,
    latency: LatencyPredictor,
    costs: CostTable,
    config: ProxylessConfig | None = None,
) -> Arch:
    """Learn architecture parameters on validation batches; return the derived architecture."""
    config = config or ProxylessConfig()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    search = ProxylessSearch(supernet, resolution)
    budgets = _budgets(search, constraints, latency, costs)
    optimizer = torch.optim.Adam([search.op_alpha, search.depth_alpha], lr=config.lr)
    x_val, y_val = task.x_val, task.y_val
    with one_thread():
        for _ in range(config.steps):
            index = torch.randint(len(x_val), (config.batch_size,), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(search(x_val[index], generator), y_val[index])
            loss.backward()
            search.gate_gradients()
            penalty = torch.tensor(0.0)
            for table, coef, budget in budgets:
                cost = expected_cost(search, table, coef)
                penalty = penalty + F.relu(cost / budget - 1.0)
            if penalty.requires_grad:
                (config.cost_weight * penalty).backward()
            optimizer.step()
    return search.derive()


def _budgets(
    search: ProxylessSearch,
    constraints: Constraints,
    latency: LatencyPredictor,
    costs: CostTable,
) -> list[tuple[dict[tuple, float], tuple[float, float, float], float]]:
    """(unit cost table, linear correction, budget) for the latency and MAC budgets."""
    budgets = []
    if constraints.latency_ms is not None:
        a, b, c = latency.coef
        budgets.append((latency.table.entries, (a, b, c), constraints.latency_ms))
    if constraints.macs is not None:
        keys = [k for k in latency.table.entries if k[-1] == search.resolution]
        macs = {k: float(costs.unit_macs(k)) for k in keys}
        budgets.append((macs, (1.0, 0.0, 0.0), float(constraints.macs)))
    return budgets
