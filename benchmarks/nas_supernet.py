"""Once-for-all supernet: sub-networks vs training from scratch, searched nets vs MobileNetV2,
and a Ray search against the same search in process.

1. Train the supernet by progressive shrinking (or reuse ``--supernet``).
2. Fit the latency model (lookup table timed in ONNX Runtime + learned correction).
3. Supernet vs scratch: for ``--archs`` architectures (largest, smallest, random), the test
   accuracy of the sub-network taken from the supernet (BN recalibration, no retraining)
   against the same architecture trained from scratch (``--scratch-epochs``). Target: within
   1.5 points.
4. Versus MobileNetV2: for each ``--mbv2-widths`` width multiplier, MobileNetV2 (zoo
   ``mobilenet_v2``) is trained from scratch and its latency measured; the evolutionary search
   then looks for the most accurate sub-network whose predicted latency is within that
   measured latency. Both are re-timed side by side (interleaved). Target: the searched
   sub-network is more accurate at every target.
5. Ray vs in process: the same search (same seed, same latency model) with candidate
   evaluations on a local Ray and in this process. Target: identical results.

    python benchmarks/nas_supernet.py --out run1         # full run (+30 expand epochs)
    python benchmarks/nas_supernet.py --init run1/nas_supernet_supernet.pt  # +30 more, results/
    python benchmarks/nas_supernet.py --smoke --out tmp  # tiny space and data, seconds

Writes ``nas_supernet.json`` and ``nas_supernet.md`` (atomically) to ``--out``, after each stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
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

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from mobiledl.automl.nas.efficiency import TimingConfig, measure_latency  # noqa: E402
from mobiledl.automl.nas.elastic import OFASupernet  # noqa: E402
from mobiledl.automl.nas.evaluate import EvalSpec, LocalEvaluator, RayEvaluator  # noqa: E402
from mobiledl.automl.nas.extract import (  # noqa: E402
    build_subnet,
    calibration_indices,
    extract_subnet,
    recalibrate_bn,
)
from mobiledl.automl.nas.run import (  # noqa: E402
    SearchConfig,
    fit_latency_model,
    fit_predictor,
    run_search,
    sample_archs,
)
from mobiledl.automl.nas.search import Constraints, EvolutionConfig  # noqa: E402
from mobiledl.automl.nas.space import Arch, default_space, tiny_space  # noqa: E402
from mobiledl.automl.nas.store import load_supernet, save_supernet  # noqa: E402
from mobiledl.automl.nas.train import ShrinkConfig, progressive_shrink  # noqa: E402
from mobiledl.data import Task, build_task  # noqa: E402
from mobiledl.errors import UserError  # noqa: E402
from mobiledl.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from mobiledl.models import create_model  # noqa: E402
from mobiledl.profile import profile_model  # noqa: E402
from mobiledl.train import TrainConfig, evaluate, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEM = "nas_supernet"
SCRATCH_TOLERANCE = 1.5  # points
BUDGET_MARGIN = 0.95  # search within 95% of MobileNetV2's latency: room for predictor error


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=None, help="default mnist1d (smoke: digits)")
    parser.add_argument("--supernet", type=Path, help="reuse a trained supernet file")
    parser.add_argument(
        "--init",
        type=Path,
        help="continue a supernet file written by this script: --continue-epochs more "
        "expand-phase epochs (its earlier training is kept in the report)",
    )
    parser.add_argument("--epochs", default=None, help="full,kernel,depth,expand (15,6,6,6)")
    parser.add_argument(
        "--continue-epochs",
        type=int,
        default=None,
        help="then more expand-phase epochs with 2 random networks per step (default 30)",
    )
    parser.add_argument("--scratch-epochs", type=int, default=None, help="default 20")
    parser.add_argument("--archs", type=int, default=None, help="default 5")
    parser.add_argument("--mbv2-widths", default=None, help="default 0.35,0.5,0.75")
    parser.add_argument("--latency-samples", type=int, default=None, help="default 40")
    parser.add_argument("--predictor-samples", type=int, default=None, help="default 120")
    parser.add_argument("--ray-samples", type=int, default=None, help="default 40")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 90)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    parser.add_argument(
        "--reuse-scratch",
        type=Path,
        help="a previous nas_supernet.json: reuse its from-scratch accuracies of the same "
        "architectures and settings (training is deterministic; saves the retraining)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny space, data and epochs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.task = args.task or ("digits" if smoke else "mnist1d")
    epochs = args.epochs or ("1,1,2,2" if smoke else "15,6,6,6")
    args.epochs = [int(v) for v in epochs.split(",")]
    if args.continue_epochs is None:
        args.continue_epochs = 0 if smoke else 30
    args.scratch_epochs = args.scratch_epochs or (1 if smoke else 20)
    args.archs = args.archs or (2 if smoke else 5)
    widths = args.mbv2_widths or ("0.1,0.25,0.35" if smoke else "0.35,0.5,0.75")
    args.mbv2_widths = [float(v) for v in widths.split(",")]
    args.latency_samples = args.latency_samples or (5 if smoke else 40)
    args.predictor_samples = args.predictor_samples or (8 if smoke else 120)
    args.ray_samples = args.ray_samples or (6 if smoke else 40)
    args.repeats = args.repeats or (5 if smoke else 90)
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_task(args: argparse.Namespace) -> Task:
    task = build_task(args.task, seed=args.seed)
    if args.smoke:  # a few hundred samples: the point is to run every step, not to learn
        task.x_train, task.y_train = task.x_train[:256], task.y_train[:256]
        task.x_val, task.y_val = task.x_val[:128], task.y_val[:128]
        task.x_test, task.y_test = task.x_test[:128], task.y_test[:128]
    return task


def shrink_configs(args: argparse.Namespace) -> list[ShrinkConfig]:
    """``mobiledl nas train`` defaults, then ``--init`` continuation of the expand phase
    (``--expand-epochs N --sandwich 2``, other phases 0)."""
    full, kernel, depth, expand = args.epochs
    common = {"batch_size": 128, "lr": 0.1, "shrink_lr": 0.03, "seed": args.seed}
    configs = [ShrinkConfig(full, kernel, depth, expand, sandwich=1, progress=False, **common)]
    if args.continue_epochs:
        configs.append(
            ShrinkConfig(0, 0, 0, args.continue_epochs, sandwich=2, progress=False, **common)
        )
    return configs


def supernet_stage(args: argparse.Namespace, task: Task) -> tuple[OFASupernet, dict[str, Any]]:
    """Train (or load) the supernet; the same settings as ``mobiledl nas train`` defaults."""
    if args.supernet:
        loaded = load_supernet(args.supernet)
        return loaded.supernet, {"file": str(args.supernet), **loaded.meta, "history": None}
    if args.init:
        return _continue_supernet(args, task)
    resolutions = ((1, 24), (1, 32), (1, 40)) if task.image_size == (1, 40) else (task.image_size,)
    space = (tiny_space if args.smoke else default_space)(resolutions)
    torch.manual_seed(args.seed)
    supernet = OFASupernet(space, task.num_classes, task.in_channels, task.image_size)
    configs = shrink_configs(args)
    started = time.perf_counter()
    history = [h for c in configs for h in progressive_shrink(supernet, task, c).history]
    meta = {
        "task": args.task,
        "seed": args.seed,
        "config": [dataclasses.asdict(c) for c in configs],
        "seconds": time.perf_counter() - started,
    }
    path = args.out / f"{STEM}_supernet.pt"
    if not args.smoke:
        save_supernet(path, supernet, {**meta, "history": history})
    return supernet, {"file": str(path) if not args.smoke else None, **meta}


def _continue_supernet(args: argparse.Namespace, task: Task) -> tuple[OFASupernet, dict[str, Any]]:
    """``--init``: more expand-phase epochs on a supernet this script trained before."""
    loaded = load_supernet(args.init)
    if loaded.meta.get("task") != args.task or not loaded.meta.get("config"):
        raise UserError(f"{args.init}: not a supernet this script trained on '{args.task}'")
    supernet, common = loaded.supernet, {"batch_size": 128, "lr": 0.1, "shrink_lr": 0.03}
    seed = args.seed + len(loaded.meta["config"])  # new samples, not a replay of the last run
    config = ShrinkConfig(
        0, 0, 0, args.continue_epochs, sandwich=2, seed=seed, progress=False, **common
    )
    started = time.perf_counter()
    history = progressive_shrink(supernet, task, config)
    meta = {
        "task": args.task,
        "seed": args.seed,
        "init": str(args.init),
        "config": [*loaded.meta["config"], dataclasses.asdict(config)],
        "seconds": loaded.meta.get("seconds", 0.0) + time.perf_counter() - started,
    }
    path = args.out / f"{STEM}_supernet.pt"
    previous = loaded.meta.get("history") or []
    save_supernet(path, supernet, {**meta, "history": [*previous, *history.history]})
    return supernet, {"file": str(path), **meta}


def subnet_accuracy(supernet: OFASupernet, task: Task, arch: Arch, seed: int) -> float:
    """Test accuracy of the extracted sub-network after BN recalibration (no retraining)."""
    index = calibration_indices(len(task.x_train), EvalSpec(seed).calibration_size, seed)
    model = recalibrate_bn(extract_subnet(supernet, arch), task.x_train[index])
    return evaluate(model, task, "test")


def train_from_scratch(model: torch.nn.Module, task: Task, args: argparse.Namespace) -> float:
    config = TrainConfig(
        epochs=args.scratch_epochs, batch_size=128, lr=0.1, seed=args.seed, progress=False
    )
    train(model, task, config)
    return evaluate(model, task, "test")


def previous_scratch(args: argparse.Namespace) -> dict[str, float]:
    """From-scratch accuracies of a previous run with the same task, seed and epochs."""
    if not args.reuse_scratch:
        return {}
    previous = json.loads(args.reuse_scratch.read_text())
    same = all(
        previous["config"][k] == getattr(args, k) for k in ("task", "seed", "scratch_epochs")
    )
    return {r["arch"]: r["scratch_accuracy"] for r in previous.get("scratch", [])} if same else {}


def scratch_stage(supernet: OFASupernet, task: Task, args: argparse.Namespace) -> list[dict]:
    """Supernet sub-networks vs the same architectures trained from scratch."""
    reused = previous_scratch(args)
    space, rng = supernet.space, random.Random(args.seed + 7)
    archs = [space.largest(), space.smallest()]
    while len(archs) < args.archs:
        arch = space.sample(rng)
        if arch not in archs:
            archs.append(arch)
    rows = []
    for arch in archs[: args.archs]:
        log(f"scratch: {arch.label()}")
        from_supernet = subnet_accuracy(supernet, task, arch, args.seed)
        scratch = reused.get(arch.label())
        if scratch is None:
            torch.manual_seed(args.seed)
            fresh = build_subnet(space, arch, task.num_classes, task.in_channels, task.image_size)
            scratch = train_from_scratch(fresh, task, args)
        rows.append(
            {
                "arch": arch.label(),
                "supernet_accuracy": from_supernet,
                "scratch_accuracy": scratch,
                "delta_points": 100 * (from_supernet - scratch),
                "scratch_reused": arch.label() in reused,
            }
        )
    return rows


def mobilenet_stage(
    supernet: OFASupernet,
    task: Task,
    latency: Any,
    args: argparse.Namespace,
    timing: TimingConfig,
) -> list[dict]:
    """Searched sub-networks vs MobileNetV2 scaled to the same measured latency."""
    nets = {
        w: create_model("mobilenet_v2", task.num_classes, task.in_channels, task.image_size, w)
        for w in args.mbv2_widths
    }
    budgets, scale = calibrated_budgets(supernet, list(nets.values()), latency, args, timing)
    evaluator = LocalEvaluator(supernet, task, EvalSpec(args.seed))
    predictor = fit_predictor(supernet, evaluator, args.predictor_samples, args.seed)
    rows, models = [], []
    for (width, net), budget in zip(nets.items(), budgets, strict=True):
        log(f"mobilenet_v2 x{width}: train; search at {budget:.3f} ms")
        row = {"width_mult": width, "budget_ms": budget, "calibration_scale": scale}
        row["mbv2_accuracy"] = train_from_scratch(net, task, args)
        row["mbv2_macs"] = profile_model(net, task.example_input(1)).macs
        try:
            result = run_search(
                supernet,
                task,
                Constraints(latency_ms=BUDGET_MARGIN * budget),
                latency,
                evaluator,
                search_config(args),
                predictor,
            )
        except UserError as exc:  # the budget is below the smallest sub-network
            rows.append({**row, "arch": None, "searched_accuracy": None, "note": str(exc)})
            continue
        arch = result.best.arch
        row.update(
            arch=arch.label(),
            searched_accuracy=subnet_accuracy(supernet, task, arch, args.seed),
            searched_val_accuracy=result.best_val_accuracy,
            searched_predicted_ms=result.best.latency_ms,
            searched_macs=result.best.macs,
        )
        rows.append(row)
        models += [net, extract_subnet(supernet, arch)]
    side_by_side = iter(measure_latency(models, (1, task.in_channels, *task.image_size), timing))
    for row in rows:
        if row["arch"] is not None:
            row["mbv2_ms"], row["searched_ms"] = next(side_by_side), next(side_by_side)
    return rows


def calibrated_budgets(
    supernet: OFASupernet,
    nets: list[torch.nn.Module],
    latency: Any,
    args: argparse.Namespace,
    timing: TimingConfig,
) -> tuple[list[float], float]:
    """MobileNetV2 latencies in the latency model's units.

    Load from other processes changes latencies between the time the lookup table was timed
    and now, so MobileNetV2 is timed in one interleaved run with 10 reference sub-networks;
    its latency is scaled by their mean predicted / measured ratio."""
    references = sample_archs(supernet, 10, args.seed + 99)
    models = nets + [extract_subnet(supernet, a) for a in references]
    measured = measure_latency(models, (1, supernet.in_channels, *supernet.input_size), timing)
    ratios = [
        latency.predict(supernet, a) / m
        for a, m in zip(references, measured[len(nets) :], strict=True)
    ]
    scale = sum(ratios) / len(ratios)
    return [scale * m for m in measured[: len(nets)]], scale


def search_config(args: argparse.Namespace, samples: int | None = None) -> SearchConfig:
    evolution = EvolutionConfig(population=8, generations=2) if args.smoke else EvolutionConfig()
    return SearchConfig(
        predictor_samples=samples or args.predictor_samples,
        evolution=evolution,
        top_k=2 if args.smoke else 5,
        seed=args.seed,
    )


def ray_stage(
    supernet: OFASupernet, task: Task, latency: Any, budget: float, args: argparse.Namespace
) -> dict[str, Any]:
    """The same search with evaluations on Ray and in process."""
    spec, config = EvalSpec(args.seed), search_config(args, args.ray_samples)
    constraints = Constraints(latency_ms=budget)
    started = time.perf_counter()
    local = run_search(
        supernet, task, constraints, latency, LocalEvaluator(supernet, task, spec), config
    )
    local_seconds = time.perf_counter() - started
    with RayEvaluator(supernet, task, spec, num_cpus=2) as evaluator:
        started = time.perf_counter()
        remote = run_search(supernet, task, constraints, latency, evaluator, config)
        ray_seconds = time.perf_counter() - started
    return {
        "budget_ms": budget,
        "local": local.to_dict()["best"],
        "ray": remote.to_dict()["best"],
        "finalists_identical": local.to_dict()["finalists"] == remote.to_dict()["finalists"],
        "identical": local.to_dict() == remote.to_dict(),
        "local_seconds": local_seconds,
        "ray_seconds": ray_seconds,
    }


def checks(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if report.get("scratch"):
        deltas = [row["delta_points"] for row in report["scratch"]]
        out["supernet_no_worse_than_scratch_minus_1.5"] = min(deltas) >= -SCRATCH_TOLERANCE
        out["supernet_within_1.5_abs"] = max(abs(d) for d in deltas) <= SCRATCH_TOLERANCE
    if report.get("mobilenet_v2"):
        rows = report["mobilenet_v2"]
        found = [r for r in rows if r["arch"] is not None]
        out["searched_more_accurate_at_every_target"] = len(found) == len(rows) and all(
            r["searched_accuracy"] > r["mbv2_accuracy"] for r in found
        )
        out["searched_measured_not_slower_at_every_target"] = len(found) == len(rows) and all(
            r["searched_ms"] <= r["mbv2_ms"] for r in found
        )
    if report.get("ray"):
        out["ray_identical_to_in_process"] = report["ray"]["identical"]
    return out


def machine() -> dict[str, Any]:
    import os

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    if importlib.util.find_spec("ray"):
        import ray

        info["ray"] = ray.__version__
    return info


def training_text(report: dict[str, Any]) -> str:
    """The supernet's phases as trained (from its record when it has one, else the flags)."""
    configs = (report.get("supernet") or {}).get("config")
    if configs:
        first, rest = configs[0], configs[1:]
        phases = [first[k] for k in ("full_epochs", "kernel_epochs", "depth_epochs")]
        epochs = [*phases, first["expand_epochs"]]
        more = "+".join(str(c["expand_epochs"]) for c in rest) or "0"
    else:
        epochs, more = report["config"]["epochs"], str(report["config"]["continue_epochs"])
    return (
        f"epochs full/kernel/depth/expand = {'/'.join(str(e) for e in epochs)} (1 random "
        f"sub-network per step), then {more} more expand-phase epochs (2 random sub-networks "
        "per step; each continuation run with its own cosine schedule)"
    )


def markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    lines = [
        "# Once-for-all supernet on " + f"`{c['task']}`",
        "",
        f"Supernet: progressive shrinking, {training_text(report)}; "
        "1 torch thread. Accuracy is on the test split. Latency: ONNX Runtime, 1 thread, batch 1, "
        f"medians of {c['repeats']} interleaved calls (`time.thread_time`). Run "
        f"{report['created']}.",
        "",
    ]
    lines += _scratch_lines(report) + _mbv2_lines(report) + _ray_lines(report)
    lines += [
        "## Checks",
        "",
        *[f"- {name}: {'yes' if ok else 'NO'}" for name, ok in report["checks"].items()],
        "",
        f"Total wall time {report.get('seconds', 0):.0f} s on {report['machine']['cpu_count']} "
        f"cores (torch {report['machine']['torch']}, onnxruntime "
        f"{report['machine']['onnxruntime']}).",
        "",
    ]
    return "\n".join(lines)


def _scratch_lines(report: dict[str, Any]) -> list[str]:
    if not report.get("scratch"):
        return []
    lines = [
        "## Sub-networks from the supernet vs trained from scratch",
        "",
        f"From the supernet: weights copied, BN statistics recalibrated on 1,000 training "
        f"samples, no retraining. From scratch: {report['config']['scratch_epochs']} epochs, "
        "SGD, batch 128, lr 0.1 cosine, best on validation. Target: within "
        f"{SCRATCH_TOLERANCE} points.",
        "",
        "| architecture | supernet (%) | scratch (%) | Δ (points) |",
        "|---|---|---|---|",
    ]
    for r in report["scratch"]:
        mark = "*" if r["scratch_reused"] else ""
        lines.append(
            f"| `{r['arch']}` | {100 * r['supernet_accuracy']:.1f} | "
            f"{100 * r['scratch_accuracy']:.1f}{mark} | {r['delta_points']:+.1f} |"
        )
    rows = report["scratch"]
    below = [r for r in rows if r["delta_points"] < -SCRATCH_TOLERANCE]
    lines += [
        "",
        f"{len(rows) - len(below)} of {len(rows)} sub-networks are at most {SCRATCH_TOLERANCE} "
        "points below (or above) their from-scratch twin"
        + (
            "; below by more: "
            + ", ".join(f"`{r['arch']}` ({r['delta_points']:+.1f})" for r in below)
            if below
            else ""
        )
        + ".",
    ]
    if any(r["scratch_reused"] for r in rows):
        lines += [
            "",
            "\\* reused from an earlier run with the same task, seed and epochs "
            "(`--reuse-scratch`; training from scratch is deterministic on one thread).",
        ]
    return [*lines, ""]


def _mbv2_lines(report: dict[str, Any]) -> list[str]:
    if not report.get("mobilenet_v2"):
        return []
    lines = [
        "## Searched sub-network vs MobileNetV2 at the same latency",
        "",
        "MobileNetV2 (zoo `mobilenet_v2`, width multiplier w) trained from scratch with the "
        "same recipe. Its latency, timed interleaved with 10 reference sub-networks and scaled "
        "by their predicted/measured ratio (load from other processes drifts over time), "
        "times 0.95 (room for predictor error) is the budget of the evolutionary search. "
        "MobileNetV2 and the searched sub-network are then re-timed side by side.",
        "",
        "| w | MBv2 (%) | MBv2 ms | searched sub-network | searched (%) | searched ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["mobilenet_v2"]:
        if r["arch"] is None:
            lines.append(
                f"| {r['width_mult']} | {100 * r['mbv2_accuracy']:.1f} | – | none within "
                f"{r['budget_ms']:.3f} ms | – | – |"
            )
            continue
        lines.append(
            f"| {r['width_mult']} | {100 * r['mbv2_accuracy']:.1f} | {r['mbv2_ms']:.3f} | "
            f"`{r['arch']}` | {100 * r['searched_accuracy']:.1f} | {r['searched_ms']:.3f} |"
        )
    return [*lines, ""]


def _ray_lines(report: dict[str, Any]) -> list[str]:
    ray = report.get("ray")
    if not ray:
        return ["## Ray", "", f"Skipped: {report.get('ray_skipped', 'not run')}.", ""]
    return [
        "## Ray vs in process",
        "",
        f"Same search (seed, latency model, budget {ray['budget_ms']:.3f} ms) with candidate "
        f"evaluations on a local Ray (2 CPUs, {ray['ray_seconds']:.0f} s) and in this process "
        f"({ray['local_seconds']:.0f} s): chosen `{ray['ray']['label']}` vs "
        f"`{ray['local']['label']}`, validation accuracy {ray['ray']['val_accuracy']:.4f} vs "
        f"{ray['local']['val_accuracy']:.4f}; whole result identical: "
        f"{'yes' if ray['identical'] else 'NO'}.",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage; the report is rewritten after each, so partial results survive."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    task = load_task(args)
    report: dict[str, Any] = {
        "benchmark": STEM,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }

    def save() -> None:
        report["checks"] = checks(report)
        report["seconds"] = time.perf_counter() - started
        write_json_atomic(args.out / f"{STEM}.json", report)
        write_text_atomic(args.out / f"{STEM}.md", markdown(report))

    log("supernet")
    supernet, report["supernet"] = supernet_stage(args, task)
    timing = TimingConfig(warmup=min(10, args.repeats), repeats=args.repeats)
    latency, report["latency_model"] = fit_latency_model(
        supernet, args.latency_samples, args.seed, timing
    )
    save()
    report["scratch"] = scratch_stage(supernet, task, args)
    save()
    report["mobilenet_v2"] = mobilenet_stage(supernet, task, latency, args, timing)
    save()
    if args.no_ray or not importlib.util.find_spec("ray"):
        report["ray_skipped"] = "--no-ray" if args.no_ray else "ray is not installed"
    else:
        budget = BUDGET_MARGIN * report["mobilenet_v2"][-1]["budget_ms"]
        report["ray"] = ray_stage(supernet, task, latency, budget, args)
    save()
    return report


if __name__ == "__main__":
    main()
