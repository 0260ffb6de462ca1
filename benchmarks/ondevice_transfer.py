"""On-device transfer learning with a real domain shift: full, last, bias, TinyTL, sparse update.

Source: real 28x28 MNIST digits (``mnist5k``, resized to 20x20). A MobileNetV2 (width 0.5) is
pretrained on 2,000 of the training digits. Target: the *other* 1,000 training digits under a
domain shift, inverted contrast and a 90-degree rotation (as a digit seen on a light screen by a
sideways camera); validation and test use the held-out splits, shifted the same way. Pretrained
features see a different image statistics and orientation, so training only the classifier is
clearly worse than fine-tuning everything.

Every method adapts the same pretrained model with the same recipe (SGD with momentum, cosine
schedule, batch 64) on mobiledl's lean engine: ``full``, ``last`` (classifier), ``bias`` (biases
and classifier), ``tinytl`` (Cai et al. 2020) and ``sparse`` (Lin et al. 2022, int8 frozen
weights with QAS) at three budgets between its minimum and TinyTL's predicted peak. Each row
reports test accuracy, the profiler's predicted training peak and the peak measured on a real
step.

    python -m benchmarks ondevice_transfer          # full run, writes benchmarks/results/
    python -m benchmarks ondevice_transfer --smoke  # seconds, into a temporary directory
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmarks import harness
from mobiledl import apply, report_of
from mobiledl.data import Task, build_task
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.train import (
    AdaptConfig,
    SparsePlan,
    SparseUpdateConfig,
    TrainConfig,
    apply_plan,
    evaluate,
    quantize_for_sparse_update,
    replace_classifier,
    train,
)
from mobiledl.train.ondevice.memory import training_memory

STEM = "ondevice_transfer"


@dataclass(frozen=True)
class Recipe:
    """Data, model and training budget of one run (sparse: the contribution analysis' probes)."""

    source: str
    image_size: int
    model: str
    width_mult: float
    pretrain_epochs: int
    adapt_epochs: int
    batch_size: int
    source_train: int
    target_train: int
    target_val: int
    probe_steps: int
    probe_layers: int
    probe_ratios: tuple[float, ...]
    probe_bias_depths: tuple[int, ...]
    budget_fractions: tuple[float, ...]


RECIPES = {
    "full": Recipe(
        "mnist5k", 20, "mobilenet_v2", 0.5, 4, 8, 64, 2000, 1000, 500,
        24, 4, (0.5, 1.0), (4, 8, 16, 64), (0.3, 0.6, 1.0),
    ),
    "smoke": Recipe(
        "digits", 8, "mcunet", 0.5, 1, 1, 32, 600, 300, 100, 1, 1, (1.0,), (2,), (1.0,)
    ),
}  # fmt: skip


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(
        STEM,
        __doc__,
        threads_help="torch threads (default 1: with other work on a 2-core CPU, two spinning "
        "OpenMP threads made full fine-tuning 12x slower)",
    )
    args = harness.parse(parser, argv)
    args.recipe = RECIPES["smoke" if args.smoke else "full"]
    return args


# ---------------------------------------------------------------- data


def shift(x: torch.Tensor) -> torch.Tensor:
    """Inverted contrast and a 90-degree rotation of normalized images."""
    return torch.rot90(-x, 1, dims=(2, 3)).contiguous()


def tasks(recipe: Recipe) -> tuple[Task, Task]:
    """(source, target): disjoint training digits; target inputs shifted."""
    base = build_task(recipe.source, image_size=recipe.image_size, seed=0)
    n_tgt, n_src = recipe.target_train, recipe.source_train
    half = min(recipe.target_val, len(base.x_val) // 2)
    source = Task(
        f"{recipe.source}-source",
        base.num_classes,
        base.x_train[n_tgt : n_tgt + n_src],
        base.y_train[n_tgt : n_tgt + n_src],
        base.x_val[half:],
        base.y_val[half:],
        base.x_test,
        base.y_test,
    )
    target = Task(
        f"{recipe.source}-inverted-rotated",
        base.num_classes,
        shift(base.x_train[:n_tgt]),
        base.y_train[:n_tgt],
        shift(base.x_val[:half]),
        base.y_val[:half],
        shift(base.x_test),
        base.y_test,
    )
    return source, target


# ---------------------------------------------------------------- runs


def pretrain(recipe: Recipe, source: Task, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(
        recipe.model, source.num_classes, source.in_channels, source.image_size, recipe.width_mult
    )
    config = TrainConfig(
        epochs=recipe.pretrain_epochs, batch_size=recipe.batch_size, lr=0.05, seed=seed,
        progress=False,
    )  # fmt: skip
    train(model, source, config)
    return model


def run_method(
    pretrained: nn.Module, target: Task, config: AdaptConfig, budget: int | None = None
) -> dict[str, Any]:
    start = time.perf_counter()
    report = report_of(apply(pretrained, config, target)).values
    measured = report["measured_peak_memory_bytes"]
    return {
        "method": config.strategy,
        "memory_budget_bytes": budget,
        "accuracy": report["accuracy"],
        "predicted_peak_bytes": report["training_peak_bytes"],
        "measured_peak_bytes": measured,
        "within_budget": None if budget is None else measured <= budget,
        "trainable_params": report["trainable_params"],
        "plan": report["plan"],
        "seconds": time.perf_counter() - start,
    }


def sparse_floor(pretrained: nn.Module, target: Task, recipe: Recipe) -> int:
    """Predicted peak of the cheapest sparse update (int8 model, classifier only)."""
    model = copy.deepcopy(pretrained)
    replace_classifier(model, target.num_classes)
    quantize_for_sparse_update(model)
    apply_plan(model, SparsePlan())
    x, y = (t[: recipe.batch_size] for t in target.split("train"))
    return training_memory(model, x, y).peak_bytes


def log_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['method']}: {row['error']}", file=sys.stderr)
        return
    print(
        f"{row['method']} (budget {row['memory_budget_bytes']}): accuracy {row['accuracy']:.4f}, "
        f"peak {row['predicted_peak_bytes']:,} B predicted, {row['measured_peak_bytes']:,} B "
        f"measured, {row['seconds']:.0f} s",
        file=sys.stderr,
    )


# ---------------------------------------------------------------- report


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, computed from the rows."""
    by = {r["method"]: r for r in rows if r["memory_budget_bytes"] is None}
    full, last, tinytl = by["full"], by["last"], by["tinytl"]
    sparse = [r for r in rows if r["method"] == "sparse" and "error" not in r]
    equal_memory = [r for r in sparse if r["measured_peak_bytes"] <= tinytl["measured_peak_bytes"]]
    budgeted = {
        r["memory_budget_bytes"]: r
        for r in rows
        if r["method"] == "tinytl" and r["memory_budget_bytes"] is not None
    }
    pairs = [
        {
            "budget_bytes": r["memory_budget_bytes"],
            "sparse": r["accuracy"],
            "tinytl": budgeted.get(r["memory_budget_bytes"], {}).get("accuracy"),
        }
        for r in sparse
    ]
    return {
        "tinytl_memory_saving_predicted": full["predicted_peak_bytes"]
        / tinytl["predicted_peak_bytes"],
        "tinytl_memory_saving_measured": full["measured_peak_bytes"]
        / tinytl["measured_peak_bytes"],
        "tinytl_minus_last_points": 100 * (tinytl["accuracy"] - last["accuracy"]),
        "full_minus_tinytl_points": 100 * (full["accuracy"] - tinytl["accuracy"]),
        "sparse_all_within_budget": all(r["within_budget"] for r in sparse) and bool(sparse),
        "sparse_beats_tinytl_at_equal_memory": any(
            r["accuracy"] > tinytl["accuracy"] for r in equal_memory
        ),
        "sparse_vs_tinytl_at_budget": pairs,
        "sparse_beats_budgeted_tinytl": any(
            p["tinytl"] is not None and p["sparse"] > p["tinytl"] for p in pairs
        ),
        "budgeted_tinytl_all_within_budget": all(
            r.get("within_budget", False) for r in budgeted.values() if "error" not in r
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    rows, s, config = report["rows"], report["summary"], report["config"]
    recipe = config["recipe"]
    lines = [
        "# On-device transfer under a memory budget (TinyTL, sparse update)",
        "",
        f"{recipe['model']} (width {recipe['width_mult']}) pretrained on {recipe['source_train']} "
        f"{recipe['source']} digits at {recipe['image_size']}x{recipe['image_size']} "
        f"({recipe['pretrain_epochs']} epochs; source test accuracy "
        f"{s['pretrained_source_test_accuracy']:.4f}), adapted to {recipe['target_train']} "
        "other digits with inverted contrast and a 90-degree rotation. Every method: "
        f"{recipe['adapt_epochs']} epochs, batch {recipe['batch_size']}, SGD with momentum, lean "
        "engine. Peak = one training step (weights, optimizer state, batch, activations, "
        "gradients); measured from PyTorch's CPU allocator. Test accuracy on the shifted test "
        "split (one sample = 0.1 points; binomial sd about 1 point at 90%). A `tinytl` row "
        "with a budget adapts only as many of the last blocks (lite residuals and biases) as "
        "fit that budget (`mobiledl adapt --method tinytl --memory-budget-kb N`).",
        "",
        *harness.markdown_table(
            ["method", "budget (KB)", "test accuracy", "predicted peak (KB)",
             "measured peak (KB)", "trainable params", "within budget"],
            map(_cells, rows),
        ),
    ]  # fmt: skip
    lines += [
        "",
        f"- TinyTL memory saving vs full fine-tuning: {s['tinytl_memory_saving_predicted']:.2f}x "
        f"predicted, {s['tinytl_memory_saving_measured']:.2f}x measured (target >= 6.5x).",
        f"- TinyTL vs last layer: {s['tinytl_minus_last_points']:+.1f} points (target >= +5); "
        f"full vs TinyTL: {s['full_minus_tinytl_points']:+.1f} points (target <= 3).",
        "- Sparse update within its budget (measured) at every budget: "
        f"{harness.yes(s['sparse_all_within_budget'])}; beats TinyTL's accuracy at no more than "
        f"TinyTL's measured memory: {harness.yes(s['sparse_beats_tinytl_at_equal_memory'])}.",
        "- Sparse update vs TinyTL given the same budget (TinyTL in the last blocks that fit): "
        + "; ".join(_pair(p) for p in s["sparse_vs_tinytl_at_budget"])
        + f". Sparse more accurate at one budget or more: "
        f"{harness.yes(s['sparse_beats_budgeted_tinytl'])}; budgeted TinyTL within its budget "
        f"(measured): {harness.yes(s['budgeted_tinytl_all_within_budget'])}.",
        "",
        harness.machine_line(report),
    ]
    return "\n".join(lines) + "\n"


def _pair(pair: dict[str, Any]) -> str:
    tinytl = "does not fit" if pair["tinytl"] is None else f"{pair['tinytl']:.4f}"
    return f"{pair['budget_bytes'] / 1024:,.0f} KB: sparse {pair['sparse']:.4f}, TinyTL {tinytl}"


def _cells(row: dict[str, Any]) -> list[str]:
    """One table row: an error in the accuracy column, a budgeted TinyTL's block count."""
    budget = row["memory_budget_bytes"]
    budget = "" if budget is None else f"{budget / 1024:,.0f}"
    if "error" in row:
        return [row["method"], budget, row["error"], "", "", "", ""]
    within = "" if row["within_budget"] is None else harness.yes(row["within_budget"])
    blocks = row["plan"].get("last_blocks")
    method = row["method"] if blocks is None else f"{row['method']} (last {blocks} blocks)"
    return [
        method,
        budget,
        f"{row['accuracy']:.4f}",
        f"{row['predicted_peak_bytes'] / 1024:,.0f}",
        f"{row['measured_peak_bytes'] / 1024:,.0f}",
        f"{row['trainable_params']:,}",
        within,
    ]


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = args.recipe
    source, target = tasks(recipe)
    pretrained = pretrain(recipe, source, args.seed)
    base = AdaptConfig(epochs=recipe.adapt_epochs, batch_size=recipe.batch_size, seed=args.seed)
    rows = []
    for method in ("full", "last", "bias", "tinytl"):
        rows.append(run_method(pretrained, target, dataclasses.replace(base, strategy=method)))
        log_row(rows[-1])
    floor, tinytl_peak = sparse_floor(pretrained, target, recipe), rows[-1]["predicted_peak_bytes"]
    probe = SparseUpdateConfig(
        probe_steps=recipe.probe_steps,
        candidate_layers=recipe.probe_layers,
        ratios=recipe.probe_ratios,
        bias_depths=recipe.probe_bias_depths,
    )
    for fraction in recipe.budget_fractions:
        budget = math.ceil(floor + fraction * max(0, tinytl_peak - floor))
        for method in ("sparse", "tinytl"):  # TinyTL in as many last blocks as fit the budget
            config = dataclasses.replace(base, strategy=method, memory_budget=budget, sparse=probe)
            try:
                rows.append(run_method(pretrained, target, config, budget))
            except UserError as exc:  # a budget below the minimum: report it, keep going
                rows.append({"method": method, "memory_budget_bytes": budget, "error": str(exc)})
            log_row(rows[-1])
    summary = summarize(rows)
    summary["pretrained_source_test_accuracy"] = evaluate(pretrained, source, "test")
    return harness.write_results(args, rows, summary, markdown)
