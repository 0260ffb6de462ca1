"""Head pruning of a sentence encoder (``mobiledl.apps.nlp``): the least important heads of
every layer removed.

A head's importance is the mean magnitude of what it adds to the layer's output: the L2 norm
of its context vectors pushed through its columns of the output projection, averaged over
the valid tokens of calibration batches (the "output magnitude" criterion; Michel et al.
2019 show most heads can go at a small cost, Voita et al. 2019 that the important ones stand
out). The heads are then removed physically by the project's own attention pruning rule
(``MultiheadAttentionRule.shrink``: smaller q/k/v/out projections), the same rule channel
pruning applies to any ``PrunedMultiheadAttention``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from mobiledl.apps.nlp.encoder import SentenceEncoder
from mobiledl.compress.prune.attention import MultiheadAttentionRule
from mobiledl.core.clone import clone_module
from mobiledl.errors import UserError
from mobiledl.models.attention import PrunedMultiheadAttention


@torch.no_grad()
def head_importance(encoder: SentenceEncoder, batches: Iterable[dict[str, Tensor]]) -> Tensor:
    """``(layers, heads)``: mean output magnitude of every head over the batches' tokens
    (measured with token pruning off, so every token counts)."""
    totals = torch.zeros(len(encoder.layers), encoder.layers[0].attention.num_heads)
    tokens = 0
    captured: dict[int, Tensor] = {}
    hooks = [
        layer.attention.out_proj.register_forward_pre_hook(_capture(captured, index))
        for index, layer in enumerate(encoder.layers)
    ]
    schedule, pooling = encoder.token_keep, encoder.pooling
    encoder.set_token_pruning({}, pooling)
    try:
        for batch in batches:
            valid = batch["attention_mask"] > 0
            encoder(batch["input_ids"], batch["attention_mask"])
            for index, layer in enumerate(encoder.layers):
                totals[index] += _head_norms(layer.attention, captured[index], valid)
            tokens += int(valid.sum())
    finally:
        encoder.set_token_pruning(schedule, pooling)
        for hook in hooks:
            hook.remove()
    if tokens == 0:
        raise UserError("head importance needs at least one batch of tokens")
    return totals / tokens


def _capture(store: dict[int, Tensor], index: int) -> Callable[[nn.Module, tuple], None]:
    """A forward pre-hook keeping the output projection's input (the heads' contexts)."""

    def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> None:
        store[index] = args[0]

    return hook


def _head_norms(attention: PrunedMultiheadAttention, context: Tensor, valid: Tensor) -> Tensor:
    """Sum over valid tokens of each head's output-projection contribution norm."""
    heads, dim = attention.num_heads, attention.head_dim
    per_head = context.reshape(*context.shape[:2], heads, dim)  # (N, L, H, d)
    weight = attention.out_proj.weight.reshape(-1, heads, dim)  # (out, H, d)
    contribution = torch.einsum("nlhd,ohd->nlho", per_head, weight)
    return (contribution.norm(dim=-1) * valid[..., None]).sum(dim=(0, 1))


def prune_heads(
    encoder: SentenceEncoder, keep: float, batches: Iterable[dict[str, Tensor]]
) -> SentenceEncoder:
    """A copy of ``encoder`` keeping the ``ceil(keep * heads)`` most important heads of every
    layer (importance from ``batches``)."""
    if not 0.0 < keep <= 1.0:
        raise UserError(f"heads keep ratio {keep!r} is not in (0, 1]")
    importance = head_importance(encoder, batches)
    pruned = clone_module(encoder)
    rule = MultiheadAttentionRule()
    for layer, scores in zip(pruned.layers, importance, strict=True):
        attention = layer.attention
        count = max(1, math.ceil(keep * attention.num_heads))
        heads = scores.topk(count).indices.sort().values
        units = (heads[:, None] * attention.head_dim + torch.arange(attention.head_dim)).flatten()
        layer.attention = rule.shrink(attention, {"heads": units})
    return pruned.eval()
