"""``PrunedMultiheadAttention``: multi-head attention whose head count and widths are free.

``nn.MultiheadAttention`` ties its projection width to ``embed_dim``, so a head-pruned one
(Michel et al. 2019, "Are Sixteen Heads Really Better than One?") cannot be expressed with
it. This module has the same call signature and outputs, separate q/k/v projections of
``num_heads * head_dim`` features and plain matrix products that export to ONNX. The pruning
rule that removes its heads lives in ``mobiledl.compress.prune.attention``; models (the
sentence encoder of ``mobiledl.apps.nlp``) build on the module directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``num_heads`` heads of ``head_dim`` whose input widths
    (``embed_dim`` for the query, ``kdim``, ``vdim``) and output width (``out_dim``) need
    not equal ``num_heads * head_dim``. Call it like ``nn.MultiheadAttention``: it returns
    ``(output, weights)`` (``weights`` is ``None`` unless ``need_weights``)."""

    _qkv_same_embed_dim = False  # keeps nn.Transformer* layers off their fused fast path
    in_proj_weight = None
    in_proj_bias = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        out_dim: int | None = None,
        bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.out_dim = out_dim or embed_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, self.out_dim, bias=out_bias)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        query, key, value = (self._batch_first(t, batched) for t in (query, key, value))
        if key_padding_mask is not None and not batched:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        q, k, v = (
            self._split(self.q_proj(query)),
            self._split(self.k_proj(key)),
            self._split(self.v_proj(value)),
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = self._masked(scores, attn_mask, key_padding_mask, is_causal)
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        heads = (weights @ v).transpose(1, 2)
        output = self.out_proj(heads.reshape(heads.shape[0], heads.shape[1], -1))
        output = output if batched else output.squeeze(0)
        if batched and not self.batch_first:
            output = output.transpose(0, 1)
        if not need_weights:
            return output, None
        weights = weights.mean(1) if average_attn_weights else weights
        return output, weights if batched else weights.squeeze(0)

    def _batch_first(self, x: Tensor, batched: bool) -> Tensor:
        if not batched:
            return x.unsqueeze(0)
        return x if self.batch_first else x.transpose(0, 1)

    def _split(self, x: Tensor) -> Tensor:
        """``(N, L, heads * head_dim)`` -> ``(N, heads, L, head_dim)``."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _masked(
        self,
        scores: Tensor,
        attn_mask: Tensor | None,
        key_padding_mask: Tensor | None,
        is_causal: bool,
    ) -> Tensor:
        if attn_mask is None and is_causal:
            length, source = scores.shape[-2:]
            attn_mask = torch.ones(length, source, dtype=torch.bool).triu(1)
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # one mask per (sample, head)
                attn_mask = attn_mask.reshape(-1, self.num_heads, *attn_mask.shape[1:])
            scores = _apply_mask(scores, attn_mask)
        if key_padding_mask is not None:
            scores = _apply_mask(scores, key_padding_mask[:, None, None, :])
        return scores


def _apply_mask(scores: Tensor, mask: Tensor) -> Tensor:
    """``True`` entries of a boolean mask are left out; a float mask is added."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask
