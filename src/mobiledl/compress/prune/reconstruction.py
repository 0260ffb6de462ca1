"""Reconstruction-based channel selection and least-squares refit.

He et al. 2017 ("Channel Pruning for Accelerating Very Deep Neural Networks") and Luo et al.
2017 ("ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression") choose the
channels to remove so that the *next* layer's output changes least, measured on sampled
activations, and then refit the next layer's remaining weights by least squares.

For a consumer layer with weight ``W`` (a Conv2d or Linear reading the group's channels), the
contribution of input channel ``c`` at sampled position ``s`` is ``z_c(s) = W[:, c] * x_c(s)``
(over the kernel window for a convolution) and the output is ``sum_c z_c``. Removing a set
``R`` of channels changes the output by ``sum_{c in R} z_c``, whose squared norm is
``1_R^T G 1_R`` with the Gram matrix ``G[c, c'] = sum_s <z_c(s), z_c'(s)>``. ``G`` is computed
from the input Gram ``X^T X`` and ``W^T W`` without storing any ``z``; a group read by several
layers (a residual stream) sums their ``G``. The greedy selection of ThiNet (Luo et al. 2017,
Sec. 3.2) then removes, one at a time, the unit whose removal adds the least error; the order
of removal is the importance ranking (first removed = least important).

After surgery, ``refit_consumers`` solves, layer by layer in execution order, the ridge
least-squares problem ``min_W' ||X' W'^T - Y||`` where ``X'`` are the pruned model's inputs
(with earlier layers already refit) and ``Y`` the original model's outputs at the same
sampled positions (He et al. 2017, Sec. 3.1, eq. 1 with beta fixed by the selection).
Only consumers whose pruning rule allows it take part (plain Conv2d with zero padding, Linear);
others keep their sliced weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.compress.prune.graph import ChannelGroup, DependencyGraph, SlotKind
from mobiledl.compress.prune.rules import rule_for
from mobiledl.core.task import TensorTask

NUM_SAMPLES = 256
MAX_ROWS = 4096
RIDGE = 1e-3


def reconstruction_importance(
    model: nn.Module,
    graph: DependencyGraph,
    task: TensorTask,
    num_samples: int = NUM_SAMPLES,
    seed: int = 0,
) -> list[Tensor]:
    """Per group, each unit's rank in ThiNet's greedy removal order (higher = keep longer)."""
    consumers = {
        member.slot.module
        for group in graph.groups
        for member in group.members
        if member.slot.kind == "in" and _supported(model.get_submodule(member.slot.module))
    }
    inputs = _input_grams(model, consumers, sample_inputs(task, num_samples, seed))
    return [_greedy_scores(model, group, inputs) for group in graph.groups]


def sample_inputs(task: TensorTask, num_samples: int = NUM_SAMPLES, seed: int = 0) -> Tensor:
    """``num_samples`` training inputs drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(task.x_train), generator=generator)[:num_samples]
    return task.x_train[order]


def _supported(module: nn.Module) -> bool:
    """Whether the layer's pruning rule lets the least-squares refit treat it as a consumer."""
    rule = rule_for(module)
    return rule is not None and rule.supports_reconstruction(module)


def _rows(module: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as a matrix: one row per output position (kernel window unfolded)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    unfolded = F.unfold(
        x, module.kernel_size, module.dilation, module.padding, module.stride
    )  # (N, C*k*k, L)
    return unfolded.transpose(1, 2).reshape(-1, unfolded.shape[1])


def _output_rows(module: nn.Module, y: Tensor) -> Tensor:
    """The layer's output without bias, one row per output position."""
    if module.bias is not None:
        shape = [1] * y.dim()
        shape[-1 if isinstance(module, nn.Linear) else 1] = -1
        y = y - module.bias.reshape(shape)
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])
    return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])


@contextmanager
def _hooks(
    model: nn.Module, names: list[str], make: Callable[[str, nn.Module], Callable], pre: bool
) -> Iterator[None]:
    handles = []
    for name in names:
        module = model.get_submodule(name)
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        handles.append(register(make(name, module)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _run(model: nn.Module, x: Tensor) -> None:
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)


def _input_grams(model: nn.Module, names: set[str], x: Tensor) -> dict[str, Tensor]:
    """``X^T X`` of each named layer's unfolded input over the samples (float64)."""
    grams: dict[str, Tensor] = {}

    def make(name: str, module: nn.Module) -> Callable:
        def hook(_: nn.Module, args: tuple) -> None:
            rows = _rows(module, args[0]).double()
            grams[name] = grams.get(name, 0) + rows.T @ rows

        return hook

    with _hooks(model, sorted(names), make, pre=True):
        for batch in x.split(64):
            _run(model, batch)
    return grams


def _contribution_gram(module: nn.Module, input_gram: Tensor) -> Tensor:
    """``G[c, c'] = sum_s <z_c(s), z_c'(s)>`` from ``X^T X`` and ``W^T W``."""
    weight = module.weight.detach().double()
    flat = weight.reshape(weight.shape[0], -1)
    channels = weight.shape[1]
    window = flat.shape[1] // channels
    product = input_gram * (flat.T @ flat)
    return product.reshape(channels, window, channels, window).sum((1, 3))


def _greedy_scores(model: nn.Module, group: ChannelGroup, grams: dict[str, Tensor]) -> Tensor:
    gram = torch.zeros(group.width, group.width, dtype=torch.float64)
    for member in group.members:
        if member.slot.kind != "in" or member.slot.module not in grams:
            continue
        module = model.get_submodule(member.slot.module)
        positions = _contribution_gram(module, grams[member.slot.module])
        rows = torch.zeros(group.width, len(member.units), dtype=torch.float64)
        rows.index_add_(0, member.units, positions)
        gram.index_add_(1, member.units, rows)
    return _greedy_rank(gram, ~group.frozen)


def _greedy_rank(gram: Tensor, candidates: Tensor) -> Tensor:
    """Rank ``1..n`` in the order ThiNet's greedy would remove the candidates; others ``n+1``.

    Removing set ``R`` costs ``1_R^T G 1_R``; adding unit ``u`` to ``R`` raises it by
    ``2 (G 1_R)_u + G_uu``.
    """
    width = gram.shape[0]
    matrix = gram.numpy()
    scores = np.full(width, float(width + 1))
    remaining = candidates.numpy().copy()
    accumulated = np.zeros(width)
    diagonal = matrix.diagonal()
    for rank in range(int(remaining.sum())):
        cost = np.where(remaining, 2 * accumulated + diagonal, np.inf)
        unit = int(np.argmin(cost))
        scores[unit] = rank + 1
        remaining[unit] = False
        accumulated += matrix[:, unit]
    return torch.from_numpy(scores)


def refit_consumers(
    pruned: nn.Module,
    original: nn.Module,
    layers: list[str],
    cut: dict[str, dict[SlotKind, Tensor]],
    task: TensorTask,
    num_samples: int = NUM_SAMPLES,
    seed: int = 0,
) -> None:
    """Refit, in execution order, every layer that lost input channels (in place)."""
    names = [
        name
        for name in layers
        if "in" in cut.get(name, {}) and _supported(pruned.get_submodule(name))
    ]
    x = sample_inputs(task, num_samples, seed)
    targets = _targets(original, names, cut, x, seed)

    def make(name: str, module: nn.Module) -> Callable:
        def hook(_: nn.Module, args: tuple) -> None:
            rows, target = targets[name]
            _solve_into(module, _rows(module, args[0])[rows].double(), target)

        return hook

    with _hooks(pruned, names, make, pre=True):
        _run(pruned, x)


def _targets(
    original: nn.Module,
    names: list[str],
    cut: dict[str, dict[SlotKind, Tensor]],
    x: Tensor,
    seed: int,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Sampled output rows (kept outputs only) of each named layer in the original model."""
    targets: dict[str, tuple[Tensor, Tensor]] = {}

    def make(name: str, module: nn.Module) -> Callable:
        def hook(_: nn.Module, args: tuple, output: Tensor) -> None:
            rows = _output_rows(module, output).double()
            generator = torch.Generator().manual_seed(seed + len(targets))
            chosen = torch.randperm(len(rows), generator=generator)[:MAX_ROWS]
            kept = cut[name].get("out", torch.arange(rows.shape[1]))
            targets[name] = (chosen, rows[chosen][:, kept])

        return hook

    with _hooks(original, names, make, pre=False):
        _run(original, x)
    return targets


def _solve_into(module: nn.Module, inputs: Tensor, target: Tensor) -> None:
    """Ridge least squares for the weight; kept only if it fits the samples better."""
    columns = inputs.shape[1]
    if len(inputs) < 2 * columns:
        return  # too few samples to determine the weights
    gram = inputs.T @ inputs
    ridge = RIDGE * float(gram.diagonal().mean()) + 1e-12
    solution = torch.linalg.solve(
        gram + ridge * torch.eye(columns, dtype=gram.dtype), inputs.T @ target
    )
    weight = module.weight.detach()
    current = weight.reshape(weight.shape[0], -1).double().T
    if (inputs @ solution - target).square().sum() < (inputs @ current - target).square().sum():
        with torch.no_grad():
            weight.copy_(solution.T.reshape(weight.shape).to(weight.dtype))
