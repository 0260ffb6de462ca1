"""``PruneConfig``: what to prune, by which criterion, how much, and on which schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

from mobiledl.compress.prune.criteria import CRITERIA
from mobiledl.compress.prune.granularity import Granularity
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig

SCHEDULES = ("oneshot", "iterative", "agp", "lottery")
SCOPES = ("global", "layer", "latency")


def _quiet_finetune() -> TrainConfig:
    return TrainConfig(epochs=0, progress=False)


@dataclass
class PruneConfig:
    """How to prune. Exactly one of ``sparsity`` and ``macs_ratio`` is set, except for ``N:M``
    granularities whose pattern fixes the sparsity (leave both unset).

    - ``granularity``: ``element``, ``vector``, ``kernel``, ``filter``, ``N:M`` (e.g. ``2:4``),
      or ``channel`` (physical removal, one-shot only; see ``granularity.py``).
    - ``criterion``: ``l1``, ``l2``, ``taylor``, ``hessian`` or ``bn`` (see ``criteria.py``).
    - ``sparsity``: fraction of prunable weights to zero, or a dict from weight name
      (``"features.0.weight"``) to that layer's sparsity, e.g. from ``allocate_sparsity``.
    - ``macs_ratio``: keep this fraction of the MACs of convolution and linear layers, counting
      only multiplications by non-zero weights (unstructured zeros do not speed up a dense
      engine; only ``channel`` turns MACs into latency).
    - ``scope``: ``global`` ranks all layers together, ``layer`` prunes each to ``sparsity``;
      ``latency`` (``channel`` with ``macs_ratio`` only) meets the MAC target where ONNX
      Runtime measures the most time saved per importance lost;
      ``None`` means ``global`` for masks and ``layer`` for ``channel``.
    - ``schedule``: ``oneshot``, ``iterative``, ``agp`` or ``lottery`` (see ``schedules.py``).
    - ``steps``: pruning rounds (``iterative``, ``lottery``) or pruning events (``agp``).
    - ``finetune``: training after each pruning round (``iterative``, ``lottery``), after the
      cut (``oneshot``) or during the whole schedule (``agp``).
    - ``agp_ramp``: fraction of the AGP training steps over which sparsity rises.
    - ``rewind_epochs``: where ``lottery`` rewinds the surviving weights to (0 = initial).
    - ``exclude``: module names never pruned (e.g. ``("classifier",)``).
    - ``num_batches``: training batches that ``taylor`` and ``hessian`` estimate from.
    - ``slimming_epochs``, ``bn_l1``: before pruning, train this many epochs with an L1
      penalty of strength ``bn_l1`` on BatchNorm scales (network slimming, Liu et al. 2017).
    - ``round_to``: channel counts are rounded to multiples of this (``channel`` only).
    - ``keep_masks``: return the model with masks still attached (for more masked training;
      call ``remove_masks`` before saving) instead of plain zero weights.
    """

    granularity: str = "element"
    criterion: str = "l1"
    sparsity: float | dict[str, float] | None = None
    macs_ratio: float | None = None
    scope: str | None = None
    schedule: str = "oneshot"
    steps: int = 5
    finetune: TrainConfig = field(default_factory=_quiet_finetune)
    agp_ramp: float = 0.75
    rewind_epochs: float = 0.0
    exclude: tuple[str, ...] = ()
    num_batches: int = 8
    slimming_epochs: int = 0
    bn_l1: float = 1e-4
    round_to: int = 8
    keep_masks: bool = False

    def __post_init__(self) -> None:
        self.exclude = tuple(self.exclude)
        parsed = Granularity.parse(self.granularity)
        self._check_choices(parsed)
        self._check_amount(parsed)
        self._check_schedule(parsed)

    @property
    def parsed_granularity(self) -> Granularity:
        return Granularity.parse(self.granularity)

    @property
    def ranking_scope(self) -> str:
        """``scope``, or its default: ``layer`` for ``channel``, else ``global``."""
        if self.scope is not None:
            return self.scope
        return "layer" if self.parsed_granularity.kind == "channel" else "global"

    def _check_choices(self, parsed: Granularity) -> None:
        if parsed.kind != "channel" and self.criterion not in CRITERIA:
            raise UserError(
                f"unknown criterion '{self.criterion}'; choose one of {', '.join(CRITERIA)}"
            )
        if self.scope is not None and self.scope not in SCOPES:
            raise UserError(f"scope must be one of {', '.join(SCOPES)}; got '{self.scope}'")
        if self.scope == "latency" and parsed.kind != "channel":
            raise UserError("scope 'latency' needs channel granularity: masks save no time")
        if self.scope == "latency" and self.macs_ratio is None:
            raise UserError("scope 'latency' needs macs_ratio: it meets a MAC target")
        if self.num_batches < 1:
            raise UserError(f"num_batches must be >= 1; got {self.num_batches}")
        if self.round_to < 1:
            raise UserError(f"round_to must be >= 1; got {self.round_to}")
        if self.slimming_epochs < 0 or self.bn_l1 < 0:
            raise UserError("slimming_epochs and bn_l1 must be >= 0")

    def _check_amount(self, parsed: Granularity) -> None:
        if parsed.kind == "nm":
            if self.sparsity is not None or self.macs_ratio is not None:
                raise UserError(
                    f"granularity {parsed} fixes the sparsity at {parsed.pattern_sparsity:g}; "
                    "leave sparsity and macs_ratio unset"
                )
            return
        if (self.sparsity is None) == (self.macs_ratio is None):
            raise UserError("set exactly one of sparsity and macs_ratio")
        if self.macs_ratio is not None and not 0.0 < self.macs_ratio <= 1.0:
            raise UserError(f"macs_ratio must lie in (0, 1]; got {self.macs_ratio}")
        values = self.sparsity.values() if isinstance(self.sparsity, dict) else [self.sparsity]
        for value in values:
            if value is not None and not 0.0 <= value < 1.0:
                raise UserError(f"sparsity must lie in [0, 1); got {value}")

    def _check_schedule(self, parsed: Granularity) -> None:
        if self.schedule not in SCHEDULES:
            raise UserError(
                f"unknown schedule '{self.schedule}'; choose one of {', '.join(SCHEDULES)}"
            )
        if self.steps < 1:
            raise UserError(f"steps must be >= 1; got {self.steps}")
        if not 0.0 < self.agp_ramp <= 1.0:
            raise UserError(f"agp_ramp must lie in (0, 1]; got {self.agp_ramp}")
        if parsed.kind == "channel" and self.schedule != "oneshot":
            raise UserError(
                f"schedule '{self.schedule}' needs masks; channel granularity prunes one-shot "
                "(use granularity 'filter' for scheduled filter masks)"
            )
        if self.schedule != "oneshot" and self.finetune.epochs < 1:
            raise UserError(f"schedule '{self.schedule}' needs finetune epochs >= 1")
        if self.schedule == "lottery" and not 0 <= self.rewind_epochs < self.finetune.epochs:
            raise UserError(
                f"rewind_epochs must lie in [0, finetune epochs = {self.finetune.epochs}); "
                f"got {self.rewind_epochs}"
            )
