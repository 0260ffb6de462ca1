"""Pruning configs: ``PruneConfig`` (weight masks) and ``ChannelPruneConfig`` (physical removal).

Both are ``MethodConfig``s (typed, frozen, versioned): ``apply(model, PruneConfig(...), task)``
zeroes weights, ``apply(model, ChannelPruneConfig(...), task)`` returns a smaller dense model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from mobiledl.compress.prune.criteria import CRITERIA
from mobiledl.compress.prune.granularity import Granularity
from mobiledl.core.config import LayerRule, MethodConfig
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig
from mobiledl.validate import check_number

SCHEDULES = ("oneshot", "iterative", "agp", "lottery")
CHANNEL_CRITERIA = ("l1", "l2", "bn", "bn_scale", "taylor", "hessian", "reconstruction")
#: What ``sparsity`` is when neither ``sparsity`` nor ``macs_ratio`` is given.
DEFAULT_SPARSITY = 0.5
#: What ``macs_ratio`` is for channel pruning when neither is given.
DEFAULT_MACS_RATIO = 0.5


def _quiet_finetune() -> TrainConfig:
    return TrainConfig(epochs=0, progress=False)


def _check_amount(sparsity: float | dict[str, float] | None, macs_ratio: float | None) -> None:
    if sparsity is not None and macs_ratio is not None:
        raise UserError("set one of sparsity and macs_ratio, not both")
    if macs_ratio is not None and not (math.isfinite(macs_ratio) and 0.0 < macs_ratio <= 1.0):
        raise UserError(f"macs_ratio must lie in (0, 1]; got {macs_ratio}")
    values = sparsity.values() if isinstance(sparsity, dict) else [sparsity]
    for value in values:
        if value is not None and not 0.0 <= value < 1.0:
            raise UserError(f"sparsity must lie in [0, 1); got {value}")


def _check_common(num_batches: int, slimming_epochs: int, bn_l1: float) -> None:
    if num_batches < 1:
        raise UserError(f"num_batches must be >= 1; got {num_batches}")
    if slimming_epochs < 0 or not (math.isfinite(bn_l1) and bn_l1 >= 0):
        raise UserError("slimming_epochs and bn_l1 must be >= 0")


@dataclass(frozen=True, kw_only=True)
class PruneConfig(MethodConfig):
    """Zero weights at a granularity, chosen by a criterion, on a schedule (weight masks).

    Set one of ``sparsity`` and ``macs_ratio`` (neither: ``sparsity`` 0.5), except for ``N:M``
    granularities whose pattern fixes the sparsity.

    - ``granularity``: ``element``, ``vector``, ``kernel``, ``filter`` or ``N:M`` (e.g.
      ``2:4``); see ``granularity.py``. Physical channel removal is ``ChannelPruneConfig``.
    - ``criterion``: ``l1``, ``l2``, ``taylor``, ``hessian`` or ``bn`` (see ``criteria.py``).
    - ``sparsity``: fraction of prunable weights to zero, or a dict from weight name
      (``"features.0.weight"``) to that layer's sparsity, e.g. from ``allocate_sparsity``.
    - ``macs_ratio``: keep this fraction of the MACs of convolution and linear layers, counting
      only multiplications by non-zero weights (zeros do not speed up a dense engine; only
      channel pruning turns MACs into latency).
    - ``scope``: ``global`` ranks all layers together, ``layer`` prunes each to ``sparsity``.
    - ``schedule``: ``oneshot``, ``iterative``, ``agp`` or ``lottery`` (see ``schedules.py``).
    - ``steps``: pruning rounds (``iterative``, ``lottery``) or pruning events (``agp``).
    - ``finetune``: training after each pruning round (``iterative``, ``lottery``), after the
      cut (``oneshot``) or during the whole schedule (``agp``).
    - ``agp_ramp``: fraction of the AGP training steps over which sparsity rises.
    - ``rewind_epochs``: where ``lottery`` rewinds the surviving weights to (0 = initial).
    - ``exclude``: module names never pruned (e.g. ``("classifier",)``).
    - ``num_batches``: training batches that ``taylor`` and ``hessian`` estimate from.
    - ``slimming_epochs`` / ``bn_l1``: before pruning, train this many epochs with an L1
      penalty of strength ``bn_l1`` on BatchNorm scales (network slimming, Liu et al. 2017).
    - ``keep_masks``: return the model with masks still attached (for more masked training;
      call ``remove_masks`` before saving) instead of plain zero weights.
    - ``overrides``: per-layer ``sparsity`` (or ``skip``) for the layers a rule matches.
    """

    method: ClassVar[str] = "prune"
    layer_fields: ClassVar[tuple[str, ...]] = ("sparsity",)

    granularity: str = "element"
    criterion: str = "l1"
    sparsity: float | dict[str, float] | None = None
    macs_ratio: float | None = None
    scope: Literal["global", "layer"] = "global"
    schedule: Literal["oneshot", "iterative", "agp", "lottery"] = "oneshot"
    steps: int = 5
    finetune: TrainConfig = field(default_factory=_quiet_finetune)
    agp_ramp: float = 0.75
    rewind_epochs: float = 0.0
    exclude: tuple[str, ...] = ()
    num_batches: int = 8
    slimming_epochs: int = 0
    bn_l1: float = 1e-4
    keep_masks: bool = False
    overrides: tuple[LayerRule, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        parsed = self.parsed_granularity
        if parsed.kind == "channel":
            raise UserError(
                "granularity 'channel' removes channels physically: use ChannelPruneConfig"
            )
        if self.criterion not in CRITERIA:
            raise UserError(
                f"unknown criterion '{self.criterion}'; choose one of {', '.join(CRITERIA)}"
            )
        if parsed.kind == "nm":
            if self.sparsity is not None or self.macs_ratio is not None:
                raise UserError(
                    f"granularity {parsed} fixes the sparsity at {parsed.pattern_sparsity:g}; "
                    "leave sparsity and macs_ratio unset"
                )
        elif self.sparsity is None and self.macs_ratio is None:
            object.__setattr__(self, "sparsity", DEFAULT_SPARSITY)
        _check_amount(self.sparsity, self.macs_ratio)
        _check_common(self.num_batches, self.slimming_epochs, self.bn_l1)
        self._check_schedule()

    @property
    def parsed_granularity(self) -> Granularity:
        return Granularity.parse(self.granularity)

    @property
    def ranking_scope(self) -> str:
        return self.scope

    def _check_schedule(self) -> None:
        if self.steps < 1:
            raise UserError(f"steps must be >= 1; got {self.steps}")
        if not 0.0 < self.agp_ramp <= 1.0:
            raise UserError(f"agp_ramp must lie in (0, 1]; got {self.agp_ramp}")
        if self.schedule != "oneshot" and self.finetune.epochs < 1:
            raise UserError(f"schedule '{self.schedule}' needs finetune epochs >= 1")
        check_number(self.rewind_epochs, "rewind_epochs", 0.0)
        if self.schedule == "lottery" and not self.rewind_epochs < self.finetune.epochs:
            raise UserError(
                f"rewind_epochs must lie in [0, finetune epochs = {self.finetune.epochs}); "
                f"got {self.rewind_epochs}"
            )


@dataclass(frozen=True, kw_only=True)
class ChannelPruneConfig(MethodConfig):
    """Remove channels physically through the dependency graph, then fine-tune.

    Set one of ``sparsity`` and ``macs_ratio`` (neither: ``macs_ratio`` 0.5).

    - ``criterion``: ``l1``, ``l2``, ``bn`` (BatchNorm scale), ``taylor``, ``hessian`` or
      ``reconstruction`` (ThiNet-style least squares; see ``reconstruction.py``).
    - ``sparsity``: fraction of each group's channels to remove (``layer`` scope) or of all
      prunable channels (``global``), or a dict from layer name to that layer's sparsity.
    - ``macs_ratio``: keep this fraction of the model's MACs.
    - ``scope``: ``layer`` (the same fraction of every group), ``global`` (one ranking) or
      ``latency`` (with ``macs_ratio``: meet the MAC target where the engine measures the most
      time saved per importance lost, NetAdapt-style; see ``latency.py``).
    - ``round_to``: kept channel counts are multiples of this (8 runs fastest in engines).
    - ``exclude``: module names whose channels are never removed.
    - ``num_batches``: training batches that ``taylor``, ``hessian`` and ``reconstruction``
      estimate from.
    - ``slimming_epochs`` / ``bn_l1``: network slimming before pruning (Liu et al. 2017).
    - ``finetune``: training after the cut.
    - ``strict``: an unprunable pattern or a missed target is an error, not a warning.
    - ``overrides``: per-layer ``sparsity`` (or ``skip``) for the layers a rule matches.
    """

    method: ClassVar[str] = "channel_prune"
    layer_fields: ClassVar[tuple[str, ...]] = ("sparsity",)

    criterion: str = "l1"
    sparsity: float | dict[str, float] | None = None
    macs_ratio: float | None = None
    scope: Literal["layer", "global", "latency"] = "layer"
    round_to: int = 8
    exclude: tuple[str, ...] = ()
    num_batches: int = 8
    slimming_epochs: int = 0
    bn_l1: float = 1e-4
    finetune: TrainConfig = field(default_factory=_quiet_finetune)
    strict: bool = False
    overrides: tuple[LayerRule, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in CHANNEL_CRITERIA:
            raise UserError(
                f"unknown criterion '{self.criterion}' for channel pruning; choose one of "
                f"{', '.join(CHANNEL_CRITERIA)}"
            )
        if self.sparsity is None and self.macs_ratio is None:
            object.__setattr__(self, "macs_ratio", DEFAULT_MACS_RATIO)
        _check_amount(self.sparsity, self.macs_ratio)
        _check_common(self.num_batches, self.slimming_epochs, self.bn_l1)
        if self.round_to < 1:
            raise UserError(f"round_to must be >= 1; got {self.round_to}")
        if self.scope == "latency" and self.macs_ratio is None:
            raise UserError("scope 'latency' needs macs_ratio: it meets a MAC target")
