"""Per-layer sensitivity analysis and the sparsity allocation derived from it.

Prune one layer at a time to each sparsity of a grid, leaving the others dense, and measure
accuracy on a held-out split (Han et al. 2015, Fig. 5; Li et al. 2017, "Pruning Filters for
Efficient ConvNets", Fig. 2). ``allocate_sparsity`` takes each layer's largest sparsity whose
accuracy drop stays within a tolerance and scales these together to hit a global target, so
robust layers are pruned harder than sensitive ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mobiledl.compress.prune.criteria import weight_scores
from mobiledl.compress.prune.granularity import Granularity, compute_masks
from mobiledl.compress.prune.masks import apply_masks, current_masks
from mobiledl.core.clone import clone_module
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path
from mobiledl.train import evaluate

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass
class SensitivityResult:
    """Accuracy of the model with one layer pruned, for every layer and sparsity."""

    baseline: float
    sparsities: list[float]
    accuracy: dict[str, list[float]]
    sizes: dict[str, int]
    granularity: str
    criterion: str
    split: str

    def max_sparsity(self, tolerance: float) -> dict[str, float]:
        """Per layer, the largest sparsity whose accuracy is within ``tolerance`` of baseline."""
        floor = self.baseline - tolerance
        return {
            name: max([s for s, a in zip(self.sparsities, accs, strict=True) if a >= floor] + [0])
            for name, accs in self.accuracy.items()
        }

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sensitivity_analysis(
    model: nn.Module,
    task: TensorTask,
    granularity: str = "element",
    criterion: str = "l1",
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES,
    split: str = "val",
    num_batches: int = 8,
    exclude: tuple[str, ...] = (),
) -> SensitivityResult:
    """Prune each layer alone (on a copy of ``model``) to each sparsity; record the accuracy."""
    parsed = Granularity.parse(granularity)
    if parsed.kind == "channel":
        raise UserError("sensitivity analysis uses masks; use granularity 'filter', not 'channel'")
    if not sparsities or not all(0.0 <= s < 1.0 for s in sparsities):
        raise UserError(f"sparsities must be a non-empty list in [0, 1); got {list(sparsities)}")
    work = clone_module(model).eval()
    scores = weight_scores(work, criterion, task, num_batches, exclude=exclude)
    scores = {name: score for name, score in scores.items() if parsed.fits(score)}
    current = current_masks(work)
    baseline = evaluate(work, task, split)
    accuracy = {}
    for name, score in scores.items():
        original = current.get(name, torch.ones_like(score))
        accuracy[name] = []
        for sparsity in sparsities:
            masks = compute_masks({name: score}, parsed, sparsity, "layer", current)
            apply_masks(work, masks)
            accuracy[name].append(evaluate(work, task, split))
        apply_masks(work, {name: original})
    return SensitivityResult(
        baseline=baseline,
        sparsities=list(sparsities),
        accuracy=accuracy,
        sizes={name: score.numel() for name, score in scores.items()},
        granularity=str(parsed),
        criterion=criterion,
        split=split,
    )


def allocate_sparsity(
    result: SensitivityResult, target: float, tolerance: float = 0.01, max_sparsity: float = 0.98
) -> dict[str, float]:
    """Per-layer sparsities (for ``PruneConfig.sparsity``) averaging ``target`` over all weights.

    Each layer starts from its largest sparsity within ``tolerance`` accuracy drop; all are
    multiplied by one factor (found by bisection, each capped at ``max_sparsity``) so the
    weighted mean is ``target``. Layers that tolerate no pruning stay dense.
    """
    if not 0.0 <= target < 1.0:
        raise UserError(f"target sparsity must lie in [0, 1); got {target}")
    base = result.max_sparsity(tolerance)
    total = sum(result.sizes.values())

    def allocation(scale: float) -> dict[str, float]:
        return {name: min(scale * s, max_sparsity) for name, s in base.items()}

    def mean(alloc: dict[str, float]) -> float:
        return sum(alloc[name] * result.sizes[name] for name in alloc) / total

    positive = [s for s in base.values() if s > 0]
    high = max_sparsity / min(positive) if positive else 0.0
    if mean(allocation(high)) < target - 1e-9:
        raise UserError(
            f"target sparsity {target} is out of reach within tolerance {tolerance}: at most "
            f"{mean(allocation(high)):.3f} (layers capped at {max_sparsity})"
        )
    low = 0.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if mean(allocation(middle)) < target else (low, middle)
    return allocation(high)


def plot_sensitivity(result: SensitivityResult, path: str | Path) -> Path:
    """Accuracy versus sparsity, one line per layer, written to a ``.png`` or ``.svg`` file."""
    path = Path(path)
    if path.suffix not in (".png", ".svg"):
        raise UserError(f"sensitivity plot must be a .png or .svg file; got '{path.name}'")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for name, accuracy in result.accuracy.items():
        ax.plot(result.sparsities, accuracy, marker="o", markersize=3, label=name)
    ax.axhline(result.baseline, color="gray", linestyle="--", linewidth=1, label="dense")
    ax.set_xlabel(f"sparsity of the layer ({result.granularity}, {result.criterion})")
    ax.set_ylabel(f"{result.split} accuracy")
    ax.set_title("Per-layer pruning sensitivity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix[1:])
    return path
