"""Microcontroller SRAM and flash of every zoo model the MCU runtime supports, int8.

Each image model of the zoo is quantized to int8 (PTQ, min-max, on a few synthetic images:
the plan depends on shapes, not values), exported to the int8 QDQ ONNX graph and read into
the integer IR of ``mobiledl.deploy.mcu``. The planner then gives the peak SRAM layer by
layer (the live-tensor peak, placed in one arena), with TinyEngine's in-place depthwise (Lin
et al. 2020), and the flash of weights, biases and multiplier tables (code not included). A
model with an op the IR does not support is listed with the op and layer.

Patch-based inference (MCUNetV2, Lin et al. 2021): the split and square grid with the
smallest peak within ``--max-mac-overhead`` extra MACs (``patch.search_patch``), and the
issue's fixed point for MobileNetV2-0.35 at 144 (4x4 patches over the stem and 4 blocks).

TFLM anchor (``mobiledl.deploy.mcu.tflite``, needs ``pip install '.[mcu]'``): the same int8
model written as ``.tflite`` and allocated by TensorFlow Lite Micro's interpreter, whose
recording allocator reports the arena it planned for the activations and its persistent
part; its outputs on a few images are compared with our integer reference run with TFLM's
rounding (gemmlowp's double rounding) and the multipliers TFLM derives from the file's float32
scales (``tflite_multipliers``), and with our own Q31 multipliers (how many outputs differ).
Planning arithmetic, no timing.

    python -m benchmarks mcu_memory            # 3x144x144, 1000 classes, + the issue's points
    python -m benchmarks mcu_memory --smoke    # mcunet and mobilenet_v2 at 1x32x32: seconds
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import harness
from mobiledl import apply
from mobiledl.compress.quantize import QuantConfig
from mobiledl.data.prepare import make_task
from mobiledl.deploy import get_engine
from mobiledl.deploy.mcu.budget import KB
from mobiledl.deploy.mcu.fixedpoint import DOUBLE
from mobiledl.deploy.mcu.graph import read_graph
from mobiledl.deploy.mcu.patch import patch_memory, search_patch
from mobiledl.deploy.mcu.planner import plan_memory
from mobiledl.deploy.mcu.reference import dequantize, quantize_input, run
from mobiledl.deploy.mcu.tflite import (
    tflite_multipliers,
    tflm_arena,
    tflm_run,
    to_tflite,
    with_int8_output,
)
from mobiledl.errors import UserError
from mobiledl.models import create_model, list_models

STEM = "mcu_memory"
CALIBRATION_IMAGES = 16
TFLM_IMAGES = 4
#: Reference points, kB of 1024 B: (model, width, side) -> (layer-by-layer, in-place). The
#: issue's two for MobileNetV2-0.35 at 144; the MCUNetV2 paper's 1372 kB for MobileNetV2-1.0
#: at 224 ("layer-based" there) counts the depthwise convs in place, as TinyEngine runs them.
REFERENCES = {
    ("mobilenet_v2", 0.35, 144): (303.8, 283.5),
    ("mobilenet_v2", 1.0, 224): (None, 1372.0),
}
#: The issue's patch-based point: 4x4 patches up to this layer, 44.9 kB at +21% MACs.
PATCH_REFERENCE = {("mobilenet_v2", 0.35, 144): ("features.4.body.project.conv", (4, 4), 44.9)}


def parse_args(argv: Sequence[str]) -> Any:
    parser = harness.benchmark_parser(STEM, __doc__, threads=False)
    parser.add_argument("--models", default=None, help="comma-separated subset of the zoo")
    parser.add_argument("--image-size", type=int, default=None, help="input side (pixels)")
    parser.add_argument("--channels", type=int, default=None, help="input channels")
    parser.add_argument("--classes", type=int, default=None, help="classifier outputs")
    parser.add_argument(
        "--max-mac-overhead", type=float, default=0.3, help="extra MACs patches may cost"
    )
    args = harness.parse(parser, argv)
    smoke = {"image_size": 32, "channels": 1, "classes": 10, "models": "mcunet,mobilenet_v2"}
    harness.resolve(args, smoke, {"image_size": 144, "channels": 3, "classes": 1000})
    zoo = [info.name for info in list_models(inputs="image")]
    args.models = harness.names(args.models) if args.models else zoo
    unknown = [name for name in args.models if name not in zoo]
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)}; available: {zoo}")
    return args


def configurations(args: Any) -> list[tuple[str, float, int]]:
    """(model, width, side): every model at width 1 (0.35 in smoke), then the references."""
    width = 0.35 if args.smoke else 1.0
    rows = [(name, width, args.image_size) for name in args.models]
    if not args.smoke:
        rows += [key for key in REFERENCES if key[0] in args.models and key not in rows]
    return rows


def measure(name: str, width: float, side: int, args: Any, workdir: Path) -> dict[str, Any]:
    """One row: the int8 model's plans, or the op the IR does not support."""
    row: dict[str, Any] = {"model": name, "width_mult": width, "input": [args.channels, side, side]}
    path = export_int8(name, width, side, args, workdir)
    try:
        graph = read_graph(path)
    except UserError as error:
        return {**row, "supported": False, "reason": str(error).split(": ", 1)[-1]}
    layer_by_layer = plan_memory(graph, in_place_depthwise=False)
    in_place = plan_memory(graph, in_place_depthwise=True)
    reference = REFERENCES.get((name, width, side), (None, None))
    patch = search_patch(graph, args.max_mac_overhead)
    return {
        **row,
        "supported": True,
        "ops": len(graph.ops),
        "layer_by_layer_bytes": layer_by_layer.arena_bytes,
        "in_place_bytes": in_place.arena_bytes,
        "in_place_lower_bound_bytes": in_place.lower_bound_bytes,
        "in_place_ops": len(in_place.in_place),
        "peak_layer": in_place.peak_step.layer,
        "placement": in_place.placement,
        "flash_bytes": graph.flash_bytes,
        **_patch_columns(patch, graph),
        **_patch_reference(graph, (name, width, side)),
        **_tflm(graph, args),
        "reference_layer_by_layer_kb": reference[0],
        "reference_in_place_kb": reference[1],
    }


def _tflm(graph: Any, args: Any) -> dict[str, Any]:
    """TFLM's arena for the same model and whether its outputs equal the reference's."""
    if importlib.util.find_spec("tflite_micro") is None:
        return {"tflm": None, "tflm_skipped": "tflite-micro not installed"}
    double = dataclasses.replace(graph, rounding=DOUBLE)
    shape = graph.tensors[graph.input].shape
    x = np.random.default_rng(args.seed).uniform(0.0, 1.0, (TFLM_IMAGES, *shape[1:]))
    codes = quantize_input(graph, x.astype(np.float32))
    logits = dequantize(graph.tensors[graph.output], run(double, codes).reshape(len(codes), -1))
    int8 = with_int8_output(double, float(np.abs(logits).max() / 100) or 1.0)
    try:
        model = to_tflite(int8)
    except UserError as error:
        return {"tflm": None, "tflm_skipped": str(error)}
    arena = tflm_arena(model, (1, *shape[2:], shape[1]))
    outputs = tflm_run(model, codes, arena.total).astype(np.int32)
    theirs = run(tflite_multipliers(int8), codes).reshape(len(codes), -1)
    ours = run(int8, codes).reshape(len(codes), -1).astype(np.int32)
    return {
        "tflm": {
            **vars(arena),
            "equal_outputs": bool(np.array_equal(outputs, theirs)),
            "own_multipliers_differ": float(np.mean(outputs != ours)),
            "own_multipliers_max_lsb": int(np.abs(outputs - ours).max()),
            "images": len(codes),
        }
    }


def _tflm_cell(row: dict[str, Any]) -> str:
    tflm = row.get("tflm")
    if tflm is None:
        return "not run"
    return f"{_kb(tflm['head'])} + {_kb(tflm['tail'])}"


def _tflm_equal(row: dict[str, Any]) -> str:
    tflm = row.get("tflm")
    if tflm is None:
        return ""
    equal = "yes" if tflm["equal_outputs"] else "NO"
    own = tflm["own_multipliers_differ"]
    return f"{equal} ({tflm['images']}); ours: {own:.1%} off, max {tflm['own_multipliers_max_lsb']}"


def _patch_columns(patch: Any, graph: Any) -> dict[str, Any]:
    if patch is None:
        return {"patch_based_bytes": None, "patch_split_layer": None, "patch_grid": None}
    return {
        "patch_based_bytes": patch.peak_bytes,
        "patch_split_layer": graph.ops[patch.split - 1].layer,
        "patch_grid": list(patch.grid),
        "patch_mac_overhead": patch.mac_overhead,
    }


def _patch_reference(graph: Any, key: tuple[str, float, int]) -> dict[str, Any]:
    """Our peak at the issue's patch configuration, beside its figure."""
    if key not in PATCH_REFERENCE:
        return {}
    layer, grid, figure = PATCH_REFERENCE[key]
    split = 1 + [op.layer for op in graph.ops].index(layer)
    result = patch_memory(graph, split, grid)
    return {
        "patch_reference_bytes": result.peak_bytes,
        "patch_reference_mac_overhead": result.mac_overhead,
        "patch_reference_kb": figure,
    }


def export_int8(name: str, width: float, side: int, args: Any, workdir: Path) -> Path:
    """PTQ on synthetic images, exported to the int8 QDQ ONNX graph."""
    rng = np.random.default_rng(args.seed)
    shape = (args.channels, side, side)
    x = rng.uniform(0.0, 1.0, (3 * 10, *shape)).astype(np.float32)
    task = make_task("synthetic", x, np.arange(len(x)) % 10, args.seed)
    torch.manual_seed(args.seed)
    model = create_model(name, args.classes, args.channels, side, width_mult=width)
    quantized = apply(model, QuantConfig(calibration_samples=CALIBRATION_IMAGES), task)
    path = workdir / f"{name}_{width}_{side}.onnx"
    return get_engine().export(quantized, torch.zeros(1, *shape), path)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    supported = [row for row in rows if row["supported"]]
    saved = [1 - row["in_place_bytes"] / row["layer_by_layer_bytes"] for row in supported]
    reductions = [
        row["in_place_bytes"] / row["patch_based_bytes"]
        for row in supported
        if row["patch_based_bytes"]
    ]
    return {
        "supported": len(supported),
        "unsupported": len(rows) - len(supported),
        "in_place_saving_max": max(saved, default=0.0),
        "patch_reduction_max": max(reductions, default=None),
    }


def _kb(size: int | None) -> str:
    return "" if size is None else f"{size / KB:.1f}"


def markdown(report: dict[str, Any]) -> str:
    config, rows = report["config"], report["rows"]
    supported = [row for row in rows if row["supported"]]
    table = harness.markdown_table(
        ["model", "width", "input", "ops", "layer-by-layer kB", "in-place kB", "peak layer",
         "flash kB", "patch-based kB", "patches", "TFLM kB (planned + persistent)",
         "TFLM = ref", "reference kB (lbl / in-place)"],
        [
            (row["model"], row["width_mult"], "x".join(map(str, row["input"])), row["ops"],
             _kb(row["layer_by_layer_bytes"]), _kb(row["in_place_bytes"]), row["peak_layer"],
             _kb(row["flash_bytes"]), _kb(row["patch_based_bytes"]), _patches(row),
             _tflm_cell(row), _tflm_equal(row), _reference(row))
            for row in supported
        ],
        align="llrrrrlrrllll",
    )  # fmt: skip
    lines = [
        "# MCU memory: peak SRAM and flash of int8 zoo models",
        "",
        f"{harness.machine_line(report)} int8 PTQ (min-max, {CALIBRATION_IMAGES} synthetic "
        f"images), {config['classes']} classes; kB = 1024 bytes. Layer-by-layer: the arena of "
        "the best placement over a searched execution order; in-place: with TinyEngine's "
        "in-place depthwise (one-channel temporary included). Flash: int8 weights, int32 "
        "biases, multiplier and shift tables; code not included. Planning arithmetic, no "
        "timing.",
        "",
        *table,
        "",
        f"- patch-based: the best split and square grid within +{config['max_mac_overhead']:.0%} "
        "MACs (both stages' peaks; the input image counted tile by tile, as in MCUNetV2).",
        *(
            f"- {row['model']} {row['width_mult']} at {row['input'][1]}: 4x4 patches over the "
            f"stem and 4 blocks, {_kb(row['patch_reference_bytes'])} kB at "
            f"+{row['patch_reference_mac_overhead']:.0%} MACs (the issue: "
            f"{row['patch_reference_kb']} kB, +21%)"
            for row in supported
            if "patch_reference_bytes" in row
        ),  # fmt: skip
        "- TFLM: the same int8 model as .tflite in TensorFlow Lite Micro; planned = the "
        "activations (and scratch) its greedy planner places, persistent = its tensor structs, "
        "per-channel multipliers and node data. PyTorch's symmetric padding of stride-2 convs "
        "is not TFLite's SAME, so those convs get a PAD op whose output TFLM must also place "
        "(as in models converted from PyTorch). TFLM = ref: its int8 outputs equal our integer "
        "reference's with TFLM's double rounding and the multipliers TFLM derives from the "
        "float32 scales a .tflite stores, on that many synthetic images; ours: the share of "
        "outputs (and the largest gap in codes) with our own Q31 multipliers instead, which "
        "the format cannot carry exactly.",
        "- reference: the issue's figures for MobileNetV2-0.35 at 144 (layer by layer / in "
        "place) and the MCUNetV2 paper's 1372 kB for MobileNetV2-1.0 at 224, which it calls "
        "layer-based and which counts the depthwise convs in place (TinyEngine).",
        *(
            f"- {row['model']} (width {row['width_mult']}): not supported, {row['reason']}"
            for row in rows
            if not row["supported"]
        ),  # fmt: skip
        "",
    ]
    return "\n".join(lines)


def _patches(row: dict[str, Any]) -> str:
    if row["patch_grid"] is None:
        return "none fits the ops"
    grid = "x".join(map(str, row["patch_grid"]))
    return f"{grid} to {row['patch_split_layer']}, +{row['patch_mac_overhead']:.0%} MACs"


def _reference(row: dict[str, Any]) -> str:
    lbl, in_place = row["reference_layer_by_layer_kb"], row["reference_in_place_kb"]
    if lbl is None and in_place is None:
        return ""
    return f"{lbl if lbl is not None else '-'} / {in_place if in_place is not None else '-'}"


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Plan every configuration and write JSON + markdown."""
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-mcu-") as tmp:
        progress = tqdm(configurations(args), file=sys.stderr, unit="model", dynamic_ncols=True)
        for name, width, side in progress:
            progress.set_description(f"{name} x{width} @{side}")
            rows.append(measure(name, width, side, args, Path(tmp)))
    return harness.write_results(args, rows, summary(rows), markdown)
