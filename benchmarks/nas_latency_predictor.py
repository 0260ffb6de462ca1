"""Latency predictor of the once-for-all search space against measured ONNX Runtime latency.

The lookup table times every unit of the space (stem, each block shape, head) alone in ONNX
Runtime (1 intra-op thread, batch 1, interleaved medians, ``time.thread_time`` clock). The
predictor corrects the table sum with ``a * lut_sum + b * units + c``, fitted on
``--fit-samples`` measured random sub-networks; it is then judged on ``--test-samples`` other
random sub-networks (none used to build it) by the mean absolute percentage error (target
<= 10%). Two baselines: the raw table sum, and a linear fit of latency on MACs.

    python benchmarks/nas_latency_predictor.py                    # full run, writes results/
    python benchmarks/nas_latency_predictor.py --smoke --out tmp  # seconds: tiny space

Writes ``nas_latency_predictor.json`` and ``.md`` (atomically) to ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir() and str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from mobiledl.automl.nas.efficiency import (  # noqa: E402
    CostTable,
    LatencyPredictor,
    LatencyTable,
    TimingConfig,
    mape,
)
from mobiledl.automl.nas.elastic import OFASupernet  # noqa: E402
from mobiledl.automl.nas.run import measure_subnet_latency  # noqa: E402
from mobiledl.automl.nas.space import Arch, default_space, tiny_space  # noqa: E402
from mobiledl.automl.nas.store import load_supernet  # noqa: E402
from mobiledl.data import build_task  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "nas_latency_predictor"
MAPE_TARGET = 10.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=None, help="default mnist1d (smoke: digits)")
    parser.add_argument("--supernet", type=Path, help="a supernet file (default: a fresh one)")
    parser.add_argument("--fit-samples", type=int, default=None, help="default 60 (smoke 6)")
    parser.add_argument("--test-samples", type=int, default=None, help="default 60 (smoke 6)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 90)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny space, few samples")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    args.task = args.task or ("digits" if args.smoke else "mnist1d")
    args.fit_samples = args.fit_samples or (6 if args.smoke else 60)
    args.test_samples = args.test_samples or (6 if args.smoke else 60)
    args.repeats = args.repeats or (5 if args.smoke else 90)
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_supernet(args: argparse.Namespace) -> OFASupernet:
    """The benchmark space (or tiny for --smoke) with fresh weights: latency ignores them."""
    if args.supernet:
        return load_supernet(args.supernet).supernet
    task = build_task(args.task, seed=args.seed)
    resolutions = ((1, 24), (1, 32), (1, 40)) if task.image_size == (1, 40) else (task.image_size,)
    space = (tiny_space if args.smoke else default_space)(resolutions)
    torch.manual_seed(args.seed)
    return OFASupernet(space, task.num_classes, task.in_channels, task.image_size)


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


def machine() -> dict[str, Any]:
    import os

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def markdown(report: dict[str, Any]) -> str:
    r, c = report["result"], report["config"]
    verdict = "met" if report["checks"]["mape_at_most_10"] else "NOT met"
    lines = [
        "# Latency predictor of the once-for-all space vs measured ONNX Runtime latency",
        "",
        f"Space: `{report['space']}` on task `{c['task']}` inputs; {r['lut_entries']} lookup-table "
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
        f"Total wall time {report['seconds']:.0f} s on {report['machine']['cpu_count']} cores "
        f"(torch {report['machine']['torch']}, onnxruntime {report['machine']['onnxruntime']}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    result = run(args)
    report = {
        "benchmark": STEM,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "space": "tiny" if args.smoke else "default",
        "result": result,
        "checks": {"mape_at_most_10": result["mape"]["predictor"] <= MAPE_TARGET},
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(args.out / f"{STEM}.json", report)
    write_text_atomic(args.out / f"{STEM}.md", markdown(report))
    errors = result["mape"]
    log(f"predictor MAPE {errors['predictor']:.2f}% (table sum {errors['lut_sum']:.1f}%)")
    return report


if __name__ == "__main__":
    main()
