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
ResNet-8 in ONNX Runtime (interleaved medians, batch 1).

    python -m benchmarks video_tsm                       # 3 seeds, 3 tasks
    python -m benchmarks video_tsm --latency --threads 1 --clock thread
    python -m benchmarks video_tsm --smoke               # seconds, into a temporary directory
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import harness
from mobiledl import apply
from mobiledl.apps.video import OnlineTSM, VideoClassifier, online_frame_logits
from mobiledl.compress.prune import ChannelPruneConfig
from mobiledl.compress.quantize import QuantConfig
from mobiledl.core.task import TensorTask
from mobiledl.deploy import get_engine
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
    args = harness.parse(parser, argv)
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
    """Per-frame ONNX Runtime latency of online TSM and of the plain 2D ResNet-8 (batch 1)."""
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
        feed = (frame.numpy(), *(c.numpy() for c in caches))
        cells = harness.interleaved(
            {
                "resnet8_frame": lambda: plain_runner.run(frame.numpy()),
                "online_tsm_frame": lambda: online_runner.run_all(feed),
            },
            repeats=args.repeats,
            warmup=min(20, args.repeats),
            clock=args.clock,
            reference="resnet8_frame",
        )
    ratio = cells["online_tsm_frame"]["median_ms"] / cells["resnet8_frame"]["median_ms"]
    per_frame = {
        "online_tsm": profile_model(online, (frame, *caches)),
        "resnet8": profile_model(plain, frame),
    }
    costs = {
        k: {"macs": p.macs, "peak_memory_bytes": p.peak_memory_bytes} for k, p in per_frame.items()
    }
    return {"cells": cells, "ratio": ratio, "per_frame": costs}


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
    """The accuracy table, the online and composition rows and every check."""
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
    if "latency" in summary:
        lat = summary["latency"]
        lines += [
            "",
            f"Per-frame ONNX Runtime latency ({harness.clock_text(report['config']['clock'])}, "
            f"batch 1, interleaved medians): online TSM "
            f"{lat['cells']['online_tsm_frame']['median_ms']:.3f} ms, ResNet-8 "
            f"{lat['cells']['resnet8_frame']['median_ms']:.3f} ms: ratio {lat['ratio']:.3f} "
            f"(target <= {TARGETS['online_latency_ratio']}).",
        ]
    lines += ["", "Checks:", ""]
    for task in summary["tasks"]:
        verdicts = ", ".join(f"{k} {harness.yes(v)}" for k, v in task["checks"].items())
        lines.append(f"- {task['task']}: {verdicts}")
    lines += ["", harness.machine_line(report), ""]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Every task and seed (stages resume under ``--out``), the summaries, latency if asked."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    store = harness.StageStore(Path(args.out) / f"{STEM}_stages")
    key = {k: getattr(args, k) for k in ("epochs", "finetune_epochs", "image_size", "smoke")}
    rows = []
    for spec in args.tasks:
        for seed in range(args.seed, args.seed + args.seeds):
            name = f"{spec}-seed{seed}"
            rows.append(
                store.json(
                    name,
                    {**key, "task": spec, "seed": seed},
                    lambda s=spec, n=seed: seed_row(s, n, args),
                )
            )
    summary: dict[str, Any] = {
        "targets": TARGETS,
        "tasks": [task_summary([r for r in rows if r["task"] == spec]) for spec in args.tasks],
    }
    if args.latency:
        task = harness.load_task(args.tasks[0], args.image_size, args.seed, smoke=True)
        summary["latency"] = latency(args, task)
        summary["latency"]["meets_target"] = (
            summary["latency"]["ratio"] <= TARGETS["online_latency_ratio"]
        )
    return harness.write_results(args, rows, summary, markdown)
