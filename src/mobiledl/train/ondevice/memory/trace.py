"""Tracing one forward pass: every ATen op with its owner module and its tensors' roles."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from mobiledl.train.ondevice.memory.layout import FusedConv, LossFn, fusable_conv_bn, training_modes

if TYPE_CHECKING:
    from mobiledl.train.ondevice.memory import TrainingTrace


@dataclass
class Activation:
    """An activation: one storage produced during the forward pass (or the input batch)."""

    nbytes: int
    numel: int
    birth: int
    last_use: int
    is_float: bool
    resident: bool = False


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument of an op: an activation, a parameter, a buffer or a constant."""

    kind: str  # "act", "param", "buffer", "const"
    act: int = -1
    param: nn.Parameter | None = None
    numel: int = 0
    shape: tuple[int, ...] = ()


@dataclass
class TracedOp:
    index: int
    name: str
    owner: str
    feature: int | None
    args: Any
    tensor_args: list[TensorArg]
    outputs: list[int]
    new_outputs: list[int]
    module: nn.Module | None = None
    out_shape: tuple[int, ...] = ()
    fused: FusedConv | None = None


class ForwardTracer(TorchDispatchMode):
    """Records every ATen op of one forward pass with its owner module and tensor roles."""

    def __init__(self, trace: TrainingTrace) -> None:
        super().__init__()
        self.trace = trace
        self.stack: list[str] = []
        self.call_args: list[list[int | None]] = []
        self.atomic: list[tuple[str, nn.Module, Any]] = []
        self.by_storage: dict[tuple[str, int], int] = {}
        self.storages: list[StorageWeakRef] = []
        self.params: dict[tuple[str, int], nn.Parameter] = {}
        self.buffers: set[tuple[str, int]] = set()

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def run(self, x: Tensor, y: Tensor, loss_fn: LossFn) -> None:
        model = self.trace.model
        for param in model.parameters():
            self.params[storage_key(param)] = param
        self.buffers = {storage_key(b) for b in model.buffers() if storage_key(b) is not None}
        for tensor in (x, y):
            self._new_act(tensor, birth=-1, resident=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        try:
            with training_modes(model), self._hooks(), torch.no_grad(), self:
                loss_fn(model(x), y)
        finally:
            model.load_state_dict(state)
            torch.set_rng_state(rng)

    @contextlib.contextmanager
    def _hooks(self) -> Iterator[None]:
        handles = []
        features = getattr(self.trace.model, "features", None)
        for name, module in self.trace.model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(name, module)))
            handles.append(module.register_forward_hook(self._exit(name, module)))
        if isinstance(features, nn.Sequential):
            for index, child in enumerate(features):
                handles.append(child.register_forward_pre_hook(self._stage_input(index)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, name: str, module: nn.Module) -> Any:
        def hook(mod: nn.Module, args: Any) -> None:
            self.stack.append(name)
            inside_atomic = bool(self.atomic)  # its internals are not activations
            self.call_args.append(
                [] if inside_atomic else [self._act_of(t) for t in tensors_in(args)]
            )
            atomic = hasattr(module, "memory_for_training") or fusable_conv_bn(module)
            if atomic and not self.atomic:
                self.atomic.append((name, module, args))

        return hook

    def _exit(self, name: str, module: nn.Module) -> Any:
        def hook(mod: nn.Module, args: Any, output: Any) -> None:
            self.stack.pop()
            for act in self.call_args.pop():  # the caller holds its arguments until we return
                if act is not None:
                    held = self.trace.acts[act]
                    held.last_use = max(held.last_use, len(self.trace.ops) - 1)
            if self.atomic and self.atomic[-1][0] == name:
                self.atomic.pop()
                self._record(type(module).__name__, name, args, {}, output, module)

        return hook

    def _stage_input(self, index: int) -> Any:
        def hook(mod: nn.Module, args: Any) -> None:
            if args and isinstance(args[0], Tensor):
                act = self._act_of(args[0])
                if act is not None:
                    self.trace.feature_inputs[index] = act

        return hook

    def _act_of(self, tensor: Tensor) -> int | None:
        """The live activation stored where ``tensor`` is (a freed one's address may be reused)."""
        act = self.by_storage.get(storage_key(tensor))
        if act is None or self.storages[act].expired():
            return None
        return act

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.atomic:
            owner = self.stack[-1] if self.stack else ""
            self._record(func.overloadpacket.__name__, owner, args, kwargs, out, None)
        return out

    def _record(
        self, name: str, owner: str, args: Any, kwargs: Any, out: Any, module: nn.Module | None
    ) -> None:
        index = len(self.trace.ops)
        tensor_args: list[TensorArg] = []

        def as_arg(value: Any) -> Any:
            if not isinstance(value, Tensor):
                return value
            arg = self._arg(value, index)
            tensor_args.append(arg)
            return arg

        mapped, _ = tree_map(as_arg, (tuple(args), kwargs))
        outputs, new = [], []
        input_acts = {a.act for a in tensor_args if a.kind == "act"}
        for tensor in tensors_in(out):
            key = storage_key(tensor)
            if key is None or key in self.params or key in self.buffers:
                continue
            act = self._act_of(tensor)
            if act is None or act not in input_acts:
                act = self._new_act(tensor, birth=index)
                new.append(act)
            outputs.append(act)
        feature = feature_index(owner)
        op = TracedOp(index, name, owner, feature, mapped, tensor_args, outputs, new, module)
        op.fused = fusable_conv_bn(module) if module is not None else None
        first = tensors_in(out)
        op.out_shape = tuple(first[0].shape) if first else ()
        self.trace.ops.append(op)

    def _arg(self, tensor: Tensor, index: int) -> TensorArg:
        key = storage_key(tensor)
        shape = tuple(tensor.shape)
        if key in self.params:
            return TensorArg("param", param=self.params[key], numel=tensor.numel(), shape=shape)
        if key is None or key in self.buffers:
            return TensorArg("buffer", numel=tensor.numel(), shape=shape)
        act = self._act_of(tensor)
        if act is None:
            return TensorArg("const", numel=tensor.numel(), shape=shape)
        self.trace.acts[act].last_use = index
        return TensorArg("act", act=act, numel=tensor.numel(), shape=shape)

    def _new_act(self, tensor: Tensor, birth: int, resident: bool = False) -> int:
        act = len(self.trace.acts)
        self.trace.acts.append(
            Activation(
                nbytes=storage_nbytes(tensor),
                numel=tensor.numel(),
                birth=birth,
                last_use=birth,
                is_float=tensor.is_floating_point(),
                resident=resident,
            )
        )
        key = storage_key(tensor)
        if key is not None:
            self.by_storage[key] = act
        self.storages.append(StorageWeakRef(tensor.untyped_storage()))
        return act


def storage_key(tensor: Tensor) -> tuple[str, int] | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if storage.nbytes() == 0:
        return None
    return (str(tensor.device), storage.data_ptr())


def storage_nbytes(tensor: Tensor) -> int:
    return tensor.untyped_storage().nbytes()


def tensors_in(value: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, Tensor)]


def feature_index(owner: str) -> int | None:
    parts = owner.split(".")
    if len(parts) >= 2 and parts[0] == "features" and parts[1].isdigit():
        return int(parts[1])
    return None
