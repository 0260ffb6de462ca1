"""Sequence classifiers on token ids: a 1-D CNN and a tiny Transformer encoder.

Both take int64 token ids ``(N, L)`` (input kind ``tokens``), embed them, and end in a mean
over positions and one linear classifier, so any length up to ``seq_len`` runs. Widths scale
with ``width_mult`` and are rounded to multiples of 8 (``scale_channels``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobiledl.core.inputs import TOKENS
from mobiledl.models.blocks import scale_channels
from mobiledl.models.registry import register_model


class SeqCNN(nn.Module):
    """Token embedding, 1-D convolutions with batch norm and ReLU, global average pooling.

    The convolutional sentence classifier of Kim 2014, made deeper and narrower: three
    kernel-5 convolutions, the second and third with stride 2.
    """

    def __init__(self, num_classes: int, vocab_size: int, embed_dim: int, widths: tuple[int, ...]):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        layers: list[nn.Module] = []
        channels = embed_dim
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers += [
                nn.Conv1d(channels, width, 5, stride=stride, padding=2, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens).transpose(1, 2)  # (N, E, L): channels first for Conv1d
        return self.classifier(self.features(x).mean(dim=2))


class TinyTransformer(nn.Module):
    """Token and learned position embeddings, pre-norm Transformer encoder layers
    (Vaswani et al. 2017), a final layer norm and the mean over positions."""

    def __init__(
        self,
        num_classes: int,
        vocab_size: int,
        seq_len: int,
        dim: int,
        heads: int = 4,
        depth: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(1, seq_len, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.position[:, : tokens.shape[1]]
        return self.classifier(self.norm(self.encoder(x)).mean(dim=1))


@register_model(
    "seq_cnn",
    description="token embedding, three kernel-5 1-D convs (BN, ReLU, stride 1/2/2), global "
    "average pooling, linear classifier",
    paper="Kim 2014, Convolutional Neural Networks for Sentence Classification",
    inputs=TOKENS,
)
def seq_cnn(num_classes: int, vocab_size: int, seq_len: int, width_mult: float) -> nn.Module:
    """``SeqCNN``; ``seq_len`` is not needed because the net ends in global pooling."""
    del seq_len
    widths = tuple(scale_channels(c, width_mult) for c in (32, 64, 64))
    return SeqCNN(num_classes, vocab_size, scale_channels(32, width_mult), widths)


@register_model(
    "tiny_transformer",
    description="token + learned position embeddings, two pre-norm Transformer encoder layers "
    "(4 heads), mean pooling, linear classifier",
    paper="Vaswani et al. 2017, Attention Is All You Need",
    inputs=TOKENS,
)
def tiny_transformer(
    num_classes: int, vocab_size: int, seq_len: int, width_mult: float
) -> nn.Module:
    """``TinyTransformer`` of width 32 (times ``width_mult``, a multiple of 8)."""
    return TinyTransformer(num_classes, vocab_size, seq_len, scale_channels(32, width_mult))
