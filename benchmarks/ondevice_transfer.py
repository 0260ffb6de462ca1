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
step. Writes ``results/ondevice_transfer.json`` and ``.md``.

    python benchmarks/ondevice_transfer.py                    # full run, real results
    python benchmarks/ondevice_transfer.py --smoke --out tmp  # quick check, elsewhere
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from mobiledl.data import Task, build_task  # noqa: E402
from mobiledl.errors import UserError  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model  # noqa: E402
from mobiledl.train import (  # noqa: E402
    AdaptConfig,
    SparsePlan,
    SparseUpdateConfig,
    TrainConfig,
    adapt,
    apply_plan,
    evaluate,
    quantize_for_sparse_update,
    replace_classifier,
    train,
)
from mobiledl.train.ondevice.memory import training_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: with other work on a 2-core CPU, two spinning OpenMP "
        "threads made full fine-tuning 12x slower)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="digits, tiny model, 1 epoch")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
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
    result = adapt(copy.deepcopy(pretrained), target, config)
    measured = result.measured.peak_bytes
    return {
        "method": config.strategy,
        "memory_budget_bytes": budget,
        "accuracy": result.accuracy,
        "predicted_peak_bytes": result.predicted.peak_bytes,
        "measured_peak_bytes": measured,
        "within_budget": None if budget is None else measured <= budget,
        "trainable_params": result.predicted.trainable_params,
        "peak_breakdown": result.predicted.peak_breakdown,
        "plan": result.plan,
        "best_val_accuracy": max(h["val_accuracy"] for h in result.history),
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


def run(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    recipe, started = args.recipe, time.perf_counter()
    out = args.out or (Path(tempfile.mkdtemp(prefix="mobiledl-bench-")) if args.smoke else RESULTS)
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
    info = machine_info(args, evaluate(pretrained, source, "test"), time.perf_counter() - started)
    summary = summarize(rows)
    data = {"machine": info, "summary": summary, "rows": rows}
    json_path = write_json_atomic(out / f"{STEM}.json", data)
    write_text_atomic(out / f"{STEM}.md", to_markdown(rows, summary, info))
    return json_path


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


def machine_info(args: argparse.Namespace, source_accuracy: float, seconds: float) -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "seed": args.seed,
        "smoke": args.smoke,
        "recipe": dataclasses.asdict(args.recipe),
        "pretrained_source_test_accuracy": source_accuracy,
        "total_seconds": seconds,
    }


def to_markdown(rows: list[dict[str, Any]], summary: dict[str, Any], info: dict) -> str:
    recipe = info["recipe"]
    lines = [
        "# On-device transfer under a memory budget (TinyTL, sparse update)",
        "",
        f"{recipe['model']} (width {recipe['width_mult']}) pretrained on {recipe['source_train']} "
        f"{recipe['source']} digits at {recipe['image_size']}x{recipe['image_size']} "
        f"({recipe['pretrain_epochs']} epochs; source test accuracy "
        f"{info['pretrained_source_test_accuracy']:.4f}), adapted to {recipe['target_train']} "
        "other digits with inverted contrast and a 90-degree rotation. Every method: "
        f"{recipe['adapt_epochs']} epochs, batch {recipe['batch_size']}, SGD with momentum, lean "
        "engine. Peak = one training step (weights, optimizer state, batch, activations, "
        "gradients); measured from PyTorch's CPU allocator. Test accuracy on the shifted test "
        "split (one sample = 0.1 points; binomial sd about 1 point at 90%). A `tinytl` row "
        "with a budget adapts only as many of the last blocks (lite residuals and biases) as "
        "fit that budget (`mobiledl adapt --method tinytl --memory-budget-kb N`).",
        "",
        "| method | budget (KB) | test accuracy | predicted peak (KB) | measured peak (KB) "
        "| trainable params | within budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = (
            "" if r["memory_budget_bytes"] is None else f"{r['memory_budget_bytes'] / 1024:,.0f}"
        )
        if "error" in r:
            lines.append(f"| {r['method']} | {budget} | {r['error']} | | | | |")
            continue
        within = "" if r["within_budget"] is None else ("yes" if r["within_budget"] else "NO")
        blocks = r["plan"].get("last_blocks")
        method = r["method"] if blocks is None else f"{r['method']} (last {blocks} blocks)"
        lines.append(
            f"| {method} | {budget} | {r['accuracy']:.4f} "
            f"| {r['predicted_peak_bytes'] / 1024:,.0f} | {r['measured_peak_bytes'] / 1024:,.0f} "
            f"| {r['trainable_params']:,} | {within} |"
        )
    s = summary
    lines += [
        "",
        f"- TinyTL memory saving vs full fine-tuning: {s['tinytl_memory_saving_predicted']:.2f}x "
        f"predicted, {s['tinytl_memory_saving_measured']:.2f}x measured (target >= 5x).",
        f"- TinyTL vs last layer: {s['tinytl_minus_last_points']:+.1f} points (target >= +5); "
        f"full vs TinyTL: {s['full_minus_tinytl_points']:+.1f} points (target <= 3).",
        "- Sparse update within its budget (measured) at every budget: "
        f"{_yes(s['sparse_all_within_budget'])}; beats TinyTL's accuracy at no more than "
        f"TinyTL's measured memory: {_yes(s['sparse_beats_tinytl_at_equal_memory'])}.",
        "- Sparse update vs TinyTL given the same budget (TinyTL in the last blocks that fit): "
        + "; ".join(_pair(p) for p in s["sparse_vs_tinytl_at_budget"])
        + f". Sparse more accurate at one budget or more: "
        f"{_yes(s['sparse_beats_budgeted_tinytl'])}; budgeted TinyTL within its budget "
        f"(measured): {_yes(s['budgeted_tinytl_all_within_budget'])}.",
        "",
        f"Machine: {info['cpu_count']} cores, torch {info['torch']}, {info['threads']} thread(s); "
        f"total {info['total_seconds'] / 60:.1f} min; {info['date']}.",
    ]
    return "\n".join(lines) + "\n"


def _pair(pair: dict[str, Any]) -> str:
    tinytl = "does not fit" if pair["tinytl"] is None else f"{pair['tinytl']:.4f}"
    return f"{pair['budget_bytes'] / 1024:,.0f} KB: sparse {pair['sparse']:.4f}, TinyTL {tinytl}"


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def main(argv: Sequence[str] | None = None) -> int:
    path = run(parse_args(argv))
    print(path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
