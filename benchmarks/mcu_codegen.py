"""The generated C of the MCU runtime, built for the host and a Cortex-M7, against the integer
reference and ONNX Runtime int8.

Each model is trained briefly on the digits task (scikit-learn's real 8x8 digits, resized to
the input side, one channel), quantized to int8 (PTQ), exported to the int8 QDQ ONNX graph,
planned (searched order, TinyEngine in-place depthwise) and written as C by
``mobiledl.deploy.mcu.codegen`` (TinyEngine-style code generation, Lin et al. 2020). The
project is compiled with ``-Wall -Wextra -Werror`` by gcc for the host and by
``arm-none-eabi-gcc -mcpu=cortex-m7`` for the MPS2-AN500 board, which ``qemu-system-arm``
runs with semihosting I/O.

Per model:
- whether both builds' outputs equal the integer reference's, bit for bit, on ``--inputs``
  test images;
- top-1 of the C program (host) against ONNX Runtime's int8 session on the whole test split;
- the static arena in the code beside the planner's peak;
- the Cortex-M image's sections from the linker map: .text (code, weights, tables), .data,
  .bss (the arena).
Then the same for patch-based inference (MCUNetV2, Lin et al. 2021) at the split and grid
with the smallest peak. QEMU timing is emulation time, not Cortex-M speed; it is reported
only to size a run.

    python -m benchmarks mcu_codegen            # mcunet, mobilenet_v2 0.35 and 1.0, at 144
    python -m benchmarks mcu_codegen --smoke    # mobilenet_v2 0.35 at 32, 8 inputs: seconds
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks import harness
from mobiledl import apply
from mobiledl.compress.quantize import QuantConfig
from mobiledl.deploy import get_engine
from mobiledl.deploy.mcu import plan_memory, quantize_input, read_graph, run, search_patch
from mobiledl.deploy.mcu.budget import KB
from mobiledl.deploy.mcu.codegen import (
    build,
    check_tools,
    generate_c,
    generate_patch_c,
    image_sizes,
    run_c,
)
from mobiledl.errors import UserError
from mobiledl.models import create_model_for_task
from mobiledl.train import TrainConfig, train

STEM = "mcu_codegen"
CALIBRATION_IMAGES = 64
MAX_MAC_OVERHEAD = 0.3
FULL_MODELS = (("mcunet", 1.0), ("mobilenet_v2", 0.35), ("mobilenet_v2", 1.0))


def parse_args(argv: Sequence[str]) -> Any:
    parser = harness.benchmark_parser(STEM, __doc__, threads=False)
    parser.add_argument("--image-size", type=int, default=None, help="input side (pixels)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per model")
    parser.add_argument("--inputs", type=int, default=None, help="images checked bit for bit")
    parser.add_argument("--no-qemu", action="store_true", help="skip the Cortex-M7 run")
    args = harness.parse(parser, argv)
    smoke = {"image_size": 32, "epochs": 1, "inputs": 8}
    harness.resolve(args, smoke, {"image_size": 144, "epochs": 10, "inputs": 100})
    args.models = [("mobilenet_v2", 0.35)] if args.smoke else list(FULL_MODELS)
    return args


def measure(name: str, width: float, task: Any, args: Any, workdir: Path) -> dict[str, Any]:
    """One model: trained, int8, generated, built twice, checked."""
    torch.manual_seed(args.seed)
    model = create_model_for_task(name, task, width_mult=width)
    train(
        model,
        task,
        TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adamw", seed=args.seed),
    )
    quantized = apply(model, QuantConfig(calibration_samples=CALIBRATION_IMAGES), task)
    onnx_path = get_engine().export(quantized, task.example_input(1), workdir / f"{name}.onnx")
    graph = read_graph(onnx_path)
    plan = plan_memory(graph, in_place_depthwise=True)
    project = generate_c(plan, workdir / f"{name}_{width}")
    x_test, y_test = (t.numpy() for t in task.split("test"))
    codes = quantize_input(graph, x_test)
    expected = run(graph, codes[: args.inputs]).reshape(min(args.inputs, len(codes)), -1)
    build(project.folder, "host")
    host = run_c(project.folder, codes, "host", project.output_dtype)
    ort = get_engine().run(onnx_path, x_test).argmax(axis=1)
    row = {
        "model": name,
        "width_mult": width,
        "input": list(graph.tensors[graph.input].shape[1:]),
        "ops": len(graph.ops),
        "in_place_ops": len(plan.in_place),
        "planner_arena_bytes": plan.arena_bytes,
        "code_arena_bytes": _code_arena(project.folder / "model.h"),
        "constants_bytes": graph.flash_bytes,
        "checked_inputs": len(expected),
        "host_differ": _differ(host[: len(expected)], expected),
        "test_images": len(codes),
        "host_top1_vs_ort_int8": float((host.argmax(axis=1) == ort).mean()),
        "host_accuracy": float((host.argmax(axis=1) == y_test).mean()),
        "ort_int8_accuracy": float((ort == y_test).mean()),
    }
    row.update(_cortex_m7(project, codes[: len(expected)], expected, args))
    return {**row, **_patch_based(graph, codes[: len(expected)], expected, args, workdir)}


def _patch_based(
    graph: Any, codes: np.ndarray, expected: np.ndarray, args: Any, workdir: Path
) -> dict[str, Any]:
    """The patch-based C (the smallest peak within +30% MACs): built, run, checked."""
    patch = search_patch(graph, MAX_MAC_OVERHEAD)
    if patch is None:
        return {"patch": None}
    folder = workdir / f"patch_{len(list(workdir.iterdir()))}"
    project = generate_patch_c(graph, patch.split, patch.grid, folder)
    build(project.folder, "host")
    host = run_c(project.folder, codes, "host", project.output_dtype)
    m7 = _cortex_m7(project, codes, expected, args)
    return {
        "patch": {
            "split_layer": graph.ops[patch.split - 1].layer,
            "grid": list(patch.grid),
            "mac_overhead": patch.mac_overhead,
            "planner_peak_bytes": patch.peak_bytes,
            "code_arena_bytes": _code_arena(project.folder / "model.h"),
            "frame_buffer_bytes": project.input_bytes,
            "host_differ": _differ(host, expected),
            **m7,
        }
    }


def _code_arena(header: Path) -> int:
    """``MDL_ARENA_BYTES`` as the generated header defines it."""
    return int(re.search(r"#define MDL_ARENA_BYTES (\d+)", header.read_text()).group(1))


def _differ(outputs: np.ndarray, expected: np.ndarray) -> int:
    """Inputs whose output differs from the reference in any element."""
    return int((outputs != expected).any(axis=1).sum())


def _cortex_m7(project: Any, codes: np.ndarray, expected: np.ndarray, args: Any) -> dict:
    """The Cortex-M7 image's sections and its outputs under QEMU (None without the tools)."""
    try:
        check_tools("cortex-m7", run=not args.no_qemu)
    except UserError as error:
        return {"image": None, "qemu_differ": None, "qemu_seconds_per_image": None,
                "cortex_m7_skipped": str(error)}  # fmt: skip
    build(project.folder, "cortex-m7")
    sizes = vars(image_sizes(project.folder / "model.map"))
    if args.no_qemu:
        return {"image": sizes, "qemu_differ": None, "qemu_seconds_per_image": None}
    start = time.perf_counter()
    outputs = run_c(project.folder, codes, "cortex-m7", project.output_dtype)
    seconds = (time.perf_counter() - start) / len(codes)
    return {
        "image": sizes,
        "qemu_differ": _differ(outputs, expected),
        "qemu_seconds_per_image": seconds,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "bit_exact_host": all(row["host_differ"] == 0 for row in rows),
        "bit_exact_qemu": all(row["qemu_differ"] == 0 for row in rows),
        "arena_is_planner_peak": all(
            row["code_arena_bytes"] == row["planner_arena_bytes"]
            and (row["image"] is None or row["image"]["arena"] == row["code_arena_bytes"])
            for row in rows
        ),
        "min_top1_vs_ort_int8": min(row["host_top1_vs_ort_int8"] for row in rows),
        "patch_bit_exact": all(
            row["patch"]["host_differ"] == 0 and row["patch"]["qemu_differ"] in (0, None)
            for row in rows
            if row["patch"]
        ),
        "patch_arena_is_planner_peak": all(
            row["patch"]["code_arena_bytes"] == row["patch"]["planner_peak_bytes"]
            for row in rows
            if row["patch"]
        ),
    }


def _kb(size: int | None) -> str:
    return "" if size is None else f"{size / KB:.1f}"


def _exact(differ: int | None, checked: int) -> str:
    if differ is None:
        return "not run"
    return f"{checked - differ}/{checked}"


def markdown(report: dict[str, Any]) -> str:
    config, rows = report["config"], report["rows"]
    table = harness.markdown_table(
        ["model", "width", "input", "ops", "planner arena kB", "code arena kB", ".bss kB",
         ".data kB", "flash kB (.text)", "constants kB", "host = ref", "QEMU = ref",
         "QEMU s/img", "top-1 = ORT int8", "accuracy C / ORT"],
        [
            (row["model"], row["width_mult"], "x".join(map(str, row["input"])), row["ops"],
             _kb(row["planner_arena_bytes"]), _kb(row["code_arena_bytes"]),
             *(_kb((row["image"] or {}).get(key)) for key in ("bss", "data", "flash")),
             _kb(row["constants_bytes"]), _exact(row["host_differ"], row["checked_inputs"]),
             _exact(row["qemu_differ"], row["checked_inputs"]),
             "" if row["qemu_seconds_per_image"] is None
             else f"{row['qemu_seconds_per_image']:.2f}",
             f"{harness.pct(row['host_top1_vs_ort_int8'])}% of {row['test_images']}",
             f"{harness.pct(row['host_accuracy'])}% / {harness.pct(row['ort_int8_accuracy'])}%")
            for row in rows
        ],
        align="llrrrrrrrrrrrrr",
    )  # fmt: skip
    lines = [
        "# MCU code generation: the C program against the integer reference and ONNX Runtime",
        "",
        f"{harness.machine_line(report)} Digits at {config['image_size']}x{config['image_size']}"
        f" (1 channel), {harness.plural(config['epochs'], 'epoch')} of AdamW (batch 32), "
        f"int8 PTQ on {CALIBRATION_IMAGES} images. Built with -Wall -Wextra -Werror: gcc -O2 "
        "(host) and arm-none-eabi-gcc -O2 -mcpu=cortex-m7 -mthumb (MPS2-AN500 under "
        "qemu-system-arm, semihosting). kB = 1024 bytes.",
        "",
        *table,
        "",
        "Patch-based C (MCUNetV2): the first stages tile by tile, then layer by layer, in one "
        f"arena; the split and grid with the smallest peak within +{MAX_MAC_OVERHEAD:.0%} MACs "
        "(`search_patch`). The input frame is a buffer of its own (counted in .bss, not in the "
        "arena): on a board the camera delivers it.",
        "",
        *_patch_table(rows),
        "",
        "- host / QEMU = ref: test images whose every output equals the integer reference's "
        "(int32 logits), of those checked.",
        "- top-1 = ORT int8: the C program's (host) top-1 against ONNX Runtime's int8 session "
        "on the whole test split; both run the same int8 graph, ORT with its own kernels.",
        "- .bss: the static arena plus the runtime's few bytes; .data: initialised data; flash: "
        ".text (code, weights, biases, multiplier tables) + .data's initial values. The stack "
        "is not counted. QEMU s/img is emulation time, not Cortex-M7 time.",
        *(
            f"- {row['model']} {row['width_mult']}: no Cortex-M7 build, {row['cortex_m7_skipped']}"
            for row in rows
            if "cortex_m7_skipped" in row
        ),  # fmt: skip
        "",
    ]
    return "\n".join(lines)


def _patch_table(rows: list[dict[str, Any]]) -> list[str]:
    patched = [(row, row["patch"]) for row in rows if row["patch"]]
    return harness.markdown_table(
        ["model", "width", "patches", "MACs", "planner peak kB", "code arena kB",
         "frame kB", ".bss kB", "host = ref", "QEMU = ref", "layer-by-layer arena kB"],
        [
            (row["model"], row["width_mult"],
             f"{'x'.join(map(str, p['grid']))} to {p['split_layer']}",
             f"+{p['mac_overhead']:.0%}", _kb(p["planner_peak_bytes"]),
             _kb(p["code_arena_bytes"]), _kb(p["frame_buffer_bytes"]),
             _kb((p["image"] or {}).get("bss")), _exact(p["host_differ"], row["checked_inputs"]),
             _exact(p["qemu_differ"], row["checked_inputs"]), _kb(row["code_arena_bytes"]))
            for row, p in patched
        ],
        align="lllrrrrrrrr",
    )  # fmt: skip


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Generate, build and check every configuration; write JSON + markdown."""
    from mobiledl.data.builtin import digits

    args = parse_args(argv)
    task = digits(image_size=args.image_size, seed=args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-mcu-codegen-") as tmp:
        progress = tqdm(args.models, file=sys.stderr, unit="model", dynamic_ncols=True)
        for name, width in progress:
            progress.set_description(f"{name} x{width}")
            rows.append(measure(name, width, task, args, Path(tmp)))
    return harness.write_results(args, rows, summary(rows), markdown)
