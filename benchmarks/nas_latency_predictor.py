"""Latency predictor of the once-for-all search space against measured ONNX Runtime latency.

The lookup table times every unit of the space (stem, each block shape, head) alone in ONNX
Runtime (1 intra-op thread, batch 1, interleaved medians, ``time.thread_time`` clock). The
predictor corrects the table sum with ``a * lut_sum + b * units + c``, fitted on
``--fit-samples`` measured random sub-networks; it is then judged on ``--test-samples`` other
random sub-networks (none used to build it) by the mean absolute percentage error (target
<= 10%). Two baselines: the raw table sum, and a linear fit of latency on MACs.

    python -m benchmarks nas_latency_predictor          # full run, writes benchmarks/results/
    python -m benchmarks nas_latency_predictor --smoke  # seconds: tiny space
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from mobiledl.automl.nas.efficiency import (
    CostTable,
    LatencyPredictor,
    LatencyTable,
    TimingConfig,
    mape,
)
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.run import measure_subnet_latency
from mobiledl.automl.nas.space import Arch, default_space, tiny_space
from mobiledl.automl.nas.store import load_supernet
from mobiledl.data import build_task

STEM = "nas_latency_predictor"
MAPE_TARGET = 10.0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__, threads=False)
    parser.add_argument("--task", default=None, help="default mnist1d (smoke: digits)")
    parser.add_argument("--supernet", type=Path, help="a supernet file (default: a fresh one)")
    parser.add_argument("--fit-samples", type=int, default=None, help="default 60 (smoke 6)")
    parser.add_argument("--test-samples", type=int, default=None, help="default 60 (smoke 6)")
    args = harness.parse(parser, argv)
    smoke = {"task": "digits", "fit_samples": 6, "test_samples": 6, "repeats": 5}
    return harness.resolve(args, smoke, {"task": "mnist1d", "fit_samples": 60,
                                         "test_samples": 60, "repeats": 90})  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fresh_supernet(task_name: str, smoke: bool, seed: int) -> OFASupernet:
    """The benchmark space on ``task_name``'s inputs (mnist1d: three resolutions), or the
    tiny space for a smoke run, with seeded fresh weights."""
    task = build_task(task_name, seed=seed)
    resolutions = ((1, 24), (1, 32), (1, 40)) if task.image_size == (1, 40) else (task.image_size,)
    space = (tiny_space if smoke else default_space)(resolutions)
    torch.manual_seed(seed)
    return OFASupernet(space, task.num_classes, task.in_channels, task.image_size)


def make_supernet(args: argparse.Namespace) -> OFASupernet:
    """The benchmark space (or tiny for --smoke) with fresh weights: latency ignores them."""
    if args.supernet:
        return load_supernet(args.supernet).supernet
    return fresh_supernet(args.task, args.smoke, args.seed)


def disjoint_samples(supernet: OFASupernet, fit: int, test: int, seed: int) -> tuple[list, list]:
    """Two disjoint sets of distinct random architectures."""
    rng, archs = random.Random(seed), {}
    for _ in range((fit + test) * 50):
        if len(archs) == fit + test:
            break
        archs[supernet.space.sample(rng)] = None
    ordered = list(archs)
    return ordered[:fit], ordered[fit:]


def macs_baseline(costs: CostTable, fit: list[Arch], fit_ms: list[float], test: list[Arch]) -> list:
    """Latency predicted by a least-squares line on MACs (relative error)."""
    x = np.array([[costs.macs(a), 1.0] for a in fit])
    y = np.asarray(fit_ms)
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    return [float(coef[0] * costs.macs(a) + coef[1]) for a in test]


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    supernet = make_supernet(args)
    timing = TimingConfig(warmup=min(10, args.repeats), repeats=args.repeats)
    started = time.perf_counter()
    log("timing the lookup table")
    table = LatencyTable.build(supernet, timing)
    lut_seconds = time.perf_counter() - started
    fit, test = disjoint_samples(supernet, args.fit_samples, args.test_samples, args.seed)
    log(f"measuring {len(fit)} + {len(test)} sub-networks")
    measured = measure_subnet_latency(supernet, fit + test, timing)
    fit_ms, test_ms = measured[: len(fit)], measured[len(fit) :]
    predictor = LatencyPredictor(table).fit(supernet, fit, fit_ms)
    predicted = [predictor.predict(supernet, a) for a in test]
    lut_sum = [predictor.lut_sum(supernet, a) for a in test]
    costs = CostTable(supernet)
    by_macs = macs_baseline(costs, fit, fit_ms, test)
    return {
        "lut_entries": len(table.entries),
        "lut_seconds": lut_seconds,
        "coef": predictor.coef,
        "fit_samples": len(fit),
        "test_samples": len(test),
        "mape": {
            "predictor": mape(predicted, test_ms),
            "lut_sum": mape(lut_sum, test_ms),
            "macs_linear": mape(by_macs, test_ms),
        },
        "test": [
            {
                "arch": a.label(),
                "measured_ms": m,
                "predicted_ms": p,
                "lut_sum_ms": s,
                "macs": costs.macs(a),
            }
            for a, m, p, s in zip(test, test_ms, predicted, lut_sum, strict=True)
        ],
        "measured_range_ms": [min(test_ms), max(test_ms)],
    }


def markdown(report: dict[str, Any]) -> str:
    r, c = report["summary"], report["config"]
    verdict = "met" if r["checks"]["mape_at_most_10"] else "NOT met"
    lines = [
        "# Latency predictor of the once-for-all space vs measured ONNX Runtime latency",
        "",
        f"Space: `{r['space']}` on task `{c['task']}` inputs; {r['lut_entries']} lookup-table "
        f"units timed in {r['lut_seconds']:.0f} s. Predictor fitted on {r['fit_samples']} "
        f"random sub-networks, tested on {r['test_samples']} others (measured "
        f"{r['measured_range_ms'][0]:.3f}-{r['measured_range_ms'][1]:.3f} ms). ONNX Runtime, "
        f"1 intra-op thread, batch 1, median of {c['repeats']} interleaved calls, "
        f"`time.thread_time` clock. Run {report['created']}.",
        "",
        "| latency model | MAPE on held-out sub-networks |",
        "|---|---|",
        f"| learned predictor (`a*lut_sum + b*units + c`) | **{r['mape']['predictor']:.1f}%** |",
        f"| raw lookup-table sum | {r['mape']['lut_sum']:.1f}% |",
        f"| linear fit on MACs | {r['mape']['macs_linear']:.1f}% |",
        "",
        f"Target: MAPE <= {MAPE_TARGET:.0f}% — {verdict}. Coefficients a, b, c = "
        + ", ".join(f"{v:.4g}" for v in r["coef"])
        + ".",
        "",
        "The raw sum counts ONNX Runtime's per-call overhead once per unit (and misses fusion "
        "across units); the learned correction removes it. The MAC line is fitted on the same "
        "sub-networks: "
        + (
            "it is worse than the table, as depthwise kernels, squeeze-excite and per-operator "
            "overhead cost time that MACs do not show."
            if r["mape"]["macs_linear"] > r["mape"]["predictor"]
            else "here it does as well as the table."
        ),
        "",
        harness.machine_line(report),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    rows = result.pop("test")
    result["space"] = "tiny" if args.smoke else "default"
    result["checks"] = {"mape_at_most_10": result["mape"]["predictor"] <= MAPE_TARGET}
    report = harness.write_results(args, rows, result, markdown)
    errors = result["mape"]
    log(f"predictor MAPE {errors['predictor']:.2f}% (table sum {errors['lut_sum']:.1f}%)")
    return report
