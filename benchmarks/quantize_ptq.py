"""Post-training quantization of the zoo: mobiledl vs ONNX Runtime and torchao PT2E.

For each task (digits, mnist1d) and zoo model the benchmark trains an FP32 model (cached, so
re-runs skip training), then quantizes it with the same calibration data three ways:

- mobiledl ``apply(model, QuantConfig(...))`` (W8A8: per-channel symmetric weights,
  asymmetric u8 activations, activation observer chosen on the validation split,
  ``--observer auto``), run both as our fake-quant simulation and as the exported int8 QDQ
  graph in ONNX Runtime (accuracy, top-1 agreement, integer kernels used);
- ONNX Runtime's ``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel, u8
  activations / s8 weights, min-max, same ``reduce_range``), run in ONNX Runtime;
- torchao's PT2E flow with ``XNNPACKQuantizer`` (per-channel symmetric), run in PyTorch.

At 4-bit weights (8-bit activations) it compares mobiledl with AdaRound against
``quantize_static`` with int4 weights and PT2E with a [-7, 7] weight range.

Each row also times the two W8A8 quantizers on the same model and calibration data, in one
process, back to back: ours is ``apply`` (BN folding, one calibration pass, every ``auto``
observer scored on validation); ONNX Runtime's is the fp32 export plus ``quant_pre_process``
plus ``quantize_static``. ``ptq_time_ratio`` is ours over ORT's wall time (the median of
``--time-repeats`` alternating runs).

    python -m benchmarks quantize_ptq          # full run, writes benchmarks/results/
    python -m benchmarks quantize_ptq --smoke  # one tiny model, digits only
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from benchmarks import harness
from mobiledl import apply, report_of
from mobiledl.compress.quantize import QuantConfig
from mobiledl.compress.quantize.config import int8_products_saturate
from mobiledl.compress.quantize.ptq import calibration_data
from mobiledl.data import build_task
from mobiledl.data.builtin import cache_dir
from mobiledl.data.task import Task
from mobiledl.deploy import get_engine
from mobiledl.deploy.qdq import integer_ops
from mobiledl.measure import artifact_outputs
from mobiledl.models import create_model, list_models, load_model, save_model
from mobiledl.train import TrainConfig, evaluate, train

STEM = "quantize_ptq"
TASKS = ("digits", "mnist1d")
W4_MODELS = ("lenet5", "resnet8", "resnet20", "mcunet")
EVAL_BATCH = 256


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__)
    harness.add_task_arguments(parser, ",".join(TASKS))
    parser.add_argument("--models", default=None, help="comma-separated zoo subset")
    parser.add_argument("--w4-models", default=None, help="4-bit comparison")
    parser.add_argument("--epochs", type=int, default=None, help="FP32 training epochs (15)")
    parser.add_argument("--calibration-samples", type=int, default=None, help="default 512")
    parser.add_argument("--adaround-iters", type=int, default=None, help="default 500")
    parser.add_argument(
        "--observer", default="auto", help="our activation observer (default auto: by validation)"
    )
    parser.add_argument("--time-repeats", type=int, default=None, help="timed runs each (3)")
    parser.add_argument(
        "--compare-observers",
        default="minmax,percentile,mse",
        help="observers also run on their own, each a W8A8 column (default minmax,percentile,mse)",
    )
    args = harness.parse(parser, argv)
    zoo = ",".join(m.name for m in list_models(inputs="image"))
    harness.resolve_tasks(args, "digits", ",".join(TASKS))
    smoke = {"models": "resnet8", "w4_models": "resnet8", "epochs": 2}
    full = {"models": zoo, "w4_models": ",".join(W4_MODELS)}
    smoke.update(calibration_samples=64, adaround_iters=10, time_repeats=1)
    full.update(epochs=15, calibration_samples=512, adaround_iters=500, time_repeats=3)
    harness.resolve(args, smoke, full)
    return args


# ---------------------------------------------------------------- FP32 models


def trained_model(task: Task, name: str, args: argparse.Namespace, cache: Path) -> nn.Module:
    """The FP32 model, trained with SGD for ``args.epochs`` (cached by settings)."""
    path = cache / f"{task.name}_{harness.task_fingerprint(task)}_{name}_sgd_e{args.epochs}_s0.pt"
    if path.is_file():
        return load_model(path).model
    model = create_model(name, task.num_classes, task.in_channels, task.image_size)
    config = TrainConfig(epochs=args.epochs, optimizer="sgd", progress=False, seed=0)
    train(model, task, config)
    save_model(path, model)
    return model.eval()


def accuracy_of_onnx(path: Path, task: Task) -> float:
    engine = get_engine("onnxruntime")
    return task.metric(*artifact_outputs(engine, path, task, batch_size=EVAL_BATCH))


# ---------------------------------------------------------------- the three quantizers


def ours(model: nn.Module, task: Task, config: QuantConfig, workdir: Path) -> dict[str, Any]:
    """mobiledl W8A8 PTQ: simulated accuracy, int8 ONNX accuracy, agreement, kernels."""
    quantized = apply(model, config, task)
    path = get_engine().export(quantized, task.example_input(1), workdir / "ours.onnx")
    x, _ = task.split("test")
    return {
        "ours_w8a8": evaluate(quantized, task),
        "ours_w8a8_ort": accuracy_of_onnx(path, task),
        "agreement": get_engine().top1_agreement(quantized, path, x),
        "integer_ops": dict(integer_ops(path)),
        "ours_int8_bytes": path.stat().st_size,
        "ours_observer": report_of(quantized).values["observer"],
    }


def observer_accuracies(
    model: nn.Module, task: Task, config: QuantConfig, observers: Sequence[str]
) -> dict[str, float]:
    """Our W8A8 test accuracy with each named activation observer on its own."""
    return {
        name: evaluate(apply(model, dataclasses.replace(config, observer=name), task), task)
        for name in observers
    }


def ours_w4(model: nn.Module, task: Task, config: QuantConfig, iters: int) -> float:
    """mobiledl W4A8: per-channel min-max weight grids, then AdaRound."""
    w4 = dataclasses.replace(config, weight_bits=4, adaround=True, adaround_iters=iters)
    return evaluate(apply(model, w4, task), task)


def ort_static(
    model: nn.Module,
    task: Task,
    data: torch.Tensor,
    workdir: Path,
    weight_bits: int,
    evaluate_it: bool = True,
) -> float:
    """ONNX Runtime ``quantize_static`` (QDQ, per-channel, u8/s8, min-max) accuracy (NaN
    with ``evaluate_it=False``: quantize only, for timing)."""
    float_path = get_engine("onnxruntime").export(model, data[:1], workdir / "fp32.onnx")
    out = harness.ort_quantize_static(
        float_path,
        data,
        workdir / f"ort_w{weight_bits}.onnx",
        64,
        weight_bits,
        reduce_range=weight_bits == 8 and int8_products_saturate(),
    )
    return accuracy_of_onnx(out, task) if evaluate_it else float("nan")


def pt2e(model: nn.Module, task: Task, data: torch.Tensor, weight_bits: int) -> float:
    """torchao PT2E with ``XNNPACKQuantizer`` (per-channel symmetric), run in PyTorch."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.testing.pt2e._xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    limit = 2 ** (weight_bits - 1) - 1
    config = get_symmetric_quantization_config(
        is_per_channel=True, weight_qmin=-limit, weight_qmax=limit
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    with harness.quiet():
        exported = torch.export.export(model.eval(), (data[:2],), dynamic_shapes=({0: batch},))
        prepared = prepare_pt2e(exported.module(), XNNPACKQuantizer().set_global(config))
        with torch.no_grad():
            for i in range(0, len(data), 64):
                prepared(data[i : i + 64])
        converted = convert_pt2e(prepared)
    x, y = task.split("test")
    with torch.no_grad():  # an exported program cannot switch to eval(); it was traced so
        logits = torch.cat([converted(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    return task.metric(logits, y)


def ptq_wall_times(
    model: nn.Module, task: Task, config: QuantConfig, data: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Median wall seconds of our W8A8 ``apply`` and of ORT's export + ``quantize_static``,
    run alternately ``repeats`` times each on the same model and calibration data."""
    ours_s, ort_s = [], []
    with tempfile.TemporaryDirectory(prefix="mobiledl-qtime-") as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            apply(model, config, task)
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            ort_static(model, task, data, Path(tmp), 8, evaluate_it=False)
            ort_s.append(time.perf_counter() - start)
    ours_t, ort_t = float(np.median(ours_s)), float(np.median(ort_s))
    return {"ours_ptq_seconds": ours_t, "ort_ptq_seconds": ort_t, "ptq_time_ratio": ours_t / ort_t}


def attempt(fn: Callable[[], float], errors: dict[str, str], key: str) -> float | None:
    """``fn()``, or ``None`` with the error's first line recorded under ``key``."""
    try:
        return fn()
    except Exception as error:  # a peer toolkit failing on a model is a result, not a crash
        errors[key] = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        return None


# ---------------------------------------------------------------- one row


def measure(task: Task, name: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    start = time.perf_counter()
    model = trained_model(task, name, args, cache)
    data = calibration_data(task, args.calibration_samples)
    config = QuantConfig(observer=args.observer, calibration_samples=args.calibration_samples)
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mobiledl-qbench-") as tmp:
        workdir = Path(tmp)
        row: dict[str, Any] = {"task": task.name, "model": name, "fp32": evaluate(model, task)}
        row.update(ours(model, task, config, workdir))
        observers = harness.names(args.compare_observers)
        row["observer_w8a8"] = observer_accuracies(model, task, config, observers)
        row["ort_w8a8"] = attempt(lambda: ort_static(model, task, data, workdir, 8), errors, "ort")
        row["pt2e_w8a8"] = attempt(lambda: pt2e(model, task, data, 8), errors, "pt2e")
        if name in harness.names(args.w4_models):
            row["ours_w4"] = ours_w4(model, task, config, args.adaround_iters)
            row["ort_w4"] = attempt(
                lambda: ort_static(model, task, data, workdir, 4), errors, "ort_w4"
            )
            row["pt2e_w4"] = attempt(lambda: pt2e(model, task, data, 4), errors, "pt2e_w4")
    if "ort" not in errors:
        row.update(ptq_wall_times(model, task, config, data, args.time_repeats))
    row["errors"] = errors
    row["seconds"] = time.perf_counter() - start
    return row


# ---------------------------------------------------------------- report


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers: our W8A8 against FP32, and how often ours matches or beats a peer."""
    deltas = [100 * (r["ours_w8a8"] - r["fp32"]) for r in rows]
    peers = [(r["ours_w8a8"], r[k]) for r in rows for k in ("ort_w8a8", "pt2e_w8a8") if r[k]]
    w4 = [(r["ours_w4"], r[k]) for r in rows if "ours_w4" in r for k in ("ort_w4", "pt2e_w4")]
    w4 = [(a, b) for a, b in w4 if b is not None]
    return {
        "w8a8_largest_drop_points": max(0.0, -min(deltas)),
        "w8a8_mean_change_points": float(np.mean(deltas)),
        "lowest_agreement": min(r["agreement"] for r in rows),
        "w8a8_at_least_peer": [sum(a >= b for a, b in peers), len(peers)],
        "w4_at_least_peer": [sum(a >= b for a, b in w4), len(w4)],
        "ptq_time_ratio_max": max(
            (r["ptq_time_ratio"] for r in rows if "ptq_time_ratio" in r), default=None
        ),
    }


def _observer_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The observers every row ran on its own (results before this column have none)."""
    names = [set(r.get("observer_w8a8", {})) for r in rows]
    return sorted(set.intersection(*names)) if names else []


def _cells(r: dict[str, Any]) -> list[object]:
    values = [r.get(k) for k in ("fp32", "ours_w8a8", "ours_w8a8_ort", "agreement", "ort_w8a8")]
    values += [r.get(k) for k in ("pt2e_w8a8", "ours_w4", "ort_w4", "pt2e_w4")]
    ops = sum(r["integer_ops"].values())
    return [r["task"], r["model"], *map(harness.pct, values), ops]


def _time_cell(r: dict[str, Any]) -> str:
    if "ptq_time_ratio" not in r:
        return "—"
    return f"{r['ours_ptq_seconds']:.1f} / {r['ort_ptq_seconds']:.1f} s"


def markdown(report: dict[str, Any]) -> str:
    rows, info, machine, s = report["rows"], report["config"], report["machine"], report["summary"]
    (w8_wins, w8_total), (w4_wins, w4_total) = s["w8a8_at_least_peer"], s["w4_at_least_peer"]
    lines = [
        "# Post-training quantization: mobiledl vs ONNX Runtime and torchao PT2E",
        "",
        f"FP32 models trained {info['epochs']} epochs (SGD, lr 0.05, cosine); "
        f"{info['calibration_samples']} "
        "training samples calibrate every method. Accuracies are top-1 on the test split, "
        "in %. W8A8 = 8-bit weights (per channel) and activations; `reduce_range` = "
        f"{machine['reduce_range']} (7-bit weights on x86 without VNNI, for every method that "
        "offers it). Our activation observer: "
        f"`{info['observer']}` (`auto`: one calibration pass, then min-max, percentile and "
        "MSE ranges each scored, the "
        "most accurate on the validation split kept; the chosen one is in the JSON). "
        "Ours is measured as our fake-quant simulation and as the exported int8 "
        "graph in ONNX Runtime; agreement is top-1 agreement of the two. W4 = 4-bit weights, "
        f"8-bit activations: ours with AdaRound ({info['adaround_iters']} iterations per "
        "layer); ORT `quantize_static` with int4 weights (ORT runs those convolutions in "
        "float); PT2E with a [-7, 7] weight range. torch "
        f"{machine['torch']}, onnxruntime {machine['onnxruntime']}, torchao {machine['torchao']}; "
        f"{report['created']}.",
        "",
        f"- ours W8A8 vs FP32: largest drop {s['w8a8_largest_drop_points']:.2f} points, mean "
        f"change {s['w8a8_mean_change_points']:+.2f}; lowest simulation/ORT agreement "
        f"{100 * s['lowest_agreement']:.2f}%",
        f"- ours W8A8 >= peer in {w8_wins} of {w8_total} comparisons; "
        f"ours W4 >= peer in {w4_wins} of {w4_total}",
    ]  # fmt: skip
    headers = ["task", "model", "FP32", "ours W8A8", "ours int8 ORT", "agree", "ORT static",
               "PT2E", "ours W4", "ORT W4", "PT2E W4", "int ops"]  # fmt: skip
    cells = [_cells(r) for r in rows]
    observers = _observer_columns(rows)
    if observers:
        headers += [f"ours W8A8 {name}" for name in observers]
        cells = [
            [*c, *(harness.pct(r["observer_w8a8"][name]) for name in observers)]
            for c, r in zip(cells, rows, strict=True)
        ]
    if s.get("ptq_time_ratio_max") is not None:  # results before the timing have none
        lines.append(
            "- PTQ wall time (ours `apply` / ORT export + `quantize_static`, same model and "
            f"calibration data, one process): at most {s['ptq_time_ratio_max']:.2f}x ORT's"
        )
        headers.append("PTQ time ours / ORT")
        cells = [[*c, _time_cell(r)] for c, r in zip(cells, rows, strict=True)]
    lines += ["", *harness.markdown_table(headers, cells, align="ll" + "r" * (len(headers) - 2))]
    failures = [
        f"- {r['task']}/{r['model']} {k}: {v}" for r in rows for k, v in r["errors"].items()
    ]
    if failures:
        lines += ["", "Peer failures:", *failures]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ort.set_default_logger_severity(3)
    cache = args.out / "cache" if args.smoke else cache_dir() / "bench" / STEM
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.task_specs:
        task = build_task(spec, split=args.split)
        for name in harness.names(args.models):
            rows.append(measure(task, name, args, cache))
            r = rows[-1]
            print(
                f"{task.name:8s} {name:20s} fp32 {harness.pct(r['fp32'])} "
                f"ours {harness.pct(r['ours_w8a8'])} ort {harness.pct(r['ort_w8a8'])} "
                f"pt2e {harness.pct(r['pt2e_w8a8'])} agree {harness.pct(r['agreement'])} "
                f"w4 {harness.pct(r.get('ours_w4'))} ({r['seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    machine = {"reduce_range": int8_products_saturate()}
    return harness.write_results(
        args, rows, summary(rows), markdown, packages=("torchao",), machine=machine
    )
