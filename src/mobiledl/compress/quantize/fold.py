"""Batch-norm folding: merge an inference-mode BatchNorm into the layer before it.

For ``y = gamma * (W x + b - mu) / sqrt(var + eps) + beta`` the folded layer has
``W' = W * gamma / sigma`` (per output channel) and ``b' = beta + (b - mu) * gamma / sigma``
(Jacob et al. 2018, Sec. 3.2; Krishnamoorthi 2018). Quantizing ``W'`` is what an integer
engine runs, so folding comes before choosing weight scales.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from mobiledl.compress.quantize.graph import target_module, trace
from mobiledl.core.clone import clone_module

BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm1d)


@torch.no_grad()
def fold_bn_into(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d) -> None:
    """Fold ``bn``'s running statistics and affine parameters into ``layer`` in place.

    ``layer`` gains a bias if it had none.
    """
    sigma = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(sigma)
    beta = bn.bias if bn.affine else torch.zeros_like(sigma)
    factor = gamma / sigma
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(factor.reshape(shape))
    new_bias = beta + (bias - bn.running_mean) * factor
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.detach().clone())
    else:
        layer.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module) -> fx.GraphModule:
    """A traced copy of ``model`` with every conv/linear -> BatchNorm pair folded.

    A BatchNorm is folded when its input is a ``Conv2d`` or ``Linear`` used by nothing
    else; the BatchNorm node and module disappear and the layer keeps its name. Other
    BatchNorms stay as they are.
    """
    traced = trace(clone_module(model).eval())
    for node in list(traced.graph.nodes):
        bn = target_module(traced, node)
        if not isinstance(bn, BATCH_NORMS) or not bn.track_running_stats:
            continue
        producer = node.args[0]
        layer = target_module(traced, producer) if isinstance(producer, fx.Node) else None
        if not isinstance(layer, nn.Conv2d | nn.Linear) or len(producer.users) != 1:
            continue
        fold_bn_into(layer, bn)
        node.replace_all_uses_with(producer)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced
