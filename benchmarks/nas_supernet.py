"""Once-for-all supernet: sub-networks vs training from scratch, searched nets vs MobileNetV2,
and a Ray search against the same search in process.

1. Train the supernet by progressive shrinking, then ``--continue-epochs`` more expand-phase
   runs (2 random sub-networks per step, each with its own cosine schedule), or reuse
   ``--supernet``.
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

Every stage is kept under ``--out``/``nas_supernet_stages/`` (a supernet file per training
run, JSON for the others) with the settings it was computed from; re-running the command
skips the stages already done with the same settings, so an interrupted run resumes and
adding a continuation to ``--continue-epochs`` trains only that one. The results are
rewritten after each stage.

    python -m benchmarks nas_supernet          # full run (hours), resumable
    python -m benchmarks nas_supernet --smoke  # tiny space and data, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.nas_latency_predictor import fresh_supernet
from mobiledl.automl.nas.efficiency import LatencyPredictor, TimingConfig, measure_latency
from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.evaluate import EvalSpec, LocalEvaluator, RayEvaluator
from mobiledl.automl.nas.extract import (
    build_subnet,
    calibration_indices,
    extract_subnet,
    recalibrate_bn,
)
from mobiledl.automl.nas.run import (
    SearchConfig,
    fit_latency_model,
    fit_predictor,
    run_search,
    sample_archs,
)
from mobiledl.automl.nas.search import Constraints, EvolutionConfig
from mobiledl.automl.nas.space import Arch
from mobiledl.automl.nas.store import load_supernet, save_supernet
from mobiledl.automl.nas.train import ShrinkConfig, progressive_shrink
from mobiledl.data import Task
from mobiledl.errors import UserError
from mobiledl.models import create_model
from mobiledl.profile import profile_model
from mobiledl.train import TrainConfig, evaluate, train

STEM = "nas_supernet"
SCRATCH_TOLERANCE = 1.5  # points
KINDS = ("scratch", "mobilenet_v2")  # the two tables of rows
BUDGET_MARGIN = 0.95  # search within 95% of MobileNetV2's latency: room for predictor error


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__, threads=False)
    parser.add_argument("--task", default=None, help="default mnist1d (smoke: digits)")
    parser.add_argument("--supernet", type=Path, help="use this trained supernet file")
    parser.add_argument("--epochs", default=None, help="full,kernel,depth,expand (15,6,6,6)")
    parser.add_argument(
        "--continue-epochs",
        default=None,
        help="then runs of more expand-phase epochs, 2 random networks per step (30,30)",
    )
    parser.add_argument("--scratch-epochs", type=int, default=None, help="default 20")
    parser.add_argument("--archs", type=int, default=None, help="default 5")
    parser.add_argument("--mbv2-widths", default=None, help="default 0.35,0.5,0.75")
    parser.add_argument("--latency-samples", type=int, default=None, help="default 40")
    parser.add_argument("--predictor-samples", type=int, default=None, help="default 120")
    parser.add_argument("--ray-samples", type=int, default=None, help="default 40")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    args = harness.parse(parser, argv)
    smoke = {"task": "digits", "epochs": "1,1,2,2", "continue_epochs": "1", "scratch_epochs": 1}
    full = {"task": "mnist1d", "epochs": "15,6,6,6", "continue_epochs": "30,30"}
    smoke.update(archs=2, mbv2_widths="0.1,0.25,0.35", latency_samples=5, predictor_samples=8)
    full.update(scratch_epochs=20, archs=5, mbv2_widths="0.35,0.5,0.75", latency_samples=40)
    smoke.update(ray_samples=6, repeats=5)
    full.update(predictor_samples=120, ray_samples=40, repeats=90)
    harness.resolve(args, smoke, full)
    args.epochs = [int(v) for v in harness.names(args.epochs)]
    if len(args.epochs) != 4:
        raise UserError(f"--epochs takes full,kernel,depth,expand; got {args.epochs}")
    args.continue_epochs = [int(v) for v in harness.names(args.continue_epochs)]
    args.mbv2_widths = [float(v) for v in harness.names(args.mbv2_widths)]
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shrink_configs(args: argparse.Namespace) -> list[ShrinkConfig]:
    """``mobiledl nas train`` defaults, then one expand-phase run per ``--continue-epochs``
    entry (``--expand-epochs N --sandwich 2``, other phases 0). The first continuation shares
    the seed; the k-th after it (k >= 2) uses ``seed + k`` so it draws new samples."""
    full, kernel, depth, expand = args.epochs
    common = {"batch_size": 128, "lr": 0.1, "shrink_lr": 0.03, "progress": False}
    configs = [ShrinkConfig(full, kernel, depth, expand, sandwich=1, seed=args.seed, **common)]
    for k, epochs in enumerate(args.continue_epochs, start=1):
        seed = args.seed if k == 1 else args.seed + k
        configs.append(ShrinkConfig(0, 0, 0, epochs, sandwich=2, seed=seed, **common))
    return configs


def supernet_stages(
    args: argparse.Namespace, task: Task, store: harness.StageStore
) -> tuple[OFASupernet, dict[str, Any]]:
    """The trained supernet and its record: ``--supernet``, or every training run in turn,
    each saved to its own file and loaded instead of retrained when its settings match."""
    if args.supernet:
        loaded = load_supernet(args.supernet)
        return loaded.supernet, {"file": str(args.supernet), **loaded.meta, "history": None}
    configs = [dataclasses.asdict(c) for c in shrink_configs(args)]
    supernet, meta = fresh_supernet(args.task, args.smoke, args.seed), {"seconds": 0.0}
    history: list[dict[str, Any]] = []
    for index, config in enumerate(shrink_configs(args)):
        path = store.path(f"supernet_{index}", ".pt")
        if path.is_file() and load_supernet(path).meta.get("config") == configs[: index + 1]:
            loaded = load_supernet(path)
            log(f"supernet run {index}: done before, loaded from {path}")
            supernet, meta, history = loaded.supernet, loaded.meta, loaded.meta["history"]
            continue
        log(f"supernet run {index}: {dataclasses.asdict(config)}")
        started = time.perf_counter()
        history = [*history, *progressive_shrink(supernet, task, config).history]
        meta = {
            "task": args.task,
            "seed": args.seed,
            "config": configs[: index + 1],
            "seconds": meta["seconds"] + time.perf_counter() - started,
            "history": history,
        }
        save_supernet(path, supernet, meta)
    record = {k: v for k, v in meta.items() if k != "history"}
    return supernet, {"file": str(path), **record}


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


def scratch_stage(supernet: OFASupernet, task: Task, args: argparse.Namespace) -> list[dict]:
    """Supernet sub-networks vs the same architectures trained from scratch."""
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
        torch.manual_seed(args.seed)
        fresh = build_subnet(space, arch, task.num_classes, task.in_channels, task.image_size)
        scratch = train_from_scratch(fresh, task, args)
        rows.append(
            {
                "kind": "scratch",
                "arch": arch.label(),
                "supernet_accuracy": from_supernet,
                "scratch_accuracy": scratch,
                "delta_points": 100 * (from_supernet - scratch),
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
        row = {
            "kind": "mobilenet_v2",
            "width_mult": width,
            "budget_ms": budget,
            "calibration_scale": scale,
        }
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


def checks(
    scratch: list[dict[str, Any]], mbv2: list[dict[str, Any]], ray: dict[str, Any] | None
) -> dict[str, Any]:
    """The targets: sub-networks vs scratch, searched vs MobileNetV2, Ray vs in process."""
    out: dict[str, Any] = {}
    if scratch:
        deltas = [row["delta_points"] for row in scratch]
        out["supernet_no_worse_than_scratch_minus_1.5"] = min(deltas) >= -SCRATCH_TOLERANCE
        out["supernet_within_1.5_abs"] = max(abs(d) for d in deltas) <= SCRATCH_TOLERANCE
    if mbv2:
        rows = mbv2
        found = [r for r in rows if r["arch"] is not None]
        out["searched_more_accurate_at_every_target"] = len(found) == len(rows) and all(
            r["searched_accuracy"] > r["mbv2_accuracy"] for r in found
        )
        out["searched_measured_not_slower_at_every_target"] = len(found) == len(rows) and all(
            r["searched_ms"] <= r["mbv2_ms"] for r in found
        )
    if ray:
        out["ray_identical_to_in_process"] = ray["identical"]
    return out


def training_text(report: dict[str, Any]) -> str:
    """The supernet's phases as trained (from its record when it has one, else the flags)."""
    configs = (report["summary"].get("supernet") or {}).get("config")
    if configs:
        first, rest = configs[0], configs[1:]
        phases = [first[k] for k in ("full_epochs", "kernel_epochs", "depth_epochs")]
        epochs = [*phases, first["expand_epochs"]]
        more = "+".join(str(c["expand_epochs"]) for c in rest) or "0"
    else:
        epochs = report["config"]["epochs"]
        more = "+".join(str(e) for e in report["config"]["continue_epochs"]) or "0"
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
    scratch, mbv2 = ([r for r in report["rows"] if r["kind"] == k] for k in KINDS)
    lines += _scratch_lines(report, scratch) if scratch else []
    lines += (_mbv2_lines(mbv2) if mbv2 else []) + _ray_lines(report)
    lines += [
        "## Checks",
        "",
        *[f"- {name}: {harness.yes(ok)}" for name, ok in report["summary"]["checks"].items()],
        "",
        harness.machine_line(report),
        "",
    ]
    return "\n".join(lines)


def _scratch_lines(report: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
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
    for r in rows:
        mark = "*" if r.get("scratch_reused") else ""
        lines.append(
            f"| `{r['arch']}` | {100 * r['supernet_accuracy']:.1f} | "
            f"{100 * r['scratch_accuracy']:.1f}{mark} | {r['delta_points']:+.1f} |"
        )
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
    if any(r.get("scratch_reused") for r in rows):
        lines += [
            "",
            "\\* reused from an earlier run with the same task, seed and epochs "
            "(training from scratch is deterministic on one thread).",
        ]
    return [*lines, ""]


def _mbv2_lines(rows: list[dict[str, Any]]) -> list[str]:
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
    for r in rows:
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
    ray = report["summary"].get("ray")
    if not ray:
        return ["## Ray", "", f"Skipped: {report['summary'].get('ray_skipped', 'not run')}.", ""]
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


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run every stage not done before; the results are rewritten after each."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    task = harness.load_task(args.task, seed=args.seed, smoke=args.smoke)
    store = harness.StageStore(args.out / f"{STEM}_stages")
    summary: dict[str, Any] = {}
    scratch: list[dict[str, Any]] = []
    mbv2: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:
        summary["checks"] = checks(scratch, mbv2, summary.get("ray"))
        return harness.write_results(args, [*scratch, *mbv2], summary, markdown)

    supernet, summary["supernet"] = supernet_stages(args, task, store)
    timing = TimingConfig(warmup=min(10, args.repeats), repeats=args.repeats)
    key = {"supernet": summary["supernet"].get("config") or summary["supernet"]["file"]}
    key.update(task=args.task, seed=args.seed, repeats=args.repeats)

    def latency_stage() -> dict[str, Any]:
        predictor, stats = fit_latency_model(supernet, args.latency_samples, args.seed, timing)
        return {"predictor": predictor.to_dict(), "stats": stats}

    key["latency_samples"] = args.latency_samples
    fitted = store.json("latency_model", key, latency_stage)
    latency = LatencyPredictor.from_dict(fitted["predictor"])
    summary["latency_model"] = fitted["stats"]
    save()
    key.update(scratch_epochs=args.scratch_epochs, archs=args.archs)
    scratch = store.json("scratch", key, lambda: scratch_stage(supernet, task, args))
    save()
    key.update(mbv2_widths=args.mbv2_widths, predictor_samples=args.predictor_samples)
    mbv2 = store.json(
        "mobilenet_v2", key, lambda: mobilenet_stage(supernet, task, latency, args, timing)
    )
    save()
    if args.no_ray or not importlib.util.find_spec("ray"):
        summary["ray_skipped"] = "--no-ray" if args.no_ray else "ray is not installed"
        return save()
    budget = BUDGET_MARGIN * mbv2[-1]["budget_ms"]
    key.update(ray_samples=args.ray_samples)
    summary["ray"] = store.json(
        "ray", key, lambda: ray_stage(supernet, task, latency, budget, args)
    )
    return save()
