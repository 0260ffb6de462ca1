"""Training memory: what one training step must hold, layer by layer, and its peak.

On-device training is limited by memory, not compute (Cai et al. 2022, Sec. 4; Cai et al.
2020, TinyTL; Lin et al. 2022, MCUNetV3). A step holds

- **weights** (parameters and buffers, at their storage precision, e.g. int8 frozen weights);
- **gradients** of the trainable parameters (none for frozen ones);
- **optimizer state**: 0 (plain SGD), 1x (SGD momentum) or 2x (Adam) the trainable parameters;
- the **input batch**;
- **activations saved for backward**, which depend on what trains. This models
  ``mobiledl.train.lean.LeanAutograd``, the engine mobiledl trains with: a convolution or
  linear layer keeps its input only if its weight trains (a bias or the gradient flowing
  on to earlier layers needs no input); ReLU/ReLU6 keep a 1-bit mask; batch norm in training
  mode keeps its input, with frozen statistics and scale it keeps nothing; h-swish and
  h-sigmoid keep their input, max pooling its input and int64 indices, dropout its float
  noise, products the other factor; pooling, adds, concatenations and views keep nothing;
- frozen convolution + batch norm (+ ReLU/ReLU6) blocks run fused (``fusable_conv_bn``): one
  output tensor, BN folded into the weight, the activation in place;
- **transients**: the outputs of the op running, gradients of activations in flight during
  backward (one buffer per activation, alive from its last consumer's backward to its
  producer's), and known kernel workspaces (the ReLU mask before packing, a product's
  broadcast gradient, Adam's update temporaries).

``training_memory(model, x, y)`` traces one forward pass (ATen ops, in ``no_grad`` so nothing
is saved) with the model in the trainer's modes (``training_modes``), applies these rules
with the parameters' current ``requires_grad`` flags, and replays forward, backward and the
optimizer step as a timeline of allocations and frees. The peak is the maximum of the live
bytes over that timeline. With gradient checkpointing over ``k`` stages of ``model.features``
(Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost") a stage keeps only its
input during the forward pass and recomputes its saved activations when backward reaches it.

Layers may define their own accounting: a module with a ``memory_for_training(input_shape,
output_shape)`` method (e.g. the int8 layers of sparse update) is one op whose saved bytes and
workspaces it reports as a ``ModuleMemory``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from mobiledl.errors import UserError
from mobiledl.profile.measurement import Measurement

#: Optimizer state per trainable parameter, in parameter copies.
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2}

#: Adam's update allocates ``sqrt(v)`` and its quotient for one parameter at a time.
_OPTIMIZER_WORKSPACE = {"sgd": 0, "momentum": 0, "adam": 2}

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Elements per tile: the lean ops form 1-bit masks and masked gradients a tile at a time.
TILE = 1 << 16


def training_layout(tensor: Tensor) -> Tensor:
    """A 4-D batch in the channels-last layout the trainer uses (other tensors unchanged).

    oneDNN convolutions on NCHW tensors reorder activations into a blocked layout, holding
    activation-sized copies; on channels-last (NHWC, the layout of mobile engines) they
    allocate nothing but their output.
    """
    if tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def segment_bounds(length: int, segments: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into ``segments`` contiguous, near-equal ``(start, stop)`` runs."""
    if segments < 1:
        raise UserError(f"checkpoint segments must be >= 1; got {segments}")
    segments = min(segments, length)
    cuts = [round(i * length / segments) for i in range(segments + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(segments)]


@contextlib.contextmanager
def training_modes(model: nn.Module) -> Iterator[None]:
    """The trainer's modes: ``model.train()``, except batch norms whose scale is frozen.

    A batch norm with a frozen (or no) scale keeps its running statistics (eval mode): on a
    device the batch is small, and TinyTL and MCUNetV3 keep the pretrained statistics. Every
    module's flag is restored afterwards.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(module.weight is not None and module.weight.requires_grad)
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


FusedConv = tuple[nn.Conv2d, nn.BatchNorm2d, tuple[float, float | None] | None]


def clamp_bounds(module: nn.Module) -> tuple[float, float | None] | None:
    """``(low, high)`` of a ReLU (``high=None``), ReLU6 or hardtanh; ``None`` for others."""
    if type(module) is nn.ReLU:
        return (0.0, None)
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    return None


def fusable_conv_bn(module: nn.Module) -> FusedConv | None:
    """``(conv, bn, clamp)`` if the trainer runs ``module`` as one fused op, else ``None``.

    That is a ``Sequential`` of a convolution with a frozen weight, a batch norm with running
    statistics and a frozen (or no) scale, and optionally a ReLU / ReLU6 / hardtanh: batch norm
    folds into the convolution and the activation is applied in place, so the block holds one
    output, as in an inference engine (``LeanAutograd`` documents the fused op).
    """
    children = list(module.children()) if isinstance(module, nn.Sequential) else []
    if len(children) not in (2, 3):
        return None
    conv, bn = children[0], children[1]
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        return None
    frozen = not conv.weight.requires_grad and not (
        bn.weight is not None and bn.weight.requires_grad
    )
    plain = conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    if not (frozen and plain and not bn.training and bn.running_var is not None):
        return None
    bounds = clamp_bounds(children[2]) if len(children) == 3 else None
    if len(children) == 3 and bounds is None:
        return None
    return conv, bn, bounds


@dataclass(frozen=True)
class ModuleMemory:
    """A custom layer's own accounting for one call (see the module docstring).

    ``saves_input``: its input is kept for backward. ``extra_saved``: bytes of new tensors kept
    for backward. ``forward_workspace`` / ``backward_workspace``: bytes of temporaries alive
    while it runs forward / backward (beyond its output and the gradients).
    """

    saves_input: bool = False
    extra_saved: int = 0
    forward_workspace: int = 0
    backward_workspace: int = 0


@dataclass
class LayerTrainingMemory:
    """One layer's share of a training step (bytes); ``saved_bytes`` are kept for backward."""

    name: str
    type: str
    params: int
    trainable_params: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    saved_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class TrainingMemoryProfile:
    """Predicted memory of one training step (bytes) and where its peak falls.

    ``peak_bytes`` is the maximum over the step of everything live: ``weight_bytes`` +
    ``optimizer_bytes`` + ``input_bytes`` (always) + activations, masks, gradients and
    workspaces (as they come and go). ``peak_phase`` is ``forward``, ``recompute``,
    ``backward`` or ``step``; ``peak_layer`` the layer running then; ``peak_breakdown`` what the
    peak is made of, by category.
    """

    layers: list[LayerTrainingMemory]
    params: int
    trainable_params: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    input_bytes: int
    saved_activation_bytes: int
    peak_bytes: int
    peak_phase: str
    peak_layer: str
    optimizer: str
    checkpoint_segments: int | None
    batch_size: int
    peak_breakdown: dict[str, int] = field(default_factory=dict)
    unknown_ops: list[str] = field(default_factory=list)

    def measurement(self, name: str = "model") -> Measurement:
        """A ``Measurement`` whose ``peak_memory_bytes`` is the predicted training peak."""
        return Measurement(
            name=name,
            params=self.params,
            bytes=self.weight_bytes,
            peak_memory_bytes=self.peak_bytes,
            batch_size=self.batch_size,
            extra={"trainable_params": self.trainable_params, "training_memory": self.totals()},
        )

    def totals(self) -> dict[str, Any]:
        """Every total, without the per-layer rows."""
        return {k: v for k, v in self.to_dict().items() if k != "layers"}

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["layers"] = [layer.to_dict() for layer in self.layers]
        return out

    def table(self) -> str:
        """Per-layer text table, then the totals and the peak."""
        header = f"{'layer':<34} {'type':<18} {'trainable':>10} {'grad B':>10} {'saved B':>11}"
        rows = [header, "-" * len(header)]
        for layer in self.layers:
            rows.append(
                f"{layer.name[:34]:<34} {layer.type[:18]:<18} {layer.trainable_params:>10,} "
                f"{layer.gradient_bytes:>10,} {layer.saved_bytes:>11,}"
            )
        rows.append(
            f"weights {self.weight_bytes:,} B | gradients {self.gradient_bytes:,} B | optimizer "
            f"{self.optimizer_bytes:,} B | input {self.input_bytes:,} B | saved activations "
            f"{self.saved_activation_bytes:,} B | peak {self.peak_bytes:,} B "
            f"({self.peak_phase}, {self.peak_layer or 'model'})"
        )
        return "\n".join(rows)


def training_memory(
    model: nn.Module,
    example_input: Tensor,
    target: Tensor | None = None,
    optimizer: str = "momentum",
    checkpoint_segments: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> TrainingMemoryProfile:
    """Predict the memory of one training step of ``model`` on the batch ``example_input``.

    ``target`` defaults to class 0 for every sample. Trainable parameters are those with
    ``requires_grad``. ``optimizer`` is ``sgd``, ``momentum`` or ``adam``.
    """
    return trace_training(model, example_input, target, loss_fn).profile(
        optimizer, checkpoint_segments
    )


def trace_training(
    model: nn.Module,
    example_input: Tensor,
    target: Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> TrainingTrace:
    """Trace one forward pass; ``.profile()`` then predicts the step for the current flags.

    Tracing once and profiling many times is how sparse update prices candidate updates.
    """
    if not isinstance(example_input, Tensor) or example_input.dim() < 1:
        raise UserError("training memory needs an example input batch (a tensor)")
    if target is None:
        target = torch.zeros(len(example_input), dtype=torch.long)
    return TrainingTrace(model, training_layout(example_input), target, loss_fn)


# ---------------------------------------------------------------- trace


@dataclass
class _Act:
    """An activation: one storage produced during the forward pass (or the input batch)."""

    nbytes: int
    numel: int
    birth: int
    last_use: int
    is_float: bool
    resident: bool = False


@dataclass(frozen=True)
class _Arg:
    """A tensor argument of an op: an activation, a parameter, a buffer or a constant."""

    kind: str  # "act", "param", "buffer", "const"
    act: int = -1
    param: nn.Parameter | None = None
    numel: int = 0
    shape: tuple[int, ...] = ()


@dataclass
class _Op:
    index: int
    name: str
    owner: str
    feature: int | None
    args: Any
    tensor_args: list[_Arg]
    outputs: list[int]
    new_outputs: list[int]
    module: nn.Module | None = None
    out_shape: tuple[int, ...] = ()
    fused: FusedConv | None = None


class TrainingTrace:
    """One traced forward pass (ops, activations, owners) of a model on one batch.

    ``profile`` re-reads which parameters train; which blocks run fused is fixed at tracing, so
    trace again after freezing or unfreezing convolution weights or batch-norm scales.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> None:
        self.model = model
        self.batch_size = len(x)
        self.input_bytes = _nbytes(x) + _nbytes(y)
        self.acts: list[_Act] = []
        self.ops: list[_Op] = []
        self.feature_inputs: dict[int, int] = {}
        self.types = {name: type(m).__name__ for name, m in model.named_modules()}
        _Tracer(self).run(x, y, loss_fn)

    def profile(
        self, optimizer: str = "momentum", checkpoint_segments: int | None = None
    ) -> TrainingMemoryProfile:
        """Predict the step for the parameters' current ``requires_grad`` flags."""
        if optimizer not in OPTIMIZER_STATES:
            raise UserError(
                f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}; got {optimizer}"
            )
        return _Simulation(self, optimizer, checkpoint_segments).run()


class _Tracer(TorchDispatchMode):
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
            self.params[_key(param)] = param
        self.buffers = {_key(b) for b in model.buffers() if _key(b) is not None}
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
                [] if inside_atomic else [self._act_of(t) for t in _tensors(args)]
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
        act = self.by_storage.get(_key(tensor))
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
        tensor_args: list[_Arg] = []

        def as_arg(value: Any) -> Any:
            if not isinstance(value, Tensor):
                return value
            arg = self._arg(value, index)
            tensor_args.append(arg)
            return arg

        mapped, _ = tree_map(as_arg, (tuple(args), kwargs))
        outputs, new = [], []
        input_acts = {a.act for a in tensor_args if a.kind == "act"}
        for tensor in _tensors(out):
            key = _key(tensor)
            if key is None or key in self.params or key in self.buffers:
                continue
            act = self._act_of(tensor)
            if act is None or act not in input_acts:
                act = self._new_act(tensor, birth=index)
                new.append(act)
            outputs.append(act)
        feature = _feature_index(owner)
        op = _Op(index, name, owner, feature, mapped, tensor_args, outputs, new, module)
        op.fused = fusable_conv_bn(module) if module is not None else None
        first = _tensors(out)
        op.out_shape = tuple(first[0].shape) if first else ()
        self.trace.ops.append(op)

    def _arg(self, tensor: Tensor, index: int) -> _Arg:
        key = _key(tensor)
        shape = tuple(tensor.shape)
        if key in self.params:
            return _Arg("param", param=self.params[key], numel=tensor.numel(), shape=shape)
        if key is None or key in self.buffers:
            return _Arg("buffer", numel=tensor.numel(), shape=shape)
        act = self._act_of(tensor)
        if act is None:
            return _Arg("const", numel=tensor.numel(), shape=shape)
        self.trace.acts[act].last_use = index
        return _Arg("act", act=act, numel=tensor.numel(), shape=shape)

    def _new_act(self, tensor: Tensor, birth: int, resident: bool = False) -> int:
        act = len(self.trace.acts)
        self.trace.acts.append(
            _Act(
                nbytes=_nbytes(tensor),
                numel=tensor.numel(),
                birth=birth,
                last_use=birth,
                is_float=tensor.is_floating_point(),
                resident=resident,
            )
        )
        key = _key(tensor)
        if key is not None:
            self.by_storage[key] = act
        self.storages.append(StorageWeakRef(tensor.untyped_storage()))
        return act


def _key(tensor: Tensor) -> tuple[str, int] | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if storage.nbytes() == 0:
        return None
    return (str(tensor.device), storage.data_ptr())


def _nbytes(tensor: Tensor) -> int:
    return tensor.untyped_storage().nbytes()


def _tensors(value: Any) -> list[Tensor]:
    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, Tensor)]


def _feature_index(owner: str) -> int | None:
    parts = owner.split(".")
    if len(parts) >= 2 and parts[0] == "features" and parts[1].isdigit():
        return int(parts[1])
    return None


# ---------------------------------------------------------------- rules


@dataclass
class _OpMemory:
    """What one op keeps for backward and the temporaries it needs."""

    saved: list[int] = field(default_factory=list)
    extra_saved: int = 0
    forward_workspace: int = 0
    backward_workspace: int = 0


_NO_SAVE = {
    "add", "add_", "sub", "neg", "cat", "stack", "mean", "sum", "view", "_unsafe_view",
    "reshape", "_reshape_alias", "transpose", "permute", "t", "split", "split_with_sizes",
    "chunk", "unbind", "narrow", "slice", "select", "unsqueeze", "squeeze", "expand",
    "alias", "detach", "clone", "contiguous", "flatten", "constant_pad_nd", "_to_copy",
    "upsample_nearest2d", "upsample_bilinear2d", "avg_pool2d", "copy_", "lift_fresh",
    "as_strided", "as_strided_",
}  # fmt: skip
_NOT_DIFFERENTIABLE = {
    "empty_like", "zeros_like", "ones_like", "empty", "zeros", "ones", "full", "bernoulli_",
    "new_zeros", "new_empty", "new_ones", "arange", "scalar_tensor", "argmax", "eq", "ne",
    "gt", "lt", "ge", "le", "rand_like", "randn_like",
}  # fmt: skip
_SAVE_INPUT = {"hardswish", "hardsigmoid", "silu", "gelu", "_adaptive_avg_pool2d", "elu"}
_SAVE_OUTPUT = {"_log_softmax", "_softmax", "sigmoid", "tanh", "exp"}


class _Rules:
    """The lean-engine rules, evaluated for the current trainability."""

    def __init__(self, sim: _Simulation) -> None:
        self.sim = sim

    def __call__(self, op: _Op) -> _OpMemory:
        if op.module is not None:
            return self._module(op)
        if op.name in _NO_SAVE or op.name in _NOT_DIFFERENTIABLE:
            return _OpMemory()
        handler = getattr(self, f"_{op.name.strip('_')}", None)
        if handler is not None:
            return handler(op)
        if op.name in _SAVE_INPUT:
            return _OpMemory(saved=self._acts(op.tensor_args[:1]))
        if op.name in _SAVE_OUTPUT:
            return _OpMemory(saved=op.outputs[:1])
        self.sim.unknown.add(op.name)
        return _OpMemory(saved=self._acts(op.tensor_args))

    def _acts(self, args: list[_Arg]) -> list[int]:
        return [a.act for a in args if a.kind == "act" and self.sim.acts[a.act].is_float]

    def _module(self, op: _Op) -> _OpMemory:
        x = op.tensor_args[0]
        if op.fused is not None:
            report = self._fused(op.fused, op)
        else:
            report = op.module.memory_for_training(x.shape, op.out_shape)  # type: ignore[union-attr]
        saved = [x.act] if report.saves_input and x.kind == "act" else []
        return _OpMemory(
            saved, report.extra_saved, report.forward_workspace, report.backward_workspace
        )

    def _fused(self, fused: FusedConv, op: _Op) -> ModuleMemory:
        """Frozen conv + BN (+ clamp): the folded weight exists while it runs; with a gradient
        to pass, a packed mask is kept and backward masks a few samples at a time."""
        conv, _, bounds = fused
        x_shape = op.tensor_args[0].shape
        folded = 4 * conv.weight.numel()
        folded += _conv_workspace(
            x_shape, conv.weight.shape, conv.stride, conv.dilation, conv.groups, op.out_shape
        )
        if not self.sim.in_graph[op.index]:
            return ModuleMemory(forward_workspace=folded)
        if bounds is None:
            return ModuleMemory(forward_workspace=folded, backward_workspace=folded)
        numel, batch = math.prod(op.out_shape), op.out_shape[0]
        samples = _chunk_samples(max(numel, op.tensor_args[0].numel), batch)
        in_chunk = samples * op.tensor_args[0].numel // batch
        backward = folded + 5 * samples * numel // batch
        if samples < batch:  # each chunk's input gradient is formed, then copied into place
            backward += 4 * in_chunk
        return ModuleMemory(
            extra_saved=math.ceil(numel / 8),
            forward_workspace=max(folded, self._mask_workspace(numel, bounds)),
            backward_workspace=backward,
        )

    @staticmethod
    def _mask_workspace(numel: int, bounds: tuple[float, float | None]) -> int:
        """Bool tiles (one per comparison), their shifted bytes and the packed tile."""
        tile = min(numel, TILE)
        return (1 if bounds[1] is None else 2) * tile + tile + tile // 8

    def _convolution(self, op: _Op) -> _OpMemory:
        """oneDNN reorders the weight into its blocked layout (forward), forms a trainable
        weight's gradient in that layout before converting it, and for a frozen one reorders
        it again for the transposed convolution giving the input gradient."""
        x, weight = op.args[0], op.args[1]
        stride, dilation, groups = op.args[3], op.args[5], op.args[8]
        reorder = _conv_workspace(x.shape, weight.shape, stride, dilation, groups, op.out_shape)
        if not self.sim.needs_grad(weight):
            return _OpMemory(forward_workspace=reorder, backward_workspace=reorder)
        # a kernel covering the whole input: oneDNN's algorithm for it needs twice as much
        covering = len(x.shape) == 4 and any(
            k >= size for k, size in zip(weight.shape[2:], x.shape[2:], strict=True)
        )
        gradient = (4 if covering else 2) * max(reorder, 4 * weight.numel)
        return _OpMemory(self._acts([x]), forward_workspace=reorder, backward_workspace=gradient)

    def _addmm(self, op: _Op) -> _OpMemory:
        return self._matmul(op.args[1], op.args[2])

    def _mm(self, op: _Op) -> _OpMemory:
        return self._matmul(op.args[0], op.args[1])

    def _bmm(self, op: _Op) -> _OpMemory:
        return self._matmul(op.args[0], op.args[1])

    def _matmul(self, left: _Arg, right: _Arg) -> _OpMemory:
        saved = self._acts([left]) if self.sim.needs_grad(right) else []
        if self.sim.needs_grad(left):
            saved += self._acts([right])
        return _OpMemory(saved=saved)

    def _mul(self, op: _Op) -> _OpMemory:
        left, right = op.args[0], op.args[1]
        if not isinstance(right, _Arg):  # times a scalar
            return _OpMemory()
        saved = self._acts([right]) if self.sim.needs_grad(left) else []
        if self.sim.needs_grad(right):
            saved += self._acts([left])
        out_numel = max(left.numel, right.numel)
        broadcast = any(
            self.sim.needs_grad(a) and a.numel < out_numel for a in (left, right)
        )  # the gradient is formed at full size, then summed down
        return _OpMemory(saved=saved, backward_workspace=4 * out_numel if broadcast else 0)

    def _relu(self, op: _Op) -> _OpMemory:
        return self._mask(op, comparisons=1)

    def _hardtanh(self, op: _Op) -> _OpMemory:
        return self._mask(op, comparisons=2)

    def _mask(self, op: _Op, comparisons: int) -> _OpMemory:
        """``LeanAutograd``'s clamp: a packed bit mask, formed and applied a tile at a time."""
        x = op.args[0]
        if not self.sim.needs_grad(x):
            return _OpMemory()
        tile = min(x.numel, TILE)
        batch = x.shape[0] if x.shape else 1
        chunk = _chunk_samples(x.numel, batch) * x.numel // batch
        return _OpMemory(
            extra_saved=math.ceil(x.numel / 8),
            forward_workspace=comparisons * tile + tile + tile // 8,
            backward_workspace=5 * chunk,
        )

    def _native_batch_norm(self, op: _Op) -> _OpMemory:
        x, weight, training = op.args[0], op.args[1], op.args[5]
        channels = x.shape[1] if len(x.shape) > 1 else 1
        if training:  # its backward kernel holds one input-sized temporary
            saved = self._acts([x])
            return _OpMemory(saved, extra_saved=2 * 4 * channels, backward_workspace=4 * x.numel)
        return _OpMemory(saved=self._acts([x]) if self.sim.needs_grad(weight) else [])

    def _native_group_norm(self, op: _Op) -> _OpMemory:
        x, groups = op.args[0], op.args[6]
        return _OpMemory(saved=self._acts([x]), extra_saved=2 * 4 * x.shape[0] * groups)

    def _max_pool2d_with_indices(self, op: _Op) -> _OpMemory:
        return _OpMemory(saved=self._acts(op.tensor_args[:1]) + op.outputs[1:2])

    def _nll_loss_forward(self, op: _Op) -> _OpMemory:
        return _OpMemory(saved=self._acts(op.tensor_args[:1]) + op.outputs[1:2])

    def _div(self, op: _Op) -> _OpMemory:
        left, right = op.args[0], op.args[1]
        if not isinstance(right, _Arg):
            return _OpMemory()
        saved = (
            self._acts([right]) if self.sim.needs_grad(left) or self.sim.needs_grad(right) else []
        )
        return _OpMemory(saved=saved + (self._acts([left]) if self.sim.needs_grad(right) else []))


def uses_onednn(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> bool:
    """Whether PyTorch's CPU convolution dispatches a float conv to oneDNN (ATen's
    ``ConvParams::use_mkldnn``): single-threaded unstrided 1x1 convolutions on small batches
    and tiny single-sample inputs go to the native kernels instead."""
    kernel_1x1 = tuple(weight_shape[-2:]) == (1, 1)
    unusual = any(s != 1 for s in stride) or any(d != 1 for d in dilation)
    onednn_faster = unusual or x_shape[0] >= 16 or not kernel_1x1 or torch.get_num_threads() > 1
    not_tiny = (
        groups > 1
        or (weight_shape[-1] > 3 and weight_shape[-2] > 3)
        or x_shape[0] > 1
        or math.prod(x_shape) > 20480
    )
    return onednn_faster and not_tiny


def _conv_workspace(
    x_shape: Sequence[int],
    weight_shape: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_shape: Sequence[int],
) -> int:
    """Temporaries of a forward convolution: oneDNN's reordered copy of the weight, or the
    native kernel's im2col columns for one sample (none for a 1x1 convolution)."""
    if uses_onednn(x_shape, weight_shape, stride, dilation, groups):
        return 4 * math.prod(weight_shape)
    if tuple(weight_shape[-2:]) == (1, 1):
        return 0
    return 4 * math.prod(weight_shape[1:]) * groups * math.prod(out_shape[2:])


def _chunk_samples(numel: int, batch: int) -> int:
    """Samples per chunk when masking a gradient about ``TILE`` elements at a time."""
    return min(batch, max(1, TILE * batch // max(1, numel)))


# ---------------------------------------------------------------- simulation


class _Simulation:
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
        self.memory: list[_OpMemory] = []
        self.stage_of = self._stages()
        self.held: dict[int, int] = {}
        self.rekept: dict[int, int] = {}
        self.ledger = _Ledger()

    # ---- trainability and rules

    def trainable(self, arg: Any) -> bool:
        return isinstance(arg, _Arg) and arg.kind == "param" and arg.param.requires_grad

    def needs_grad(self, arg: Any) -> bool:
        """A tensor argument whose gradient backward must compute."""
        if not isinstance(arg, _Arg):
            return False
        return self.trainable(arg) or (arg.kind == "act" and self.requires_grad[arg.act])

    def _propagate(self) -> None:
        rules = _Rules(self)
        for op in self.ops:
            graph = any(self.needs_grad(a) for a in op.tensor_args) or any(
                p.requires_grad for p in self._module_params(op)
            )
            self.in_graph[op.index] = graph and op.name not in _NOT_DIFFERENTIABLE
            for act in op.new_outputs:
                self.requires_grad[act] = self.in_graph[op.index] and self.acts[act].is_float
            if self.in_graph[op.index]:
                self.memory.append(rules(op))
            else:  # nothing to keep, but the forward pass still needs its workspace
                self.memory.append(_OpMemory(forward_workspace=rules(op).forward_workspace))

    @staticmethod
    def _module_params(op: _Op) -> list[nn.Parameter]:
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
        weights = _weight_bytes(self.trace.model)
        optimizer_bytes = OPTIMIZER_STATES[self.optimizer] * sum(_nbytes(p) for p in trainable)
        self.ledger.alloc(("weights",), weights, "weights")
        self.ledger.alloc(("optimizer",), optimizer_bytes, "optimizer state")
        self.ledger.alloc(("input",), self.trace.input_bytes, "input batch")
        self._forward()
        self._backward()
        largest = max((_nbytes(p) for p in trainable), default=0)
        self.ledger.point(_OPTIMIZER_WORKSPACE[self.optimizer] * largest, "step", "")
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
                    self.ledger.alloc(("pgrad", id(param)), _nbytes(param), "weight gradients")
            workspace = self.memory[op.index].backward_workspace + accumulate
            self.ledger.point(workspace, "backward", op.owner)
            self._release(op)

    def _release(self, op: _Op) -> None:
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
            gradient_bytes=sum(_nbytes(p) for p in trainable),
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
        row.weight_bytes += _nbytes(param)
        if param.requires_grad:
            row.trainable_params += param.numel()
            row.gradient_bytes += _nbytes(param)
            row.optimizer_bytes += OPTIMIZER_STATES[self.optimizer] * _nbytes(param)


class _Ledger:
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


def _weight_bytes(model: nn.Module) -> int:
    """Bytes of every distinct parameter and buffer storage."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = _key(tensor)
        if key is not None and key not in seen:
            seen.add(key)
            total += _nbytes(tensor)
    return total
