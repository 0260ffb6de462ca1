"""Replaying forward, backward and the optimizer step of a traced pass as allocations and
frees, and the peak of the live bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from mobiledl.errors import UserError
from mobiledl.train.ondevice.memory.layout import (
    OPTIMIZER_STATES,
    OPTIMIZER_WORKSPACE,
    segment_bounds,
)
from mobiledl.train.ondevice.memory.results import LayerTrainingMemory, TrainingMemoryProfile
from mobiledl.train.ondevice.memory.rules import NOT_DIFFERENTIABLE, LeanRules, OpMemory
from mobiledl.train.ondevice.memory.trace import TensorArg, TracedOp, storage_key, storage_nbytes

if TYPE_CHECKING:
    from mobiledl.train.ondevice.memory import TrainingTrace


class StepSimulation:
    """Replays forward, backward and the optimizer step as allocations and frees.

    Activations are freed after their last forward reader unless ``held``: kept for backward
    (released after the backward of the earliest op that saved them) or a checkpointed stage's
    input. Activations saved inside a checkpointed stage are ``rekept``: re-allocated when
    backward reaches the stage, released like saved ones.
    """

    def __init__(self, trace: TrainingTrace, optimizer: str, segments: int | None) -> None:
        self.trace = trace
        self.acts = trace.acts
        self.ops = trace.ops
        self.optimizer = optimizer
        self.segments = segments or None
        self.unknown: set[str] = set()
        self.requires_grad = [False] * len(self.acts)
        self.in_graph = [False] * len(self.ops)
        self.memory: list[OpMemory] = []
        self.stage_of = self._stages()
        self.held: dict[int, int] = {}
        self.rekept: dict[int, int] = {}
        self.ledger = Ledger()

    # ---- trainability and rules

    def trainable(self, arg: Any) -> bool:
        return isinstance(arg, TensorArg) and arg.kind == "param" and arg.param.requires_grad

    def needs_grad(self, arg: Any) -> bool:
        """A tensor argument whose gradient backward must compute."""
        if not isinstance(arg, TensorArg):
            return False
        return self.trainable(arg) or (arg.kind == "act" and self.requires_grad[arg.act])

    def _propagate(self) -> None:
        rules = LeanRules(self)
        for op in self.ops:
            graph = any(self.needs_grad(a) for a in op.tensor_args) or any(
                p.requires_grad for p in self._module_params(op)
            )
            self.in_graph[op.index] = graph and op.name not in NOT_DIFFERENTIABLE
            for act in op.new_outputs:
                self.requires_grad[act] = self.in_graph[op.index] and self.acts[act].is_float
            if self.in_graph[op.index]:
                self.memory.append(rules(op))
            else:  # nothing to keep, but the forward pass still needs its workspace
                self.memory.append(OpMemory(forward_workspace=rules(op).forward_workspace))

    @staticmethod
    def _module_params(op: TracedOp) -> list[nn.Parameter]:
        return list(op.module.parameters()) if op.module is not None else []

    def _stages(self) -> list[int | None]:
        if not self.segments:
            return [None] * len(self.ops)
        features = getattr(self.trace.model, "features", None)
        if not isinstance(features, nn.Sequential):
            raise UserError("gradient checkpointing needs model.features to be an nn.Sequential")
        stage = {}
        for number, (start, stop) in enumerate(segment_bounds(len(features), self.segments)):
            stage.update({i: number for i in range(start, stop)})
        return [None if op.feature is None else stage[op.feature] for op in self.ops]

    def _lifetimes(self) -> None:
        """Fill ``held`` and ``rekept``: activation -> op whose backward releases it."""
        for op in self.ops:
            stage = self.stage_of[op.index]
            for act in self.memory[op.index].saved:
                if self.acts[act].resident:
                    continue
                inside = stage is not None and self._stage_of_act(act) == stage
                target = self.rekept if inside else self.held
                target[act] = min(target.get(act, op.index), op.index)
        for feature, act in self.trace.feature_inputs.items():
            first = self._first_graph_op(feature)
            if first is not None and not self.acts[act].resident:
                self.held[act] = min(self.held.get(act, first), first)

    def _stage_of_act(self, act: int) -> int | None:
        birth = self.acts[act].birth
        return self.stage_of[birth] if birth >= 0 else None

    def _first_graph_op(self, feature: int) -> int | None:
        """For the first feature of a checkpointed stage: the stage's first op in the graph."""
        ops = [op.index for op in self.ops if op.feature == feature]
        if not ops or self.stage_of[ops[0]] is None:
            return None
        stage = self.stage_of[ops[0]]
        if any(self.stage_of[j] == stage for j in range(ops[0])):
            return None  # not the stage's first feature
        members = [i for i in range(len(self.ops)) if self.stage_of[i] == stage]
        return next((i for i in members if self.in_graph[i]), None)

    # ---- timeline

    def run(self) -> TrainingMemoryProfile:
        self._propagate()
        self._lifetimes()
        trainable = [p for p in self._used_params() if p.requires_grad]
        weights = weight_bytes(self.trace.model)
        optimizer_bytes = OPTIMIZER_STATES[self.optimizer] * sum(
            storage_nbytes(p) for p in trainable
        )
        self.ledger.alloc(("weights",), weights, "weights")
        self.ledger.alloc(("optimizer",), optimizer_bytes, "optimizer state")
        self.ledger.alloc(("input",), self.trace.input_bytes, "input batch")
        self._forward()
        self._backward()
        largest = max((storage_nbytes(p) for p in trainable), default=0)
        self.ledger.point(OPTIMIZER_WORKSPACE[self.optimizer] * largest, "step", "")
        return self._profile(trainable, weights, optimizer_bytes)

    def _forward(self) -> None:
        frees: dict[int, list[int]] = {}
        for number, act in enumerate(self.acts):
            if not act.resident and number not in self.held:
                frees.setdefault(act.last_use, []).append(number)
        for op in self.ops:
            memory = self.memory[op.index]
            for act in op.new_outputs:
                self.ledger.alloc(("act", act), self.acts[act].nbytes, "activations")
            self.ledger.alloc(("extra", op.index), memory.extra_saved, "masks and statistics")
            self.ledger.point(memory.forward_workspace, "forward", op.owner)
            if self.stage_of[op.index] is not None:  # checkpointed: nothing kept
                self.ledger.free(("extra", op.index))
            for act in frees.get(op.index, []):
                self.ledger.free(("act", act))

    def _backward(self) -> None:
        recomputed: set[int] = set()
        for op in reversed(self.ops):
            if not self.in_graph[op.index]:
                continue
            stage = self.stage_of[op.index]
            if stage is not None and stage not in recomputed:
                recomputed.add(stage)
                self._recompute(stage)
            accumulate = 0  # a second gradient for an activation exists until it is added in
            for act in {a.act for a in op.tensor_args if a.kind == "act"}:
                if self.requires_grad[act] and ("grad", act) in self.ledger.alive:
                    accumulate += self.acts[act].nbytes
                elif self.requires_grad[act]:
                    nbytes = self.acts[act].nbytes
                    self.ledger.alloc(("grad", act), nbytes, "activation gradients")
            params = [a.param for a in op.tensor_args if a.kind == "param"]
            for param in params + self._module_params(op):
                if param.requires_grad:
                    self.ledger.alloc(
                        ("pgrad", id(param)), storage_nbytes(param), "weight gradients"
                    )
            workspace = self.memory[op.index].backward_workspace + accumulate
            self.ledger.point(workspace, "backward", op.owner)
            self._release(op)

    def _release(self, op: TracedOp) -> None:
        """After an op's backward: its outputs' gradients and what it kept for backward."""
        for act in op.new_outputs:
            self.ledger.free(("grad", act))
        for act, index in self.held.items():
            if index == op.index:
                self.ledger.free(("act", act))
        for act, index in self.rekept.items():
            if index == op.index:
                self.ledger.free(("re", act))
        self.ledger.free(("extra", op.index))

    def _recompute(self, stage: int) -> None:
        """Re-run the stage's forward, keeping what its ops save (non-reentrant checkpoint)."""
        members = [op for op in self.ops if self.stage_of[op.index] == stage]
        last_use: dict[int, int] = {}
        for op in members:
            for act in op.new_outputs:
                last_use[act] = op.index
            for arg in op.tensor_args:
                if arg.kind == "act" and arg.act in last_use:
                    last_use[arg.act] = op.index
        for op in members:
            memory = self.memory[op.index]
            for act in op.new_outputs:
                self.ledger.alloc(("re", act), self.acts[act].nbytes, "activations")
            self.ledger.alloc(("extra", op.index), memory.extra_saved, "masks and statistics")
            self.ledger.point(memory.forward_workspace, "recompute", op.owner)
            for act, used in last_use.items():
                if used == op.index and act not in self.rekept:
                    self.ledger.free(("re", act))

    # ---- report

    def _used_params(self) -> list[nn.Parameter]:
        """Every parameter the forward pass used, once, in order of first use."""
        params: dict[int, nn.Parameter] = {}
        for op in self.ops:
            for param in [a.param for a in op.tensor_args if a.kind == "param"]:
                params.setdefault(id(param), param)
            for param in self._module_params(op):
                params.setdefault(id(param), param)
        return list(params.values())

    def _profile(
        self, trainable: list[nn.Parameter], weights: int, optimizer_bytes: int
    ) -> TrainingMemoryProfile:
        kept = {**self.rekept, **self.held}
        saved = sum(self.acts[a].nbytes for a in kept) + sum(m.extra_saved for m in self.memory)
        return TrainingMemoryProfile(
            layers=self._layers(),
            params=sum(p.numel() for p in self.trace.model.parameters()),
            trainable_params=sum(p.numel() for p in trainable),
            weight_bytes=weights,
            gradient_bytes=sum(storage_nbytes(p) for p in trainable),
            optimizer_bytes=optimizer_bytes,
            input_bytes=self.trace.input_bytes,
            saved_activation_bytes=saved,
            peak_bytes=self.ledger.peak[0],
            peak_phase=self.ledger.peak[1],
            peak_layer=self.ledger.peak[2],
            peak_breakdown=dict(self.ledger.breakdown),
            optimizer=self.optimizer,
            checkpoint_segments=self.segments,
            batch_size=self.trace.batch_size,
            unknown_ops=sorted(self.unknown),
        )

    def _layers(self) -> list[LayerTrainingMemory]:
        """One row per module that ran ops: its parameters and what its ops keep."""
        first_saver: dict[int, int] = {}
        for op in self.ops:
            for act in self.memory[op.index].saved:
                if not self.acts[act].resident:
                    first_saver.setdefault(act, op.index)
        rows: dict[str, LayerTrainingMemory] = {}
        counted: set[int] = set()
        for op in self.ops:
            row = rows.setdefault(op.owner, self._row(op.owner))
            memory = self.memory[op.index]
            row.saved_bytes += memory.extra_saved + sum(
                self.acts[a].nbytes for a in set(memory.saved) if first_saver.get(a) == op.index
            )
            params = [a.param for a in op.tensor_args if a.kind == "param"]
            for param in params + self._module_params(op):
                if id(param) not in counted:
                    counted.add(id(param))
                    self._add_param(row, param)
        return [row for row in rows.values() if row.params or row.saved_bytes]

    def _row(self, owner: str) -> LayerTrainingMemory:
        return LayerTrainingMemory(owner, self.trace.types.get(owner, "Model"), 0, 0, 0, 0, 0, 0)

    def _add_param(self, row: LayerTrainingMemory, param: nn.Parameter) -> None:
        row.params += param.numel()
        row.weight_bytes += storage_nbytes(param)
        if param.requires_grad:
            row.trainable_params += param.numel()
            row.gradient_bytes += storage_nbytes(param)
            row.optimizer_bytes += OPTIMIZER_STATES[self.optimizer] * storage_nbytes(param)


class Ledger:
    """Live allocations by key, their total, and the peak with its composition."""

    def __init__(self) -> None:
        self.alive: dict[tuple[Any, ...], tuple[int, str]] = {}
        self.total = 0
        self.peak = (0, "forward", "")
        self.breakdown: dict[str, int] = {}

    def alloc(self, key: tuple[Any, ...], nbytes: int, category: str) -> None:
        """Allocate ``nbytes`` under ``key`` (a no-op if ``key`` is already live)."""
        if nbytes and key not in self.alive:
            self.alive[key] = (nbytes, category)
            self.total += nbytes

    def free(self, key: tuple[Any, ...]) -> None:
        entry = self.alive.pop(key, None)
        if entry is not None:
            self.total -= entry[0]

    def point(self, workspace: int, phase: str, owner: str) -> None:
        """A moment of the step, with ``workspace`` extra bytes in use during it."""
        if self.total + workspace <= self.peak[0]:
            return
        self.peak = (self.total + workspace, phase, owner)
        self.breakdown = {"workspace": workspace} if workspace else {}
        for nbytes, category in self.alive.values():
            self.breakdown[category] = self.breakdown.get(category, 0) + nbytes


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer storage."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = storage_key(tensor)
        if key is not None and key not in seen:
            seen.add(key)
            total += storage_nbytes(tensor)
    return total
