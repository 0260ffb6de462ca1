"""Engines side by side: fp32 and int8 of MobileNetV2 and ResNet-20 in every installed engine.

**Speed** (random weights: latency does not depend on the values). mobilenet_v2 takes 3x224x224
inputs with 1000 classes, resnet20 3x32x32 with 10. Each installed engine runs the fp32 export
and mobiledl's own int8 (W8A8 PTQ: per-channel weights, u8 activations, calibrated on 16
random inputs), lowered by that engine; each engine's own quantizer is a peer, given the same
calibration inputs (ONNX Runtime's ``quantize_static``; NNCF's ``nncf.quantize`` for
OpenVINO, when nncf is installed). All candidates of a model are timed in one interleaved run
per batch size on 1 thread, on the CPU time of the calling thread (with one thread both
engines compute on it), so ratios between engines are measured on the same machine state.

**Agreement and accuracy** (trained on digits, the real 8x8 scans): each model is trained,
quantized by mobiledl's PTQ (128 calibration samples from the training split) and exported to
each engine; the table gives each engine's fp32 parity (max |difference| over the largest
logit), the top-1 agreement of its int8 with mobiledl's PyTorch simulation over the whole test
split, and the test accuracy of ours and of the engine's own quantizer (same 128 samples).

    python -m benchmarks engines           # the published table (about 10 minutes)
    python -m benchmarks engines --smoke   # resnet20, batch 1 and 2; lenet5 on digits, 1 epoch
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import harness
from mobiledl import apply
from mobiledl.compress.quantize import QuantConfig
from mobiledl.compress.quantize.config import int8_products_saturate
from mobiledl.data import Task
from mobiledl.deploy import Engine, get_engine
from mobiledl.deploy.compare import installed_engines
from mobiledl.errors import UserError
from mobiledl.measure import artifact_outputs
from mobiledl.models import create_model

STEM = "engines"
#: Input size and classes of each speed model (the sizes the issue measures).
SPEED_SHAPES = {"mobilenet_v2": (224, 1000), "resnet20": (32, 10), "lenet5": (16, 10)}
SPEED_CALIBRATION, ACCURACY_CALIBRATION = 16, 128
#: Timed calls at batch 1; larger batches get a fifth of them.
REPEATS, LARGE_BATCH_SHARE = 60, 5
#: Models an engine could not export in this run, and why (reported, not hidden).
SKIPPED: dict[str, str] = {}
#: Best int8 over the fastest fp32 engine, at batch 1 and at batch 32 (issue 15).
TARGETS = {1: 1.6, 32: 2.0}


@dataclass
class Candidate:
    """One artifact to time: which engine runs it, its precision and who quantized it."""

    engine: Engine
    precision: str
    quantizer: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.engine.name} {self.precision}" + (
            f" ({self.quantizer})" if self.quantizer != "-" else ""
        )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__, threads=1, threads_help="engine threads",
                                      clock=True)  # fmt: skip
    parser.set_defaults(clock="thread")
    parser.add_argument(
        "--models", default=None, help="speed models (default mobilenet_v2,resnet20)"
    )
    parser.add_argument("--batch-sizes", default=None, help="default 1,32 (smoke 1,2)")
    parser.add_argument("--accuracy-models", default=None, help="default resnet20,mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=None, help="digits training epochs")
    parser.add_argument("--engines", default=None, help="default: every installed engine")
    args = harness.parse(parser, argv)
    smoke = {"models": "resnet20", "batch_sizes": "1,2", "repeats": 3,
             "accuracy_models": "lenet5", "epochs": 1}  # fmt: skip
    full = {"models": "mobilenet_v2,resnet20", "batch_sizes": "1,32", "repeats": REPEATS,
            "accuracy_models": "resnet20,mobilenet_v2", "epochs": 15}  # fmt: skip
    harness.resolve(args, smoke, full)
    args.models = harness.names(args.models)
    args.accuracy_models = harness.names(args.accuracy_models)
    args.batch_sizes = harness.positive_ints(args.batch_sizes, "--batch-sizes")
    args.engines = harness.names(args.engines) if args.engines else installed_engines()
    return args


def peer_int8(engine: Engine, fp32: Path, data: torch.Tensor, workdir: Path) -> Candidate | None:
    """The engine's own quantizer's int8 of the fp32 artifact, where the benchmark has one."""
    if engine.name == "onnxruntime":
        path = harness.ort_quantize_static(fp32, data, workdir / f"{fp32.stem}_peer.onnx", 1,
                                           reduce_range=int8_products_saturate())  # fmt: skip
        return Candidate(engine, "int8", "quantize_static", path)
    if engine.name == "openvino" and importlib.util.find_spec("nncf"):
        path = harness.nncf_quantize(fp32, data, workdir / f"{fp32.stem}_peer.xml", 1)
        return Candidate(engine, "int8", "NNCF", path)
    return None


def candidates(
    model: nn.Module,
    quantized: nn.Module,
    data: torch.Tensor,
    engines: Sequence[Engine],
    workdir: Path,
    stem: str,
) -> list[Candidate]:
    """fp32, our int8 and the peer int8 of one model in every engine that can export both
    (an engine that cannot is left out, and ``SKIPPED`` says why)."""
    found = []
    for engine in engines:
        try:
            fp32 = engine.export(
                model, data[:1], workdir / f"{stem}_fp32_{engine.name}{engine.suffix}"
            )
            ours = engine.export(
                quantized, data[:1], workdir / f"{stem}_int8_{engine.name}{engine.suffix}"
            )
        except UserError as error:
            SKIPPED[f"{stem} in {engine.name}"] = str(error)
            print(f"left out {engine.name} for {stem}: {error}", file=sys.stderr)
            continue
        found += [Candidate(engine, "fp32", "-", fp32), Candidate(engine, "int8", "mobiledl", ours)]
        peer = peer_int8(engine, fp32, data, workdir)
        if peer is not None:
            found.append(peer)
    return found


def speed_rows(name: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """One row per (batch size, candidate) of a randomly initialized model."""
    size, classes = SPEED_SHAPES[name]
    torch.manual_seed(args.seed)
    model = create_model(name, classes, 3, size).eval()
    data = torch.randn(SPEED_CALIBRATION, 3, size, size)
    quantized = apply(model, QuantConfig(calibration_samples=SPEED_CALIBRATION),
                      harness.calibration_task(data, classes))  # fmt: skip
    found = candidates(model, quantized, data, [get_engine(e) for e in args.engines], workdir, name)
    runners = {c.label: c.engine.load(c.path, args.threads) for c in found}
    rows = []
    for batch in args.batch_sizes:
        x = np.random.default_rng(args.seed).standard_normal((batch, 3, size, size), np.float32)
        repeats = args.repeats if batch == 1 else max(3, args.repeats // LARGE_BATCH_SHARE)
        calls = {label: (lambda r=runner, x=x: r.run(x)) for label, runner in runners.items()}
        cells = harness.interleaved(calls, repeats=repeats, warmup=3, clock=args.clock)
        fastest_fp32 = min(cells[c.label]["median_ms"] for c in found if c.precision == "fp32")
        for c in found:
            cell = cells[c.label]
            rows.append({
                "part": "speed", "model": name, "image_size": size, "batch_size": batch,
                "engine": c.engine.name, "precision": c.precision, "quantizer": c.quantizer,
                "median_ms": cell["median_ms"], "p90_ms": cell["p90_ms"],
                "repeats": cell["repeats"], "bytes": c.engine.artifact_bytes(c.path),
                "vs_fastest_fp32": fastest_fp32 / cell["median_ms"],
            })  # fmt: skip
        best = max((r for r in rows[-len(found) :]), key=lambda r: r["vs_fastest_fp32"])
        line = f"{name} batch {batch}: best {best['engine']} {best['precision']} "
        print(f"{line}{best['vs_fastest_fp32']:.2f}x the fastest fp32", file=sys.stderr)
    return rows


def accuracy_rows(name: str, task: Task, args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Per engine: fp32 parity, our int8's agreement with our simulation, int8 accuracies."""
    model = harness.train_baseline(name, task, args.epochs, args.seed)
    quantized = apply(model, QuantConfig(calibration_samples=ACCURACY_CALIBRATION), task)
    calibration = task.x_train[:ACCURACY_CALIBRATION]
    with torch.no_grad():
        fp32_out, simulated = model(task.x_test).numpy(), quantized(task.x_test).numpy()
    labels = task.y_test.numpy()
    found = candidates(model, quantized, calibration, [get_engine(e) for e in args.engines],
                       workdir, f"{name}_digits")  # fmt: skip
    outputs = {c.label: artifact_outputs(c.engine, c.path, task)[0].numpy() for c in found}
    rows = []
    for engine in dict.fromkeys(c.engine.name for c in found):
        mine = {c.quantizer: outputs[c.label] for c in found if c.engine.name == engine}
        peer = next((q for q in mine if q not in ("-", "mobiledl")), None)
        rows.append({
            "part": "accuracy", "model": name, "engine": engine, "epochs": args.epochs,
            "fp32_accuracy": float((fp32_out.argmax(1) == labels).mean()),
            "fp32_parity": float(np.abs(mine["-"] - fp32_out).max() / np.abs(fp32_out).max()),
            "simulated_int8_accuracy": float((simulated.argmax(1) == labels).mean()),
            "int8_agreement": float((mine["mobiledl"].argmax(1) == simulated.argmax(1)).mean()),
            "int8_accuracy": float((mine["mobiledl"].argmax(1) == labels).mean()),
            "peer": peer,
            "peer_int8_accuracy": None if peer is None
            else float((mine[peer].argmax(1) == labels).mean()),
            "test_samples": len(labels),
        })  # fmt: skip
        row = rows[-1]
        print(f"{name} {engine}: int8 agreement {row['int8_agreement']:.2%}, accuracy "
              f"{row['int8_accuracy']:.2%} (peer {row['peer_int8_accuracy']})", file=sys.stderr,
              flush=True)  # fmt: skip
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (model, batch): the fastest fp32, the best int8 and ours against the targets."""
    result: dict[str, Any] = {}
    speed = [r for r in rows if r["part"] == "speed"]
    for model in dict.fromkeys(r["model"] for r in speed):
        for batch in dict.fromkeys(r["batch_size"] for r in speed if r["model"] == model):
            cell = [r for r in speed if r["model"] == model and r["batch_size"] == batch]
            fp32 = min((r for r in cell if r["precision"] == "fp32"), key=lambda r: r["median_ms"])
            ours = min((r for r in cell if r["quantizer"] == "mobiledl"),
                       key=lambda r: r["median_ms"])  # fmt: skip
            result[f"{model}_b{batch}"] = {
                "fastest_fp32": fp32["engine"], "fastest_fp32_ms": fp32["median_ms"],
                "best_ours": ours["engine"], "best_ours_ms": ours["median_ms"],
                "ours_vs_fastest_fp32": fp32["median_ms"] / ours["median_ms"],
                "target": TARGETS.get(batch),
                "ours_vs_peer": {
                    r["engine"]: r["median_ms"] / ours_in(cell, r["engine"])["median_ms"]
                    for r in cell if r["quantizer"] not in ("-", "mobiledl")
                },
            }  # fmt: skip
    return result


def ours_in(cell: list[dict[str, Any]], engine: str) -> dict[str, Any]:
    return next(r for r in cell if r["engine"] == engine and r["quantizer"] == "mobiledl")


def markdown(report: dict[str, Any]) -> str:
    config, rows, summ = report["config"], report["rows"], report["summary"]
    speed = harness.markdown_table(
        ["model", "input", "batch", "engine", "precision", "quantizer", "median ms", "p90 ms",
         "vs fastest fp32", "bytes"],
        [(r["model"], f"3x{r['image_size']}x{r['image_size']}", r["batch_size"], r["engine"],
          r["precision"], r["quantizer"], f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
          f"{r['vs_fastest_fp32']:.2f}x", f"{r['bytes']:,}")
         for r in rows if r["part"] == "speed"],
        align="llrllllrrr",
    )  # fmt: skip
    best = harness.markdown_table(
        ["model, batch", "fastest fp32", "our best int8", "ours / fastest fp32", "target",
         "ours vs engine's own int8 (speed)"],
        [(key.replace("_b", ", batch "), f"{s['fastest_fp32']} {s['fastest_fp32_ms']:.3f} ms",
          f"{s['best_ours']} {s['best_ours_ms']:.3f} ms", f"{s['ours_vs_fastest_fp32']:.2f}x",
          f">= {s['target']}x" if s["target"] else "-",
          ", ".join(f"{e} {v:.2f}x" for e, v in s["ours_vs_peer"].items()) or "-")
         for key, s in summ.items() if key != "skipped" and isinstance(s, dict)],
        align="lllrll",
    )  # fmt: skip
    accuracy = harness.markdown_table(
        ["model", "engine", "fp32 acc %", "fp32 parity", "our int8 vs simulation (top-1 %)",
         "our int8 acc %", "engine's own int8 acc %", "simulated int8 acc %"],
        [(r["model"], r["engine"], harness.pct(r["fp32_accuracy"]), f"{r['fp32_parity']:.1e}",
          harness.pct(r["int8_agreement"]), harness.pct(r["int8_accuracy"]),
          "-" if r["peer"] is None else f"{harness.pct(r['peer_int8_accuracy'])} ({r['peer']})",
          harness.pct(r["simulated_int8_accuracy"]))
         for r in rows if r["part"] == "accuracy"],
        align="llrrrrrr",
    )  # fmt: skip
    accuracy_rows = [r for r in rows if r["part"] == "accuracy"]
    samples = accuracy_rows[0]["test_samples"] if accuracy_rows else 0
    return "\n".join([
        "# Engines: fp32 and int8 in every installed engine",
        "",
        harness.machine_line(report),
        "",
        f"Engines: {', '.join(config['engines'])}; {config['threads']} thread(s); medians of "
        f"interleaved timed calls ({harness.clock_text(config['clock'])}); random weights. "
        "`mobiledl` int8 is our W8A8 PTQ lowered by each engine (the engine runs our scales); "
        "`quantize_static` and `NNCF` are the engines' own quantizers on the same calibration "
        f"inputs. Weights are 7-bit where int8 products saturate (x86 without VNNI: "
        f"{report['machine']['int8_products_saturate']}). 1-minute load average "
        f"{report['machine']['load_average_1min_start']} before, "
        f"{report['machine']['load_average_1min']} after.",
        "",
        *best,
        "",
        *speed,
        "",
        f"## Agreement and accuracy (digits, {config['epochs']} epochs, {samples} test samples)",
        "",
        *accuracy,
        "",
        *(f"Left out: {what}: {why}" for what, why in summ.get("skipped", {}).items()),
    ]) + "\n"  # fmt: skip


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-engines-") as tmp:
        for name in args.models:
            rows += speed_rows(name, args, Path(tmp))
        task = harness.load_task("digits", seed=args.seed, smoke=args.smoke)
        for name in args.accuracy_models:
            rows += accuracy_rows(name, task, args, Path(tmp))
    machine = {"int8_products_saturate": int8_products_saturate()}
    packages = ("onnxruntime", "openvino", "nncf")
    results = {**summary(rows), "skipped": SKIPPED}
    return harness.write_results(args, rows, results, markdown, machine=machine, packages=packages)
