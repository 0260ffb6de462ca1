"""Built-in pruning rules for convolutions, linear layers, norms, embeddings and the layers
that keep every channel itself (activations, pooling); see ``rules.py`` for what a rule is.

Removing output channel ``c`` of a convolution removes the matching input channel of every
layer that reads it (Li et al. 2017, "Pruning Filters for Efficient ConvNets", Fig. 2);
a depthwise convolution, a batch norm and other channel-wise layers lose the same channel
on both sides. Two granularities come from how a layer mixes channels:

- a grouped convolution (ResNeXt, Xie et al. 2017) mixes channels only within a group, so a
  group is removed whole: its input channels, its output channels and its kernels;
- GroupNorm (Wu & He 2018) normalizes each group on its own, so its groups are units too;
- LayerNorm (and RMSNorm) normalize over their channels, so removing any of them changes
  every output: those channels stay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mobiledl.compress.prune.rules import ChannelLabels, ParamSlice, PruningRule, builtin_rule

if TYPE_CHECKING:
    from mobiledl.compress.prune.graph import LayerCall

ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
)
SPATIAL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)
CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED_CONV_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CHANNEL_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def channelwise(call: LayerCall, kind: str = "channel") -> ChannelLabels:
    """Flow of a layer that keeps channels on dim 1 and acts on each alone: one slot."""
    x = call.input()
    if x.pdim not in (None, 1):
        call.fail("its input channels are not on dim 1")
    call.register(kind, call.channels(x, 1))
    return x


# ---------------------------------------------------------------------------- convolutions


def _depthwise(module: nn.Module) -> bool:
    return module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _transposed(module: nn.Module) -> bool:
    return isinstance(module, TRANSPOSED_CONV_MODULES)


@builtin_rule(*CONV_MODULES, *TRANSPOSED_CONV_MODULES)
class ConvRule(PruningRule):
    """Convolutions, transposed or not: ``in`` and ``out`` slots; a depthwise one
    (``groups == in == out``) has one ``channel`` slot; any other grouped one is pruned
    by whole groups (input channels, output channels and kernels of a group together)."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        module = call.module
        x = call.input()
        if x.pdim not in (None, 1):
            call.fail("its input channels are not on dim 1")
        in_ids = call.channels(x, 1)
        shape = call.output_shape
        if _depthwise(module):
            call.register("channel", in_ids)
            return call.labels(in_ids, 1, shape)
        if module.groups > 1:
            return self._grouped(call, x, in_ids, shape)
        call.register("in", in_ids)
        return call.labels(call.produce("out", module.out_channels), 1, shape)

    def _grouped(
        self, call: LayerCall, x: ChannelLabels, in_ids: Tensor, shape: torch.Size
    ) -> ChannelLabels:
        module = call.module
        per_in = module.in_channels // module.groups
        per_out = module.out_channels // module.groups
        call.register("in", in_ids)
        out_ids = call.produce("out", module.out_channels)
        call.tie_blocks(out_ids, per_out)
        call.tie(in_ids, out_ids[torch.arange(module.in_channels) // per_in * per_out])
        # whole groups go, so the MACs fall with the groups kept (not with in x out)
        elements = x.ids.numel() if _transposed(module) else math.prod(shape)
        call.cost(elements * module.weight.shape[1] * math.prod(module.kernel_size), ("out",))
        return call.labels(out_ids, 1, shape)

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        bias = [ParamSlice("bias", 0, scored=False)] if module.bias is not None else []
        if kind == "channel":
            return [ParamSlice("weight", 0), *bias]
        weight_dim = int((kind == "in") != _transposed(module))  # (out, in) or (in, out)
        grouped = module.groups > 1  # dim 1 holds one group's channels: a whole group goes
        weight = [] if grouped and weight_dim == 1 else [ParamSlice("weight", weight_dim)]
        return weight + (bias if kind == "out" else [])

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        if "channel" in counts:
            module.in_channels = module.out_channels = module.groups = counts["channel"]
            return
        per_out = module.out_channels // module.groups
        out_channels = counts.get("out", module.out_channels)
        if module.groups > 1:
            module.groups = out_channels // per_out
        module.in_channels = counts.get("in", module.in_channels)
        module.out_channels = out_channels

    def supports_reconstruction(self, module: nn.Module) -> bool:
        return (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )


@builtin_rule(nn.Linear)
class LinearRule(PruningRule):
    """``in`` and ``out`` features on the last dim; a linear layer applied along a dim that
    is not the channel dim (features of another dim) leaves its weights untouched."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        x = call.input()
        last = x.ids.dim() - 1
        shape = (*x.ids.shape[:-1], call.module.out_features)
        if x.pdim not in (None, last):
            return ChannelLabels(x.ids.narrow(last, 0, 1).expand(shape), x.pdim)
        call.register("in", call.channels(x, last))
        return call.labels(call.produce("out", call.module.out_features), last, shape)

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        if kind == "in":
            return [ParamSlice("weight", 1)]
        bias = [ParamSlice("bias", 0, scored=False)] if module.bias is not None else []
        return [ParamSlice("weight", 0), *bias]

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        module.in_features = counts.get("in", module.in_features)
        module.out_features = counts.get("out", module.out_features)

    def supports_reconstruction(self, module: nn.Module) -> bool:
        return True


@builtin_rule(nn.Embedding)
class EmbeddingRule(PruningRule):
    """An embedding table produces its ``embedding_dim`` channels (``out``: weight dim 1);
    with ``max_norm`` each embedding is rescaled over all its channels, so they stay."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        module = call.module
        tokens = call.input()
        shape = (*tokens.ids.shape, module.embedding_dim)
        out_ids = call.produce("out", module.embedding_dim)
        if module.max_norm is not None:
            call.hold(out_ids, "max_norm rescales each embedding over all its channels")
        return call.labels(out_ids, len(shape) - 1, shape)

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        return [ParamSlice("weight", 1)]

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        module.embedding_dim = counts["out"]


# ---------------------------------------------------------------------------- norms


def _affine(module: nn.Module) -> list[ParamSlice]:
    if getattr(module, "weight", None) is None:
        return []
    return [ParamSlice("weight", 0, scored=False), ParamSlice("bias", 0, scored=False)]


def _norm_scale(module: nn.Module) -> Tensor | None:
    weight = getattr(module, "weight", None)
    return None if weight is None else weight.detach().abs().double()


@builtin_rule(*CHANNEL_NORMS)
class ChannelNormRule(PruningRule):
    """Batch and instance norms: statistics and affine parameters per channel."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        return channelwise(call)

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        stats = []
        if getattr(module, "running_mean", None) is not None:
            stats = [
                ParamSlice("running_mean", 0, scored=False, zeroed=False),
                ParamSlice("running_var", 0, scored=False, zeroed=False),
            ]
        return _affine(module) + stats

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        module.num_features = counts["channel"]

    def scale(self, module: nn.Module, kind: str) -> Tensor | None:
        return _norm_scale(module)


@builtin_rule(nn.GroupNorm)
class GroupNormRule(PruningRule):
    """GroupNorm (Wu & He 2018) normalizes each group of channels on its own: a group is
    one unit, so ``num_groups`` falls with the groups removed."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        module = call.module
        x = call.input()
        if x.pdim not in (None, 1):
            call.fail("its input channels are not on dim 1")
        ids = call.channels(x, 1)
        call.tie_blocks(ids, module.num_channels // module.num_groups)
        call.register("channel", ids)
        return x

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        return _affine(module)

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        per_group = module.num_channels // module.num_groups
        module.num_channels = counts["channel"]
        module.num_groups = counts["channel"] // per_group

    def scale(self, module: nn.Module, kind: str) -> Tensor | None:
        return _norm_scale(module)


@builtin_rule(nn.LayerNorm, nn.RMSNorm)
class LayerNormRule(PruningRule):
    """LayerNorm and RMSNorm: their statistics span the normalized (last) dims, so channels
    there stay; a channel dim before them passes through untouched."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        x = call.input()
        normalized = len(call.module.normalized_shape)
        if x.pdim is not None and x.pdim >= x.ids.dim() - normalized:
            call.hold(call.channels(x, x.pdim), "it normalizes over these channels")
        return x


# ---------------------------------------------------------------------------- no weights


@builtin_rule(nn.PReLU)
class PReLURule(PruningRule):
    """One slope for all channels: element-wise; one per channel: channel-wise."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        if call.module.num_parameters == 1:
            return call.elementwise()
        return channelwise(call)

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        return [ParamSlice("weight", 0, scored=False)] if module.num_parameters > 1 else []

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        module.num_parameters = counts["channel"]


@builtin_rule(*ELEMENTWISE_MODULES)
class ElementwiseRule(PruningRule):
    """Layers applied to each value alone (activations, dropout): channels pass through.
    Register it for a custom activation of your own."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        return call.elementwise()


@builtin_rule(*SPATIAL_MODULES)
class SpatialRule(PruningRule):
    """Pooling and resizing: each channel stays a channel; only the dims after it change."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        return call.spatial()


@builtin_rule(nn.Flatten)
class FlattenRule(PruningRule):
    """``nn.Flatten``: the flattened features of each channel follow it."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        module = call.module
        return call.reshape(lambda ids: ids.flatten(module.start_dim, module.end_dim))


@builtin_rule(nn.Softmax, nn.LogSoftmax)
class SoftmaxRule(PruningRule):
    """Softmax over a dim that is not the channel dim; over the channels it is unsupported."""

    def flow(self, call: LayerCall) -> ChannelLabels:
        return call.softmax(call.module.dim)


class ChannelwiseRule(PruningRule):
    """A rule for a custom layer that acts on each channel of dim 1 alone (a learned scale,
    a per-channel bias): ``params`` are its per-channel tensors (indexed on their dim 0),
    ``size_attribute`` the attribute holding the channel count, updated after a cut."""

    def __init__(self, params: Sequence[str], size_attribute: str | None = None) -> None:
        self.params = tuple(params)
        self.size_attribute = size_attribute

    def flow(self, call: LayerCall) -> ChannelLabels:
        return channelwise(call)

    def slices(self, module: nn.Module, kind: str) -> Sequence[ParamSlice]:
        return [ParamSlice(name, 0, scored=False) for name in self.params]

    def resize(self, module: nn.Module, counts: Mapping[str, int]) -> None:
        if self.size_attribute is not None:
            setattr(module, self.size_attribute, counts["channel"])
