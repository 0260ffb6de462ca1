"""Mixed-precision weight bits under a size budget: HAWQ-V2 and measured sensitivity with an
exact knapsack, against uniform bits, random policies and the greedy allocation.

Each model is trained on the task, then quantized (per-channel symmetric weights, 8-bit
per-tensor input activations calibrated on training inputs, no fine-tuning) under budgets
equal to the size of the uniform 3- and 4-bit models (packed codes, fp32 per-channel
scales, every other parameter fp32). Policies compared at each budget:

- uniform: every layer at that width (the budget itself);
- random: widths drawn uniformly per layer, random layers narrowed until the model fits
  (``--random`` policies; mean and best test accuracy);
- greedy-measured: ``compress.quantize.propose_bits`` on the measured sensitivity (the val
  loss with one layer quantized, per layer and width);
- knapsack-measured: the exact knapsack (``automl.compress.knapsack``) on the same costs;
- knapsack-hawq: the exact knapsack on HAWQ-V2's Hessian-trace costs (Hutchinson,
  ``--probes`` per layer over 256 training samples).

Test accuracy in PyTorch (fake quantization); search time is the sensitivity + allocation.

    python -m benchmarks autoquant            # resnet8, resnet20, mobilenet_v2 on digits
    python -m benchmarks autoquant --smoke    # resnet8, tiny data: seconds
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from benchmarks import harness
from mobiledl.automl.compress import (
    LayerSizes,
    hawq_costs,
    hessian_traces,
    measured_costs,
    quantize_with_policy,
)
from mobiledl.compress.quantize.mixed import bit_sensitivity, model_size_bytes, propose_bits
from mobiledl.data import Task
from mobiledl.train import predict_split

STEM = "autoquant"
WIDTHS = [2, 3, 4, 5, 6, 8]
BUDGET_BITS = (3, 4)
ACT_BITS = 8


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__)
    harness.add_task_arguments(parser, "digits")
    parser.add_argument("--models", default=None, help="comma-separated models")
    parser.add_argument("--epochs", type=harness.positive_int("--epochs"), default=None)
    parser.add_argument("--probes", type=harness.positive_int("--probes"), default=None)
    parser.add_argument("--random", type=harness.positive_int("--random"), default=None)
    harness.add_seeds_argument(parser)
    args = harness.parse(parser, argv)
    harness.resolve_tasks(args, "digits", "digits")
    harness.resolve(
        args,
        {"models": "resnet8", "epochs": 1, "probes": 2, "random": 2},
        {"models": "resnet8,resnet20,mobilenet_v2", "epochs": 20, "probes": 32, "random": 5},
    )
    args.models = harness.names(args.models)
    return args


def random_policy(sizes: LayerSizes, budget: int, model: nn.Module, rng: random.Random) -> dict:
    """Widths drawn per layer, then random layers one step narrower until the model fits."""
    policy = {name: rng.choice(WIDTHS) for name in sizes.weights}
    while model_size_bytes(model, policy) > budget:
        name = rng.choice([n for n, b in policy.items() if b > WIDTHS[0]])
        policy[name] = WIDTHS[WIDTHS.index(policy[name]) - 1]
    return policy


class Scorer:
    """Test accuracy of ``base`` quantized with a policy."""

    def __init__(self, base: nn.Module, task: Task) -> None:
        self.base, self.task = base, task

    def accuracy(self, policy: dict[str, int]) -> float:
        quantized = quantize_with_policy(self.base, self.task, policy, ACT_BITS).eval()
        return self.task.metric(*predict_split(quantized, self.task))


def model_rows(name: str, task: Task, args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    base = harness.train_baseline(name, task, args.epochs, seed)
    fp32 = task.metric(*predict_split(base, task))
    sizes, scorer = LayerSizes.of(base), Scorer(base, task)
    started = time.perf_counter()
    sensitivity = bit_sensitivity(base, task, WIDTHS)
    measured_seconds = time.perf_counter() - started
    measured = measured_costs(sensitivity.loss, sensitivity.baseline_loss)
    started = time.perf_counter()
    traces = hessian_traces(base, task, probes=args.probes, seed=seed)
    hawq = hawq_costs(base, traces, WIDTHS)
    hawq_seconds = time.perf_counter() - started
    rows = []
    for bits in BUDGET_BITS:
        budget = model_size_bytes(base, dict.fromkeys(sizes.weights, bits))
        rng = random.Random(seed)
        randoms = [
            scorer.accuracy(random_policy(sizes, budget, base, rng)) for _ in range(args.random)
        ]
        policies = {
            "uniform": (dict.fromkeys(sizes.weights, bits), 0.0),
            "greedy-measured": (propose_bits(sensitivity, budget), measured_seconds),
            "knapsack-measured": (sizes.allocate(measured, WIDTHS, budget), measured_seconds),
            "knapsack-hawq": (sizes.allocate(hawq, WIDTHS, budget), hawq_seconds),
        }
        common = {"model": name, "task": task.name, "seed": seed, "budget_bits": bits,
                  "budget_bytes": budget,
                  "fp32_accuracy": fp32, "layers": len(sizes.weights)}  # fmt: skip
        rows.append({**common, "policy": "random", "accuracy": sum(randoms) / len(randoms),
                     "best_accuracy": max(randoms), "size_bytes": None, "search_seconds": 0.0,
                     "bits": None})  # fmt: skip
        for label, (policy, seconds) in policies.items():
            rows.append({**common, "policy": label, "accuracy": scorer.accuracy(policy),
                         "best_accuracy": None, "size_bytes": model_size_bytes(base, policy),
                         "search_seconds": round(seconds, 2), "bits": policy})  # fmt: skip
    return rows


def _key(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["model"], row["budget_bits"], row.get("seed", 0)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (model, budget, seed): whether knapsack-hawq is at least as accurate as uniform."""
    uniform = {_key(row): row["accuracy"] for row in rows if row["policy"] == "uniform"}
    hawq = [row for row in rows if row["policy"] == "knapsack-hawq"]
    wins = sum(row["accuracy"] >= uniform[_key(row)] for row in hawq)
    return {"hawq_at_least_uniform": wins, "cases": len(hawq)}


def _seed_table(rows: list[dict[str, Any]]) -> list[str]:
    """Mean and standard deviation over seeds of each (model, budget, policy)."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["budget_bits"], row["policy"]), []).append(
            100 * row["accuracy"]
        )
    return harness.markdown_table(
        ["model", "budget", "policy", "seeds", "mean test acc %", "std"],
        [
            (model, f"{bits}-bit size", policy, len(values), f"{statistics.mean(values):.2f}",
             f"{statistics.stdev(values):.2f}" if len(values) > 1 else "")
            for (model, bits, policy), values in groups.items()
        ],
        align="lllrrr",
    )  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    config, pct, rows = report["config"], harness.pct, report["rows"]
    table = harness.markdown_table(
        ["model", "seed", "budget", "policy", "test acc %", "best of random %", "size kB",
         "search s", "bits per layer"],
        [
            (row["model"], row.get("seed", 0),
             f"{row['budget_bits']}-bit size, {row['budget_bytes'] / 1024:.1f} kB",
             row["policy"], pct(row["accuracy"]),
             "" if row["best_accuracy"] is None else pct(row["best_accuracy"]),
             "" if row["size_bytes"] is None else f"{row['size_bytes'] / 1024:.1f}",
             f"{row['search_seconds']:.1f}",
             "" if row["bits"] is None else " ".join(str(b) for b in row["bits"].values()))
            for row in rows
        ],
        align="lrllrrrrl",
    )  # fmt: skip
    fp32: dict[str, list[float]] = {}
    for row in rows:
        if row["policy"] == "uniform" and row["budget_bits"] == BUDGET_BITS[0]:
            fp32.setdefault(row["model"], []).append(100 * row["fp32_accuracy"])
    seeds = len({row.get("seed", 0) for row in rows})
    summary = report["summary"]
    fp32_text = ", ".join(f"{m} {statistics.mean(a):.2f}%" for m, a in fp32.items())
    return "\n".join([
        "# Mixed-precision weight bits under a size budget",
        "",
        f"{'SMOKE RUN: tiny data, numbers meaningless. ' if config['smoke'] else ''}"
        f"Models trained {config['epochs']} epochs on {', '.join(config['task_specs'])} "
        f"({seeds} seed{'s' if seeds > 1 else ''}); fp32 test accuracy (mean): {fp32_text}. "
        f"Weights per-channel symmetric at the policy's widths, inputs {ACT_BITS}-bit, no "
        f"fine-tuning; candidate widths {', '.join(map(str, WIDTHS))}; HAWQ: {config['probes']} "
        f"Hutchinson probes per layer; random: mean of {config['random']} policies. "
        f"{harness.machine_line(report)}",
        "",
        *(_seed_table(rows) + [""] if seeds > 1 else []),
        *table,
        "",
        f"knapsack-hawq at least as accurate as uniform in {summary['hawq_at_least_uniform']} of "
        f"{summary['cases']} cases.",
        "",
    ])  # fmt: skip


def main(argv: Sequence[str] = ()) -> dict[str, Any]:
    args = parse_args(argv)
    rows = []
    for spec in args.task_specs:
        task = harness.load_task(spec, seed=args.seed, smoke=args.smoke, split=args.split)
        for name in args.models:
            for seed in args.seeds:
                print(f"{name} on {spec}, seed {seed}...", file=sys.stderr)
                rows += model_rows(name, task, args, seed)
    return harness.write_results(args, rows, summarize(rows), markdown)
