"""Importance criteria: one score per weight element, the larger the more important.

``weight_scores(model, criterion, task)`` returns a tensor shaped like each prunable weight
(convolutions and linear layers, keyed ``"<module>.weight"``). Granularities sum or average
these element scores over their groups (a kernel, an N:M group, an output channel).

- ``l1``: ``|w|`` — magnitude pruning (Han et al. 2015).
- ``l2``: ``w**2`` — its sum over a group is the squared L2 norm of the group (Li et al. 2017
  rank filters by norm), so group rankings follow the L2 norm.
- ``taylor``: first-order Taylor expansion of the loss change when a weight is removed,
  ``(g * w)**2`` averaged over mini-batches (Molchanov et al. 2019, "Importance Estimation for
  Neural Network Pruning", eq. 3).
- ``hessian``: Optimal Brain Damage saliency ``0.5 * H_ii * w**2`` (LeCun et al. 1990) with the
  Hessian diagonal estimated by Hutchinson's method, ``E[z * (H z)]`` over Rademacher probes
  ``z`` computed with Hessian-vector products, one probe per mini-batch (as in HAWQ/PyHessian).
  The estimate is used as is: a negative value (noise or negative curvature) predicts that
  removing the weight lowers the loss, so it ranks lowest.
- ``bn``: network slimming (Liu et al. 2017): every weight of output channel ``c`` scores
  ``|gamma_c|`` of the BatchNorm that directly follows the layer, so the mean over a channel
  slice is ``|gamma_c|``. Layers not followed by a BatchNorm get no score and are not pruned.
  ``train_slimming`` / ``bn_l1_regularization`` provide the L1-penalized training on the
  BatchNorm scales that network slimming needs before this criterion is useful.

Scores are computed on the effective (masked) weights, with the model in eval mode (no
BatchNorm statistics change) and with ``torch.autograd.grad`` (no ``.grad`` is touched).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.fx
from torch import Tensor, nn

from mobiledl.compress.prune.masks import prunable_layers, weight_leaf
from mobiledl.core.inputs import call_model
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig, TrainResult, train

CRITERIA = ("l1", "l2", "taylor", "hessian", "bn")
DATA_CRITERIA = ("taylor", "hessian")
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def weight_scores(
    model: nn.Module,
    criterion: str,
    task: TensorTask | None = None,
    num_batches: int = 8,
    batch_size: int = 64,
    exclude: tuple[str, ...] = (),
    seed: int = 0,
) -> dict[str, Tensor]:
    """Element importance of every prunable weight under ``criterion`` (see module docstring).

    ``taylor`` and ``hessian`` need a ``task``: they use ``num_batches`` shuffled training
    batches of ``batch_size`` samples (shuffled with ``seed``).
    """
    if criterion not in CRITERIA:
        raise UserError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    layers = prunable_layers(model, exclude)
    if criterion == "bn":
        return _bn_scores(model, layers)
    targets = {name: (weight_leaf(m), m.weight.detach()) for name, m in layers.items()}
    return _scores(model, targets, criterion, task, num_batches, batch_size, seed)


def parameter_scores(
    model: nn.Module,
    names: list[str],
    criterion: str,
    task: TensorTask | None = None,
    num_batches: int = 8,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Tensor]:
    """``weight_scores`` for any named parameters (an attention layer's ``in_proj_weight``,
    an embedding table): ``l1``, ``l2``, ``taylor`` or ``hessian``."""
    if criterion not in DATA_CRITERIA + ("l1", "l2"):
        raise UserError(f"criterion '{criterion}' does not score parameters")
    params = dict(model.named_parameters())
    targets = {name: (params[name], params[name].detach()) for name in names}
    return _scores(model, targets, criterion, task, num_batches, batch_size, seed)


Targets = dict[str, tuple[Tensor, Tensor]]  # name -> (trainable leaf, effective value)


def _scores(
    model: nn.Module,
    targets: Targets,
    criterion: str,
    task: TensorTask | None,
    num_batches: int,
    batch_size: int,
    seed: int,
) -> dict[str, Tensor]:
    if criterion in ("l1", "l2"):
        power = 1 if criterion == "l1" else 2
        return {name: value.abs() ** power for name, (_, value) in targets.items()}
    if task is None:
        raise UserError(f"criterion '{criterion}' needs a task: it estimates from data")
    if num_batches < 1:
        raise UserError(f"num_batches must be >= 1; got {num_batches}")
    was_training = model.training
    model.eval()
    try:
        batches = _batches(task, num_batches, batch_size, seed)
        if criterion == "taylor":
            return _taylor_scores(model, targets, task, batches)
        return _hessian_scores(model, targets, task, batches, seed)
    finally:
        model.train(was_training)


def _batches(task: TensorTask, num_batches: int, batch_size: int, seed: int) -> list[tuple]:
    loader = task.loader("train", batch_size, shuffle=True, seed=seed)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == num_batches:
            break
    return batches


def _taylor_scores(
    model: nn.Module, targets: Targets, task: TensorTask, batches: list[tuple]
) -> dict[str, Tensor]:
    """Mean over batches of ``(g * w)**2`` (Molchanov et al. 2019)."""
    params = [leaf for leaf, _ in targets.values()]
    totals = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        loss = task.loss(call_model(model, x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for total, grad, (_, value) in zip(totals, grads, targets.values(), strict=True):
            if grad is not None:
                total += (grad * value) ** 2
    return {name: total / len(batches) for name, total in zip(targets, totals, strict=True)}


def _hessian_scores(
    model: nn.Module, targets: Targets, task: TensorTask, batches: list[tuple], seed: int
) -> dict[str, Tensor]:
    """OBD saliency ``0.5 * diag(H) * w**2`` with a Hutchinson estimate of ``diag(H)``."""
    params = [leaf for leaf, _ in targets.values()]
    totals = [torch.zeros_like(p) for p in params]
    generator = torch.Generator().manual_seed(seed)
    for x, y in batches:
        diagonal = hessian_diagonal(task.loss(call_model(model, x), y), params, generator)
        for total, estimate in zip(totals, diagonal, strict=True):
            total += estimate
    return {
        name: 0.5 * total / len(batches) * value**2
        for (name, (_, value)), total in zip(targets.items(), totals, strict=True)
    }


def hessian_diagonal(
    loss: Tensor, params: list[Tensor], generator: torch.Generator | None = None
) -> list[Tensor]:
    """One Hutchinson probe of ``diag(H)``: ``z * (H z)`` with Rademacher ``z`` (Hutchinson 1989).

    ``H`` is the Hessian of ``loss`` with respect to ``params``; ``H z`` comes from
    differentiating ``g . z`` a second time. Exact for a diagonal Hessian.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    probes = [
        torch.randint(0, 2, p.shape, generator=generator).to(p.dtype).mul_(2).sub_(1)
        for p in params
    ]
    pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
    estimates = [torch.zeros_like(p) for p in params]
    if not pairs:
        return estimates
    hvps = torch.autograd.grad(
        [g for _, g in pairs],
        params,
        grad_outputs=[probes[i] for i, _ in pairs],
        allow_unused=True,
    )
    for estimate, hvp, probe in zip(estimates, hvps, probes, strict=True):
        if hvp is not None:
            estimate += probe * hvp.detach()
    return estimates


def _bn_scores(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, Tensor]:
    """``|gamma_c|`` of the following BatchNorm, broadcast over output channel ``c``."""
    scores = {}
    for name, bn in batchnorm_after(model).items():
        if name not in layers:
            continue
        weight = layers[name].weight
        gamma = bn.weight.detach().abs()
        scores[name] = gamma.reshape(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()
    if not scores:
        raise UserError("criterion 'bn' found no convolution or linear layer followed by BatchNorm")
    return scores


def batchnorm_after(model: nn.Module) -> dict[str, nn.Module]:
    """For each prunable layer whose output feeds straight into an affine BatchNorm, that norm.

    Found by tracing the model with ``torch.fx`` (a name-order guess would pair a shortcut
    convolution with the wrong norm).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing fails on data-dependent control flow
        raise UserError(f"criterion 'bn' needs a model torch.fx can trace ({exc})") from None
    modules = dict(model.named_modules())
    pairs = {}
    for node in _module_calls(graph, modules, _BATCH_NORMS):
        source = node.args[0]
        bn = modules[node.target]
        if not bn.affine or not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        layer = modules.get(source.target)
        if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            pairs[f"{source.target}.weight"] = bn
    return pairs


def _module_calls(
    graph: torch.fx.Graph, modules: dict[str, nn.Module], types: tuple[type, ...]
) -> Iterator[torch.fx.Node]:
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), types):
            yield node


@contextlib.contextmanager
def bn_l1_regularization(model: nn.Module, strength: float) -> Iterator[None]:
    """While active, every backward adds ``strength * sign(gamma)`` to each BatchNorm scale's
    gradient: the subgradient of the ``strength * sum |gamma|`` sparsity penalty of network
    slimming (Liu et al. 2017, eq. 1). Works with any training loop, e.g. ``mobiledl.train``.
    """
    handles = []
    for module in model.modules():
        if isinstance(module, _BATCH_NORMS) and module.affine:
            gamma = module.weight
            handles.append(gamma.register_hook(_l1_subgradient(gamma, strength)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _l1_subgradient(gamma: Tensor, strength: float) -> Callable[[Tensor], Tensor]:
    def hook(grad: Tensor) -> Tensor:
        return grad + strength * torch.sign(gamma.detach())

    return hook


def train_slimming(
    model: nn.Module, task: TensorTask, config: TrainConfig, strength: float = 1e-4
) -> TrainResult:
    """Sparsity training for network slimming: ``mobiledl.train`` plus the L1 penalty on
    BatchNorm scales (Liu et al. 2017 use ``strength`` 1e-4 to 1e-5), so that the ``bn``
    criterion later finds many near-zero scales."""
    if not any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
        raise UserError("network slimming needs BatchNorm layers; the model has none")
    with bn_l1_regularization(model, strength):
        return train(model, task, config)
