"""Pruning rules on user-style models: attention heads, transformer blocks, grouped
convolutions, GroupNorm, channel slicing, dense and encoder-decoder concatenation, a rule a
user registers for a layer of their own, and strict mode."""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl import apply
from mobiledl.compress.prune import (
    ChannelPruneConfig,
    ParamSlice,
    PrunedMultiheadAttention,
    PruningRule,
    register_pruning_rule,
    rule_for,
)
from mobiledl.compress.prune.channel import plan_channels, prune_channels
from mobiledl.compress.prune.graph import build_dependency_graph
from mobiledl.compress.prune.surgery import mask_channels
from mobiledl.data import Task
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.profile import count_macs

pytestmark = pytest.mark.usefixtures("single_thread")


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm scales and shifts, so pruned channels matter; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            with torch.no_grad():
                shape = module.weight.shape
                module.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.2)
    return model.eval()


def output(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model.eval()(x)


def macs_ratio(pruned: nn.Module, model: nn.Module, x: Tensor) -> float:
    return count_macs(pruned, x[:1]) / count_macs(model, x[:1])


def prune_to_half(model: nn.Module, x: Tensor, **kwargs) -> tuple[nn.Module, float]:
    """Prune to half the MACs; the target is met within 2%, or exactly one warning says by
    how much it is missed. The result equals the masked model and runs in ONNX Runtime."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plan = plan_channels(model, x, "l1", macs_ratio=0.5, **kwargs)
        pruned = prune_channels(model, x, "l1", macs_ratio=0.5, **kwargs)
    ratio = macs_ratio(pruned, model, x)
    messages = [str(w.message) for w in record if issubclass(w.category, UserWarning)]
    if abs(ratio - 0.5) <= 0.02 * 0.5:
        assert messages == []
    else:
        assert len(messages) == 2  # one from plan_channels, one from prune_channels
        assert messages[0] == messages[1] and f"keeps {ratio:.3f} of the MACs" in messages[0]
    masked = mask_channels(copy.deepcopy(model), plan.graph, plan.keep)
    expected = output(masked, x)
    assert (output(pruned, x) - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
    assert_runs_in_onnxruntime(pruned, x)
    return pruned, ratio


def assert_runs_in_onnxruntime(model: nn.Module, x: Tensor) -> None:
    engine = get_engine("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        path = engine.export(model.eval(), x, Path(tmp) / "model.onnx")
        assert engine.parity_check(model, path, x) <= 1e-4


# ---------------------------------------------------------------------------- attention


class TokenTransformer(nn.Module):
    """Token ids -> embedding -> nn.TransformerEncoderLayer -> mean -> classifier."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(50, 32)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
        self.classifier = nn.Linear(32, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        h = self.encoder(h if self.batch_first else h.transpose(0, 1))
        h = h if self.batch_first else h.transpose(0, 1)
        return self.classifier(h.mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_loses_heads_and_hidden_channels_to_half_the_macs(
    batch_first: bool,
) -> None:
    torch.manual_seed(0)
    model = TokenTransformer(batch_first).eval()
    tokens = torch.randint(0, 50, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every pattern is mapped and the target is met
        pruned = prune_channels(model, tokens, "l1", macs_ratio=0.5, strict=True)
    assert macs_ratio(pruned, model, tokens) == pytest.approx(0.5, rel=0.02)
    attention = pruned.encoder.self_attn
    assert isinstance(attention, PrunedMultiheadAttention)
    assert attention.num_heads < 4 and attention.head_dim == 8
    assert pruned.encoder.linear1.out_features < 64
    assert pruned.embed.embedding_dim == 32  # the model dim: both LayerNorms normalize it
    plan = plan_channels(model, tokens, "l1", macs_ratio=0.5, strict=True)
    masked = mask_channels(copy.deepcopy(model), plan.graph, plan.keep)
    assert (output(pruned, tokens) - output(masked, tokens)).abs().max() <= 1e-5
    assert_runs_in_onnxruntime(pruned, tokens)


class ConvAttention(nn.Module):
    """nn.MultiheadAttention on the positions of a conv stem, with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.attention = nn.MultiheadAttention(64, 8, batch_first=True)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x).flatten(2).transpose(1, 2)
        attended, _ = self.attention(h, h, h)
        return self.classifier((attended + h).mean(1))


def test_multihead_attention_after_a_conv_stem_prunes_heads_and_the_stem() -> None:
    torch.manual_seed(0)
    model = randomized(ConvAttention())
    pruned, _ = prune_to_half(model, torch.randn(2, 3, 8, 8), strict=True)
    attention = pruned.attention
    assert attention.num_heads < 8 and attention.embed_dim == pruned.stem[0].out_channels < 64


def test_pruned_attention_matches_multihead_attention_with_masks_and_weights() -> None:
    torch.manual_seed(0)
    for batch_first in (True, False):
        original = nn.MultiheadAttention(16, 4, kdim=12, vdim=10, batch_first=batch_first).eval()
        copy_ = rule_for(original).shrink(original, {})  # nothing removed: the same function
        q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 12), torch.randn(2, 7, 10)
        if not batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        padding = torch.tensor([[False] * 6 + [True], [False] * 7])
        mask = torch.rand(5, 7) > 0.8
        for kwargs in ({}, {"key_padding_mask": padding, "attn_mask": mask}):
            expected, expected_weights = original(q, k, v, **kwargs)
            actual, weights = copy_(q, k, v, **kwargs)
            assert torch.allclose(actual, expected, atol=1e-6)
            assert torch.allclose(weights, expected_weights, atol=1e-6)


class SdpaBlock(nn.Module):
    """Attention written with F.scaled_dot_product_attention, heads split with view(-1)."""

    def __init__(self, dim: int = 64, head_dim: int = 8) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head_dim = head_dim

    def forward(self, x: Tensor) -> Tensor:
        n, length, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(n, length, -1, self.head_dim).transpose(1, 2)
        k = k.view(n, length, -1, self.head_dim).transpose(1, 2)
        v = v.view(n, length, -1, self.head_dim).transpose(1, 2)
        heads = F.scaled_dot_product_attention(q, k, v)
        return self.proj(heads.transpose(1, 2).reshape(n, length, -1))


class TinyViT(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.attention = SdpaBlock(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = h + self.attention(self.norm(h))
        return self.head((h + self.mlp(h)).mean(1))


def test_scaled_dot_product_attention_loses_whole_heads() -> None:
    torch.manual_seed(0)
    model = TinyViT().eval()
    pruned, ratio = prune_to_half(model, torch.randn(2, 3, 32, 32), strict=True)
    assert ratio == pytest.approx(0.5, rel=0.02)
    assert pruned.attention.qkv.out_features % (3 * 8) == 0  # whole heads of q, k and v
    assert pruned.attention.qkv.out_features < 3 * 64 and pruned.patch.out_channels == 64


# ---------------------------------------------------------------------------- convolutions


class ResNeXtBlock(nn.Module):
    def __init__(self, channels: int, width: int, groups: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width))
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=groups)
        self.norm = nn.GroupNorm(groups * 2, width)
        self.expand = nn.Sequential(nn.Conv2d(width, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm(self.grouped(F.relu(self.reduce(x)))))
        return F.relu(x + self.expand(h))


class ResNeXt(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.blocks = nn.Sequential(ResNeXtBlock(64, 64, groups), ResNeXtBlock(64, 64, groups))
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("groups", [4, 8])
def test_grouped_convolutions_lose_whole_groups(groups: int) -> None:
    torch.manual_seed(0)
    model = randomized(ResNeXt(groups))
    pruned, _ = prune_to_half(model, torch.randn(2, 3, 8, 8), strict=True, round_to=4)
    for before, after in zip(model.blocks, pruned.blocks, strict=True):
        conv = after.grouped
        assert conv.in_channels // conv.groups == before.grouped.in_channels // groups
        assert after.norm.num_channels // after.norm.num_groups == 64 // (groups * 2)
    assert any(block.grouped.groups < groups for block in pruned.blocks)


class GhostModule(nn.Module):
    """GhostNet: a primary conv, a cheap depthwise conv of it, concatenated and sliced."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        primary = (out_channels + 1) // 2
        self.primary = nn.Sequential(nn.Conv2d(in_channels, primary, 1), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(primary, primary, 3, padding=1, groups=primary))

    def forward(self, x: Tensor) -> Tensor:
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.out_channels]


class GhostNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.ghosts = nn.Sequential(GhostModule(16, 31), GhostModule(31, 48), GhostModule(48, 33))
        self.classifier = nn.Linear(33, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.ghosts(F.relu(self.stem(x))).mean((2, 3)))


def test_channel_slicing_after_cat_prunes_and_removes_the_sliced_off_channels() -> None:
    torch.manual_seed(0)
    model = GhostNet().eval()
    pruned, ratio = prune_to_half(model, torch.randn(2, 3, 16, 16), strict=True)
    assert ratio == pytest.approx(0.5, rel=0.02)
    for ghost in pruned.ghosts:  # odd widths: the channel cut off by the slice is gone
        assert 2 * ghost.primary[0].out_channels <= ghost.out_channels


def test_slices_of_a_tensor_read_twice_keep_their_offsets() -> None:
    class Split(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 1)
            self.left, self.right = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            h = self.conv(x)
            return self.left(h[:, :16]) + self.right(h[:, 16:])

    model = Split().eval()
    x = torch.randn(2, 3, 4, 4)
    graph = build_dependency_graph(model, x)
    assert any("takes channels 0:16 at fixed offsets" in reason for reason in graph.held)
    pruned = prune_channels(model, x, sparsity=0.5, round_to=1)
    assert pruned.conv.out_channels == 24 and pruned.left.in_channels == 16
    assert_runs_in_onnxruntime(pruned, x)


class DenseNet(nn.Module):
    """Every layer sees the concatenation of all before it (growth 12)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(16 + 12 * i), nn.ReLU(), nn.Conv2d(16 + 12 * i, 12, 3, 1, 1)
            )
            for i in range(4)
        )
        self.transition = nn.Conv2d(64, 32, 1)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.classifier(F.relu(self.transition(x)).mean((2, 3)))


class UNet(nn.Module):
    """Encoder-decoder with skip concatenations; up by ConvTranspose2d and by interpolation."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.middle = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1), nn.ReLU())
        self.dec1 = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.enc1(x)
        b = self.enc2(F.max_pool2d(a, 2))
        m = self.middle(F.max_pool2d(b, 2))
        u = self.dec2(torch.cat([self.up2(m), b], 1))
        u = torch.cat([F.interpolate(u, scale_factor=2.0, mode="bilinear"), a], 1)
        return self.head(self.dec1(u))


@pytest.mark.parametrize("architecture", [DenseNet, UNet])
def test_dense_and_encoder_decoder_concatenation_meet_the_target(architecture: type) -> None:
    torch.manual_seed(0)
    model = randomized(architecture())
    _, ratio = prune_to_half(model, torch.randn(2, 3, 16, 16), strict=True)
    assert ratio == pytest.approx(0.5, rel=0.02)


def test_a_missed_target_is_one_warning_saying_by_how_much_and_why() -> None:
    torch.manual_seed(0)
    model = randomized(ResNeXt(4))
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruned = prune_channels(model, x, "l1", macs_ratio=0.05, round_to=16)
    (warning,) = record
    ratio = macs_ratio(pruned, model, x)
    assert f"macs_ratio 0.05 not met: the pruned model keeps {ratio:.3f}" in str(warning.message)
    assert "even the most pruning allowed" in str(warning.message)
    assert "blocks.0.reduce.0 (keeps 16, 32, 48 or 64 of 64 channels)" in str(warning.message)
    with pytest.raises(UserError, match="not met.*strict"):
        prune_channels(model, x, "l1", macs_ratio=0.05, round_to=16, strict=True)


# ---------------------------------------------------------------------------- user rules


class ScaledConv(nn.Module):
    """A user's layer: a 3x3 convolution with a learned scale per output channel, whose
    forward torch.fx cannot trace (it branches on the data)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3) * 0.2)
        self.scale = nn.Parameter(torch.rand(out_channels) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight, padding=1)
        if y.abs().amax() > 1e6:
            y = y / y.abs().amax()
        return y * self.scale[:, None, None]


class ScaledConvRule(PruningRule):
    """Input channels are weight dim 1; output channels weight dim 0 and the scale."""

    calls = 0

    def flow(self, call):
        ScaledConvRule.calls += 1
        x = call.input()
        call.register("in", call.channels(x, 1))
        out = call.produce("out", call.module.weight.shape[0])
        return call.labels(out, 1, call.output_shape)

    def slices(self, module, kind):
        if kind == "in":
            return [ParamSlice("weight", 1)]
        return [ParamSlice("weight", 0), ParamSlice("scale", 0, scored=False)]


class UserNet(nn.Module):
    def __init__(self, layer: type[nn.Module] = ScaledConv) -> None:
        super().__init__()
        self.first = layer(3, 16)
        self.second = layer(16, 16)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = self.second(F.relu(self.first(x)))
        return self.classifier(F.relu(h).mean((2, 3)))


def test_a_registered_rule_prunes_a_custom_layer() -> None:
    class Unregistered(ScaledConv):
        pass

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match="UserNet cannot be traced"):
        prune_channels(UserNet(Unregistered), x, sparsity=0.5)  # fx traces into its forward
    model = UserNet().eval()
    register_pruning_rule(ScaledConv, ScaledConvRule())
    pruned = prune_channels(model, x, "l2", sparsity=0.5, strict=True)
    assert ScaledConvRule.calls >= 2
    assert pruned.first.weight.shape == (8, 3, 3, 3) and pruned.first.scale.shape == (8,)
    assert pruned.second.weight.shape == (8, 8, 3, 3) and pruned.classifier.in_features == 8
    plan = plan_channels(model, x, "l2", sparsity=0.5)
    masked = mask_channels(copy.deepcopy(model), plan.graph, plan.keep)
    assert (output(pruned, x) - output(masked, x)).abs().max() <= 1e-5


# ---------------------------------------------------------------------------- strict mode


class WithLocalResponseNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(2)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.lrn(self.conv(x)))


def test_strict_mode_raises_on_a_layer_without_a_rule_naming_it() -> None:
    model, x = WithLocalResponseNorm().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(UserError, match="layer 'lrn' \\(LocalResponseNorm\\).*no pruning rule"):
        prune_channels(model, x, sparsity=0.5, strict=True)
    data = [torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))] * 3
    with pytest.raises(UserError, match="layer 'lrn'"):
        apply(model, ChannelPruneConfig(sparsity=0.5, strict=True), Task("toy", 2, *data))
    with pytest.warns(UserWarning, match="layer 'lrn'") as record:
        prune_channels(model, x, sparsity=0.5)
    assert len(record) == 1


def test_embedding_channels_are_pruned_without_a_norm_over_them() -> None:
    class TextConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(30, 32)
            self.conv = nn.Conv1d(32, 32, 3, padding=1)
            self.classifier = nn.Linear(32, 4)

        def forward(self, tokens: Tensor) -> Tensor:
            h = F.relu(self.conv(self.embed(tokens).transpose(1, 2)))
            return self.classifier(h.amax(2))

    torch.manual_seed(0)
    model = TextConv().eval()
    tokens = torch.randint(0, 30, (2, 12))
    pruned, _ = prune_to_half(model, tokens, strict=True)
    assert pruned.embed.embedding_dim == pruned.conv.in_channels < 32


def test_a_rule_that_fails_is_an_error_in_strict_mode() -> None:
    class Fragile(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.conv(x)

    class FailingRule(PruningRule):
        def flow(self, call):
            raise KeyError("a bug in the rule")

    register_pruning_rule(Fragile, FailingRule())
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Fragile(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(UserError, match="layer '1' \\(Fragile\\).*KeyError.*a bug in the rule"):
        prune_channels(model, x, sparsity=0.5, strict=True)
    with pytest.warns(UserWarning, match="layer '1' \\(Fragile\\)"):
        pruned = prune_channels(model, x, sparsity=0.5)
    assert pruned[0].out_channels == 8  # its channels stay: the model is never left broken
