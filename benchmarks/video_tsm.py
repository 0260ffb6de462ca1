"""Temporal shift (TSM) vs TSN vs C3D on digit video tasks; online TSM; TSM pruned + int8.

Lin, Gan, Han, "TSM: Temporal Shift Module for Efficient Video Understanding" (ICCV 2019):
shifting 1/8 + 1/8 of the channels of a 2D CNN along time gives it temporal modelling at zero
extra parameters and MACs. On each task (``mobiledl.data.video``: ``video-motion`` and
``video-rotation``, where the order of frames decides the class, and the control
``video-digit``, where one frame does) and each seed, this trains TSN (ResNet-8 per frame,
logits averaged), TSM (the same with the bi-directional residual shift), uni-directional TSM
and C3D (half-width, 3x3x3 convolutions), and reports test accuracy, params and MACs
(profiled). It then streams the uni-directional model frame by frame as ``OnlineTSM`` (in
PyTorch and ONNX Runtime: logits against the offline model, last-frame accuracy), and
channel-prunes TSM to half its MACs, quantizes it to int8 (``mobiledl.apply``) and evaluates
the int8 graph in ONNX Runtime.

``--latency`` also times one frame of the online model against one frame of the plain 2D
ResNet-8 in ONNX Runtime (interleaved medians, batch 1), each through the same two calling
paths: ``FrameStream.step`` (I/O binding, the caches kept in bound buffers: what ``mobiledl
video stream`` runs; the headline ratio) and ``OrtRunner.run_all`` with a numpy feed.
``--latency-only`` times only that (untrained models: latency does not depend on the
weights), trains nothing and writes a report without accuracy rows: give it another
``--out`` than the full results.

    python -m benchmarks video_tsm                       # 3 seeds, 3 tasks
    python -m benchmarks video_tsm --latency --threads 1 --clock thread
    python -m benchmarks video_tsm --latency-only --threads 1 --clock thread --out DIR
    python -m benchmarks video_tsm --smoke               # seconds, into a temporary directory
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from benchmarks import harness
from benchmarks.harness.cli import RESULTS
from mobiledl import apply
from mobiledl.apps.video import OnlineTSM, VideoClassifier, online_frame_logits
from mobiledl.compress.prune import ChannelPruneConfig
from mobiledl.compress.quantize import QuantConfig
from mobiledl.core.task import TensorTask
from mobiledl.deploy import FrameStream, get_engine
from mobiledl.errors import UserError
from mobiledl.measure import artifact_outputs
from mobiledl.models import create_model, create_model_for_task
from mobiledl.profile import profile_model
from mobiledl.train import TrainConfig, evaluate, train

STEM = "video_tsm"
MODELS = ("tsn_resnet8", "tsm_resnet8", "tsm_uni_resnet8", "c3d_small")
TEMPORAL = ("video-motion", "video-rotation")
CONTROL = ("video-digit",)
TARGETS = {
    "tsm_over_tsn_points": 20.0,
    "control_gap_points": 2.0,
    "tsm_over_c3d_macs": 1 / 3,
    "parity_max_abs": 1e-5,
    "online_last_frame_gap_points": 2.0,
    "online_latency_ratio": 1.15,
    "compose_gap_points": 2.0,
}
#: Clips per training step (a small batch gives ~70 steps per epoch on 1,079 clips).
BATCH_SIZE = 16
#: Test clips streamed through ONNX Runtime for the parity check.
ORT_PARITY_CLIPS = 16


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__, clock=True)
    parser.add_argument("--tasks", default=None, help="comma-separated (default: all three)")
    parser.add_argument("--seeds", type=harness.positive_int("--seeds"), default=None)
    parser.add_argument("--epochs", type=harness.positive_int("--epochs"), default=None)
    parser.add_argument(
        "--finetune-epochs",
        type=harness.positive_int("--finetune-epochs"),
        default=None,
        help="epochs fine-tuning TSM after channel pruning",
    )
    parser.add_argument(
        "--image-size", type=harness.positive_int("--image-size"), default=16, help="frame size"
    )
    parser.add_argument(
        "--latency", action="store_true", help="time online TSM vs the 2D backbone per frame"
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the latency part: no training, no accuracy rows (use another --out)",
    )
    args = harness.parse(parser, argv)
    args.latency = args.latency or args.latency_only
    if args.latency_only and Path(args.out).resolve() == RESULTS.resolve():
        raise UserError(
            "--latency-only writes a report without the accuracy rows: give it another --out "
            "than benchmarks/results (which holds the full run)"
        )
    smoke = {"tasks": "video-motion", "seeds": 1, "epochs": 1, "finetune_epochs": 1, "repeats": 5}
    full = {
        "tasks": ",".join(TEMPORAL + CONTROL),
        "seeds": 3,
        "epochs": 12,
        "finetune_epochs": 3,
        "repeats": 300,
    }
    harness.resolve(args, smoke, full)
    args.tasks = harness.names(args.tasks)
    return args


def _fit(name: str, task: TensorTask, epochs: int, seed: int) -> nn.Module:
    """Zoo model ``name`` trained from scratch on ``task`` (best-on-validation weights)."""
    torch.manual_seed(seed)
    model = create_model_for_task(name, task)
    config = TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, seed=seed, progress=False)
    train(model, task, config)
    return model


def _cost(model: nn.Module, task: TensorTask) -> dict[str, int]:
    profile = profile_model(model, task.example_input(1))
    return {"params": profile.params, "macs": profile.macs}


def online_row(uni: VideoClassifier, task: TensorTask) -> dict[str, Any]:
    """Online vs offline uni-directional TSM: frame logits (PyTorch, ONNX Runtime) and the
    accuracy of the last frame's logits alone."""
    x, y = task.split("test")
    online = OnlineTSM(uni, tuple(x.shape[2:]))
    with torch.no_grad():
        offline = uni.eval().frame_logits(x)
    streamed = online_frame_logits(online, x)
    return {
        "parity_torch": (streamed - offline).abs().max().item(),
        **_ort_stream_diff(uni, online, x[:ORT_PARITY_CLIPS], offline[:ORT_PARITY_CLIPS]),
        "last_frame_accuracy": task.metric(streamed[:, -1], y),
        "offline_uni_accuracy": task.metric(offline.mean(dim=1), y),
    }


class _FrameLogits(nn.Module):
    """``model.frame_logits`` as a module's forward, so the offline per-frame logits export."""

    def __init__(self, model: VideoClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model.frame_logits(clips)


def _ort_stream_diff(
    uni: VideoClassifier, online: OnlineTSM, clips: torch.Tensor, offline: torch.Tensor
) -> dict[str, float]:
    """ONNX Runtime's streamed frame logits against the offline model run in ONNX Runtime
    (``parity_ort``, the check: same engine, so only the streaming differs) and against the
    offline model in PyTorch (``ort_vs_torch``: also the two engines' float kernels)."""
    engine = get_engine("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="mobiledl-video-") as tmp:
        example = (clips[:1, 0], *online.initial_caches(1))
        path = engine.export(
            online.eval(), example, Path(tmp) / "online.onnx", online.input_specs()
        )
        offline_path = engine.export(_FrameLogits(uni).eval(), clips[:1], Path(tmp) / "off.onnx")
        runner = engine.load(path, threads=1)
        offline_runner = engine.load(offline_path, threads=1)
        same_engine, cross_engine = 0.0, 0.0
        for clip, expected in zip(clips, offline, strict=True):
            ort_offline = offline_runner.run(clip[None].numpy())[0]
            caches = [c.numpy() for c in online.initial_caches(1)]
            for t in range(len(clip)):
                logits, *caches = runner.run_all((clip[t : t + 1].numpy(), *caches))
                same_engine = max(same_engine, float(np.abs(logits[0] - ort_offline[t]).max()))
                cross_engine = max(
                    cross_engine, float(np.abs(logits[0] - expected[t].numpy()).max())
                )
    return {"parity_ort": same_engine, "ort_vs_torch": cross_engine}


def compose_row(tsm: nn.Module, task: TensorTask, finetune: int, seed: int) -> dict[str, Any]:
    """TSM channel-pruned to half its MACs (fine-tuned), int8 PTQ, evaluated in ONNX Runtime."""
    tune = TrainConfig(epochs=finetune, batch_size=BATCH_SIZE, seed=seed, progress=False)
    pruned = apply(tsm, ChannelPruneConfig(macs_ratio=0.5, finetune=tune), task)
    int8 = apply(pruned, QuantConfig(), task)
    engine = get_engine("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="mobiledl-video-") as tmp:
        path = engine.export(int8, task.example_input(1), Path(tmp) / "tsm_int8.onnx")
        accuracy = task.metric(*artifact_outputs(engine, path, task))
    return {
        "pruned_macs_ratio": _cost(pruned, task)["macs"] / _cost(tsm, task)["macs"],
        "pruned_float_accuracy": evaluate(pruned, task),
        "int8_ort_accuracy": accuracy,
    }


def seed_row(spec: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every model on one task and seed, plus the online and composition results."""
    task = harness.load_task(spec, args.image_size, seed, args.smoke)
    models = {}
    row: dict[str, Any] = {"task": spec, "seed": seed, "models": {}}
    for name in MODELS:
        print(f"{spec} seed {seed}: {name}", file=sys.stderr)
        models[name] = _fit(name, task, args.epochs, seed)
        row["models"][name] = {
            "accuracy": evaluate(models[name], task),
            **_cost(models[name], task),
        }
    row["online"] = online_row(models["tsm_uni_resnet8"], task)
    if spec in TEMPORAL or args.smoke:
        row["compose"] = compose_row(models["tsm_resnet8"], task, args.finetune_epochs, seed)
    return row


def latency(args: argparse.Namespace, task: TensorTask) -> dict[str, Any]:
    """Per-frame ONNX Runtime latency of online TSM and of the plain 2D ResNet-8 (batch 1),
    both through ``FrameStream`` (``cells``, ``ratio``) and both through ``OrtRunner.run_all``
    with a numpy feed (``session_run``); each pair timed interleaved on its own."""
    frame_shape = tuple(task.input_shape[1:])
    uni = create_model_for_task("tsm_uni_resnet8", task).eval()
    online = OnlineTSM(uni, frame_shape).eval()
    plain = create_model("resnet8", task.num_classes, frame_shape[0], frame_shape[1:]).eval()
    frame = task.example_input(1)[:, 0]
    caches = online.initial_caches(1)
    engine = get_engine("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="mobiledl-video-") as tmp:
        plain_path = engine.export(plain, frame, Path(tmp) / "resnet8.onnx")
        online_path = engine.export(
            online, (frame, *caches), Path(tmp) / "online.onnx", online.input_specs()
        )
        plain_runner = engine.load(plain_path, threads=args.threads)
        online_runner = engine.load(online_path, threads=args.threads)
        x = frame.numpy()
        feed = (x, *(c.numpy() for c in caches))
        plain_stream, online_stream = FrameStream(plain_runner), FrameStream(online_runner)
        paths = {
            "stream": {
                "resnet8_frame": lambda: plain_stream.step(x),
                "online_tsm_frame": lambda: online_stream.step(x),
            },
            "session_run": {
                "resnet8_frame": lambda: plain_runner.run(x),
                "online_tsm_frame": lambda: online_runner.run_all(feed),
            },
        }
        timed = {
            path: harness.interleaved(
                calls,
                repeats=args.repeats,
                warmup=min(20, args.repeats),
                clock=args.clock,
                reference="resnet8_frame",
            )
            for path, calls in paths.items()
        }
        kernels = {
            "resnet8": _kernels(plain_path, args.threads),
            "online_tsm": _kernels(online_path, args.threads),
        }
    ratios = {
        path: cells["online_tsm_frame"]["median_ms"] / cells["resnet8_frame"]["median_ms"]
        for path, cells in timed.items()
    }
    per_frame = {
        "online_tsm": profile_model(online, (frame, *caches)),
        "resnet8": profile_model(plain, frame),
    }
    costs = {
        k: {"macs": p.macs, "peak_memory_bytes": p.peak_memory_bytes} for k, p in per_frame.items()
    }
    return {
        "path": "FrameStream.step (ONNX Runtime I/O binding, caches kept in bound buffers)",
        "cells": timed["stream"],
        "ratio": ratios["stream"],
        "session_run": {"cells": timed["session_run"], "ratio": ratios["session_run"]},
        "kernels": kernels,
        "per_frame": costs,
    }


def _kernels(path: Path, threads: int) -> dict[str, int]:
    """Node count per operator of the graph ONNX Runtime runs (after its optimizations)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    options.log_severity_level = 3  # not the warning that NCHWc graphs are machine-specific
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    return dict(sorted(ops.items(), key=lambda item: (-item[1], item[0])))


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def task_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds and the Done-when checks of one task's rows."""
    spec = rows[0]["task"]
    acc = {m: _mean([r["models"][m]["accuracy"] for r in rows]) for m in MODELS}
    first = rows[0]["models"]
    same_cost = all(
        r["models"]["tsn_resnet8"][k] == r["models"]["tsm_resnet8"][k]
        for r in rows
        for k in ("params", "macs")
    )
    mac_ratio = first["tsm_resnet8"]["macs"] / first["c3d_small"]["macs"]
    online = {k: _mean([r["online"][k] for r in rows]) for k in rows[0]["online"]}
    online["parity_torch"] = max(r["online"]["parity_torch"] for r in rows)
    for key in ("parity_ort", "ort_vs_torch"):
        online[key] = max(r["online"][key] for r in rows)
    gap = 100 * (acc["tsm_resnet8"] - acc["tsn_resnet8"])
    checks = {
        "same_params_macs": same_cost,
        "tsm_vs_c3d_macs": mac_ratio <= TARGETS["tsm_over_c3d_macs"],
        "tsm_ge_c3d": acc["tsm_resnet8"] >= acc["c3d_small"],
        "online_parity": max(online["parity_torch"], online["parity_ort"])
        <= TARGETS["parity_max_abs"],
        "online_last_frame": 100
        * abs(online["offline_uni_accuracy"] - online["last_frame_accuracy"])
        <= TARGETS["online_last_frame_gap_points"],
    }
    if spec in CONTROL:
        checks["control_within"] = abs(gap) <= TARGETS["control_gap_points"]
    else:
        checks["tsm_beats_tsn"] = gap >= TARGETS["tsm_over_tsn_points"]
    summary = {
        "task": spec,
        "seeds": len(rows),
        "accuracy": acc,
        "tsm_minus_tsn_points": gap,
        "tsm_over_c3d_macs": mac_ratio,
        "online": online,
        "checks": checks,
    }
    composed = [r["compose"] for r in rows if "compose" in r]
    if composed:
        int8 = _mean([c["int8_ort_accuracy"] for c in composed])
        summary["compose"] = {
            "int8_ort_accuracy": int8,
            "pruned_macs_ratio": _mean([c["pruned_macs_ratio"] for c in composed]),
            "pruned_float_accuracy": _mean([c["pruned_float_accuracy"] for c in composed]),
        }
        checks["compose_within"] = (
            100 * abs(acc["tsm_resnet8"] - int8) <= TARGETS["compose_gap_points"]
        )
    return summary


def markdown(report: dict[str, Any]) -> str:
    """The accuracy table, the online and composition rows, the latency and every check
    (``--latency-only``: the latency alone)."""
    summary = report["summary"]
    if report["rows"]:
        lines = _accuracy_markdown(report)
    else:
        lines = [
            "# Online TSM: per-frame latency (--latency-only: nothing trained, no accuracy rows)"
        ]
    if "latency" in summary:
        lines += _latency_markdown(report)
    lines += ["", "Checks:", ""]
    for task in summary["tasks"]:
        verdicts = ", ".join(f"{k} {harness.yes(v)}" for k, v in task["checks"].items())
        lines.append(f"- {task['task']}: {verdicts}")
    if "latency" in summary:
        lines.append(
            f"- latency: online_latency_ratio {harness.yes(summary['latency']['meets_target'])}"
        )
    lines += ["", harness.machine_line(report), ""]
    return "\n".join(lines)


def _latency_markdown(report: dict[str, Any]) -> list[str]:
    """Both calling paths' per-frame medians and ratios, and the kernels each graph runs (a
    report from before the two paths were timed: its one line)."""
    lat = report["summary"]["latency"]
    if "session_run" not in lat:
        return [
            "",
            f"Per-frame ONNX Runtime latency ({harness.clock_text(report['config']['clock'])}, "
            f"batch 1, interleaved medians): online TSM "
            f"{lat['cells']['online_tsm_frame']['median_ms']:.3f} ms, ResNet-8 "
            f"{lat['cells']['resnet8_frame']['median_ms']:.3f} ms: ratio {lat['ratio']:.3f} "
            f"(target <= {TARGETS['online_latency_ratio']}).",
        ]
    flags = report["machine"].get("cpu_flags", {})
    isa = "with AVX-512" if flags.get("avx512f") else "without AVX-512"
    lines = [
        "",
        f"Per-frame ONNX Runtime latency ({harness.clock_text(report['config']['clock'])}, "
        f"batch 1, {harness.plural(report['config']['threads'], 'thread')}, interleaved "
        f"medians of {report['config']['repeats']}, a CPU {isa}), both models through the "
        "same path:",
        "",
    ]
    paths = {
        "FrameStream.step (I/O binding)": lat,
        "OrtRunner.run_all (numpy feed)": lat["session_run"],
    }
    rows = [
        [
            name,
            f"{1000 * entry['cells']['resnet8_frame']['median_ms']:.1f}",
            f"{1000 * entry['cells']['online_tsm_frame']['median_ms']:.1f}",
            f"{entry['ratio']:.3f}",
        ]
        for name, entry in paths.items()
    ]
    lines += harness.markdown_table(
        ["path", "ResNet-8 (us)", "online TSM (us)", "ratio"], rows, "lrrr"
    )
    lines.append("")
    lines.append(
        f"Headline: ratio {lat['ratio']:.3f} (target <= {TARGETS['online_latency_ratio']})."
    )
    if "kernels" in lat:
        kernels = {k: sum(v.values()) for k, v in lat["kernels"].items()}
        extra = ", ".join(
            f"{op} {n - lat['kernels']['resnet8'].get(op, 0)}"
            for op, n in lat["kernels"]["online_tsm"].items()
            if n > lat["kernels"]["resnet8"].get(op, 0)
        )
        lines.append(
            f"Kernels ONNX Runtime runs per frame: ResNet-8 {kernels['resnet8']}, online TSM "
            f"{kernels['online_tsm']} (extra: {extra})."
        )
    return lines


def _accuracy_markdown(report: dict[str, Any]) -> list[str]:
    """The accuracy and cost tables, the online parity and the composition rows."""
    summary = report["summary"]
    lines = [
        "# Temporal shift module: TSM vs TSN vs C3D, online TSM, pruned + int8 TSM",
        "",
        f"Test accuracy (%), mean of {report['config']['seeds']} seeds (per seed in brackets); "
        f"{report['config']['epochs']} epochs, {report['config']['image_size']}x"
        f"{report['config']['image_size']} frames, 8 frames per clip. MACs per clip, profiled.",
        "",
    ]
    header = ["task", *MODELS, "TSM - TSN (pts)", "TSM / C3D MACs"]
    rows = []
    for task in summary["tasks"]:
        per_seed = [r for r in report["rows"] if r["task"] == task["task"]]
        cells = [
            f"{harness.pct(task['accuracy'][m], 1)} "
            f"({', '.join(harness.pct(r['models'][m]['accuracy'], 1) for r in per_seed)})"
            for m in MODELS
        ]
        rows.append(
            [
                task["task"],
                *cells,
                f"{task['tsm_minus_tsn_points']:+.1f}",
                f"{task['tsm_over_c3d_macs']:.3f}",
            ]
        )
    lines += harness.markdown_table(header, rows, "l" + "r" * (len(header) - 1))
    first = report["rows"][0]["models"]
    cost_rows = [[m, f"{first[m]['params']:,}", f"{first[m]['macs']:,}"] for m in MODELS]
    lines += ["", *harness.markdown_table(["model", "params", "MACs per clip"], cost_rows, "lrr")]
    lines += [
        "",
        "Online uni-directional TSM (frame by frame, caches of the shifted channels):",
        "",
    ]
    online_rows = [
        [
            t["task"],
            f"{t['online']['parity_torch']:.1e}",
            f"{t['online']['parity_ort']:.1e}",
            f"{t['online']['ort_vs_torch']:.1e}",
            harness.pct(t["online"]["offline_uni_accuracy"], 1),
            harness.pct(t["online"]["last_frame_accuracy"], 1),
        ]
        for t in summary["tasks"]
    ]
    lines += harness.markdown_table(
        [
            "task",
            "max diff PyTorch",
            "max diff ORT",
            "ORT online vs PyTorch offline",
            "offline uni clip acc",
            "online last frame acc",
        ],
        online_rows,
        "lrrrrr",
    )
    composed = [t for t in summary["tasks"] if "compose" in t]
    if composed:
        lines += [
            "",
            "TSM channel-pruned to 0.5x MACs (fine-tuned) + int8 PTQ, run in ONNX Runtime:",
            "",
        ]
        lines += harness.markdown_table(
            ["task", "float TSM", "pruned float", "pruned int8 (ORT)", "MAC ratio"],
            [
                [
                    t["task"],
                    harness.pct(t["accuracy"]["tsm_resnet8"], 1),
                    harness.pct(t["compose"]["pruned_float_accuracy"], 1),
                    harness.pct(t["compose"]["int8_ort_accuracy"], 1),
                    f"{t['compose']['pruned_macs_ratio']:.3f}",
                ]
                for t in composed
            ],
            "lrrrr",
        )
    return lines


def _seed_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every task and seed's row (each a stage that resumes under ``--out``)."""
    store = harness.StageStore(Path(args.out) / f"{STEM}_stages")
    key = {k: getattr(args, k) for k in ("epochs", "finetune_epochs", "image_size", "smoke")}
    return [
        store.json(
            f"{spec}-seed{seed}",
            {**key, "task": spec, "seed": seed},
            lambda s=spec, n=seed: seed_row(s, n, args),
        )
        for spec in args.tasks
        for seed in range(args.seed, args.seed + args.seeds)
    ]


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Every task and seed (stages resume under ``--out``), the summaries, latency if asked
    (``--latency-only``: the latency alone)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = [] if args.latency_only else args.tasks
    rows = _seed_rows(args) if specs else []
    summary: dict[str, Any] = {
        "targets": TARGETS,
        "tasks": [task_summary([r for r in rows if r["task"] == spec]) for spec in specs],
    }
    if args.latency:
        task = harness.load_task(args.tasks[0], args.image_size, args.seed, smoke=True)
        summary["latency"] = latency(args, task)
        summary["latency"]["meets_target"] = (
            summary["latency"]["ratio"] <= TARGETS["online_latency_ratio"]
        )
    return harness.write_results(args, rows, summary, markdown)
