"""Pruning rules for attention: whole heads of ``nn.MultiheadAttention``, of the transformer
blocks built on it, and of ``F.scaled_dot_product_attention``.

Most heads of a trained transformer can be removed at a small cost (Michel et al. 2019,
"Are Sixteen Heads Really Better than One?"; Voita et al. 2019). A head is one unit: its
rows of the query, key and value projections and its columns of the output projection go
together, so a head's ``head_dim`` (and the ``1/sqrt(head_dim)`` scale) never changes. The
input channels of the projections and the output channels of ``out_proj`` are slots of
their own, coupled with the layers around the attention like any linear layer's.

``nn.MultiheadAttention`` ties its projection width to ``embed_dim``, so a head-pruned one
becomes a ``PrunedMultiheadAttention``: the same call signature and outputs, separate q/k/v
projections of ``num_heads * head_dim`` features, plain matrix products that export to ONNX.

Transformer blocks (``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``) are one call
to the tracer; their rule runs the rules of their parts: the heads of ``self_attn`` and the
hidden channels of the feed-forward block (``linear1`` / ``linear2``) are pruned, while the
model dim stays because both LayerNorms normalize over it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.compress.prune.rules import (
    ChannelLabels,
    ElementScores,
    PruningRule,
    builtin_rule,
    complement,
    get_tensor,
)
from mobiledl.models.attention import PrunedMultiheadAttention

if TYPE_CHECKING:
    from mobiledl.compress.prune.graph import LayerCall

_ROLES = ("q", "k", "v")
_INPUT_KINDS = {"q": "in", "k": "key", "v": "value"}


# ---------------------------------------------------------------------------- projections


def _weight_names(module: nn.Module) -> dict[str, tuple[str, int | None]]:
    """For each projection (q, k, v, out): its weight's name and, for a packed
    ``in_proj_weight``, which third of it."""
    if isinstance(module, PrunedMultiheadAttention):
        return {role: (f"{role}_proj.weight", None) for role in (*_ROLES, "out")}
    names: dict[str, tuple[str, int | None]] = {"out": ("out_proj.weight", None)}
    for index, role in enumerate(_ROLES):
        packed = module._qkv_same_embed_dim
        names[role] = ("in_proj_weight", index) if packed else (f"{role}_proj_weight", None)
    return names


def _bias_names(module: nn.Module) -> dict[str, tuple[str, int | None]]:
    if isinstance(module, PrunedMultiheadAttention):
        return {role: (f"{role}_proj.bias", None) for role in (*_ROLES, "out")}
    return {
        "out": ("out_proj.bias", None),
        **{r: ("in_proj_bias", i) for i, r in enumerate(_ROLES)},
    }


def _part(tensor: Tensor | None, third: int | None) -> Tensor | None:
    """A projection's view of a (possibly packed) tensor."""
    if tensor is None or third is None:
        return tensor
    return tensor.chunk(3)[third]


def _projection(module: nn.Module, role: str) -> tuple[Tensor, Tensor | None]:
    """Weight and bias (views into the module's tensors) of one projection."""
    weight_name, third = _weight_names(module)[role]
    bias_name, bias_third = _bias_names(module)[role]
    weight = _part(get_tensor(module, weight_name), third)
    assert weight is not None
    return weight, _part(get_tensor(module, bias_name), bias_third)


#: For each projection, the slot kind that indexes each dim of its weight (rows, columns).
_CUTS: dict[str, list[tuple[int, str]]] = {
    **{role: [(0, "heads"), (1, _INPUT_KINDS[role])] for role in _ROLES},
    "out": [(0, "out"), (1, "heads")],
}


# ---------------------------------------------------------------------------- rules


@builtin_rule(nn.MultiheadAttention, PrunedMultiheadAttention)
class MultiheadAttentionRule(PruningRule):
    """Slots: ``in`` / ``key`` / ``value`` (the query, key and value inputs' channels),
    ``heads`` (the projections' ``num_heads * head_dim`` features, a head being one unit)
    and ``out`` (the output channels of ``out_proj``)."""

    def flow(self, call: LayerCall) -> tuple[ChannelLabels, None]:
        module = call.module
        inputs = [call.input(i, name) for i, name in enumerate(("query", "key", "value"))]
        for labels in inputs:
            if labels.pdim not in (None, labels.ids.dim() - 1):
                call.fail("its inputs' channels are not on the last dim")
        if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
            call.fail("add_bias_kv and add_zero_attn are not supported")
        for role, labels in zip(_ROLES, inputs, strict=True):
            call.register(_INPUT_KINDS[role], call.channels(labels, labels.ids.dim() - 1))
        heads = call.fresh(module.num_heads).repeat_interleave(module.head_dim)
        call.register("heads", heads)
        self._hold_heads(call, heads)
        out_dim = _projection(module, "out")[0].shape[0]
        shape = (*inputs[0].ids.shape[:-1], out_dim)
        self._costs(call, inputs, out_dim)
        return call.labels(call.produce("out", out_dim), len(shape) - 1, shape), None

    @staticmethod
    def _hold_heads(call: LayerCall, heads: Tensor) -> None:
        mask = call.argument(5, "attn_mask")
        if isinstance(mask, Tensor) and mask.dim() == 3:
            call.hold(heads, "its attn_mask holds one mask per head")
        if call.argument(4, "need_weights", True) and call.output_used(1):
            call.hold(heads, "the attention weights it returns are averaged over its heads")

    @staticmethod
    def _costs(call: LayerCall, inputs: list[ChannelLabels], out_dim: int) -> None:
        """MACs of the projections, the two attention products and ``out_proj``."""
        module = call.module
        query, key = inputs[0].ids, inputs[1].ids
        rows_q, rows_k = math.prod(query.shape[:-1]), math.prod(key.shape[:-1])
        batch_first = module.batch_first and query.dim() == 3
        sources = key.shape[1] if batch_first else key.shape[0]
        inner = module.num_heads * module.head_dim
        for role, rows, labels in zip(_ROLES, (rows_q, rows_k, rows_k), inputs, strict=True):
            call.cost(rows * labels.ids.shape[-1] * inner, (_INPUT_KINDS[role], "heads"))
        call.cost(2 * rows_q * sources * inner, ("heads",))
        call.cost(rows_q * inner * out_dim, ("heads", "out"))

    def scored_params(self, module: nn.Module, kind: str) -> list[str]:
        names = _weight_names(module)
        roles = [r for r, cuts in _CUTS.items() if any(k == kind for _, k in cuts)]
        return list(dict.fromkeys(names[role][0] for role in roles))

    def scores(self, module: nn.Module, kind: str, element: ElementScores) -> Tensor | None:
        total = None
        for role, cuts in _CUTS.items():
            name, third = _weight_names(module)[role]
            scores = _part(element(name), third)
            for dim, cut_kind in cuts:
                if cut_kind == kind and scores is not None:
                    per_index = scores.detach().transpose(0, dim).flatten(1).sum(1).double()
                    total = per_index if total is None else total + per_index
        return total

    @torch.no_grad()
    def mask(self, module: nn.Module, kept: Mapping[str, Tensor]) -> None:
        for role, cuts in _CUTS.items():
            weight, bias = _projection(module, role)
            for dim, kind in cuts:
                if kind not in kept:
                    continue
                removed = complement(kept[kind], weight.shape[dim])
                weight.index_fill_(dim, removed, 0.0)
                if dim == 0 and bias is not None:
                    bias.index_fill_(0, removed, 0.0)

    def shrink(self, module: nn.Module, kept: Mapping[str, Tensor]) -> nn.Module:
        weights = {role: _projection(module, role) for role in (*_ROLES, "out")}
        sizes = {
            "in": weights["q"][0].shape[1],
            "key": weights["k"][0].shape[1],
            "value": weights["v"][0].shape[1],
            "heads": weights["q"][0].shape[0],
            "out": weights["out"][0].shape[0],
        }
        index = {kind: kept.get(kind, torch.arange(size)) for kind, size in sizes.items()}
        new = PrunedMultiheadAttention(
            len(index["in"]),
            len(index["heads"]) // module.head_dim,
            module.head_dim,
            kdim=len(index["key"]),
            vdim=len(index["value"]),
            out_dim=len(index["out"]),
            bias=weights["q"][1] is not None,
            out_bias=weights["out"][1] is not None,
            dropout=module.dropout,
            batch_first=module.batch_first,
        ).to(weights["q"][0])
        for role, cuts in _CUTS.items():
            _copy_projection(getattr(new, f"{role}_proj"), weights[role], cuts, index)
        return new.train(module.training)


def _copy_projection(
    target: nn.Linear,
    source: tuple[Tensor, Tensor | None],
    cuts: list[tuple[int, str]],
    index: Mapping[str, Tensor],
) -> None:
    weight, bias = source
    rows, columns = (index[kind] for _, kind in sorted(cuts))
    with torch.no_grad():
        target.weight.copy_(weight[rows][:, columns])
        if bias is not None:
            target.bias.copy_(bias[rows])
    target.weight.requires_grad_(weight.requires_grad)
    if bias is not None:
        target.bias.requires_grad_(bias.requires_grad)


@builtin_rule(nn.TransformerEncoderLayer)
class TransformerEncoderLayerRule(PruningRule):
    """The heads of ``self_attn`` and the hidden channels of ``linear1`` -> ``linear2``; the
    model dim stays (both LayerNorms normalize over it, and it is the residual stream)."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        x = call.input(0, "src")
        last = x.ids.dim() - 1
        if x.pdim not in (None, last):
            call.fail("its input's channels are not on the last dim")
        model_dim = call.channels(x, last)
        call.hold(model_dim, "its LayerNorms normalize over the model dim")
        mask = call.argument(1, "src_mask")
        attended, _ = call.call("self_attn", x, x, x, attn_mask=mask, need_weights=False)
        call.tie(call.channels(attended, last), model_dim)
        hidden = call.call("linear1", x)
        output = call.call("linear2", hidden)
        call.tie(call.channels(output, last), model_dim)
        return x


@builtin_rule(nn.TransformerEncoder)
class TransformerEncoderRule(PruningRule):
    """Each layer's rule in turn (each holds the model dim, so the final norm adds nothing)."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        x = call.input(0, "src")
        mask = call.argument(1, "mask")
        for index in range(len(call.module.layers)):
            x = call.call(f"layers.{index}", x, mask)
        return x

    def after_surgery(self, module: nn.Module) -> None:
        """Head-pruned layers cannot take the nested-tensor fast path."""
        if any(isinstance(layer.self_attn, PrunedMultiheadAttention) for layer in module.layers):
            module.use_nested_tensor = False


@builtin_rule(F.scaled_dot_product_attention)
class ScaledDotProductAttentionRule(PruningRule):
    """``F.scaled_dot_product_attention(q, k, v)`` on ``(..., heads, L, head_dim)`` tensors:
    head ``h`` of the query, key and value is one unit. Split the heads with
    ``view(N, L, -1, head_dim)`` so the head count can shrink. With an explicit ``scale``,
    a channel dim on ``head_dim`` (tied across q and k) is supported too."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        q, k, v = (call.input(i, name) for i, name in enumerate(("query", "key", "value")))
        ndim = q.ids.dim()
        if call.argument(7, "enable_gqa", False) or not ndim == k.ids.dim() == v.ids.dim() >= 3:
            call.fail("grouped-query attention and unbatched heads are not supported")
        pdims = {labels.pdim for labels in (q, k, v)} - {None}
        head_dim, scaled = ndim - 1, call.argument(6, "scale") is not None
        if pdims not in (set(), {ndim - 3}, {head_dim}) or (pdims == {head_dim} and not scaled):
            call.fail("its channels must lie on the heads dim (or, with a scale, head_dim)")
        dim = pdims.pop() if pdims else ndim - 3
        channels = call.channels(v, dim)
        call.tie(call.channels(q, dim), call.channels(k, dim))
        if dim == ndim - 3:
            call.tie(call.channels(q, dim), channels)
            self._cost(call, q, k, v)
        return call.labels(channels, dim, call.output_shape)

    @staticmethod
    def _cost(call: LayerCall, q: ChannelLabels, k: ChannelLabels, v: ChannelLabels) -> None:
        """``QK^T`` and ``AV`` (counted in the module the call runs in) fall with the heads."""
        macs = math.prod(q.ids.shape[:-1]) * k.ids.shape[-2] * (q.ids.shape[-1] + v.ids.shape[-1])
        call.owner_cost(macs, call.channels(q, q.ids.dim() - 3))
