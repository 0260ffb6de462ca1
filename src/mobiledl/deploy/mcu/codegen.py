"""C code generation for the MCU runtime: a planned ``Graph`` as a portable C99 project.

TinyEngine (Lin et al. 2020, MCUNet) generates per-model code instead of interpreting a
model file: the schedule is straight-line calls, every tensor is a fixed offset into one
static arena, and no memory is allocated at run time. ``generate_c`` does that for a
``MemoryPlan`` of ``mobiledl.deploy.mcu.planner``:

- ``model.c``: the weights, biases and requantization tables as ``const`` arrays (flash),
  one static arena of exactly ``plan.arena_bytes`` (SRAM), one parameter block per op and
  ``mdl_run()``, the ops in the plan's order at their planned offsets. A depthwise conv the
  plan runs in place calls the in-place kernel with its one-channel temporary.
- ``model.h``: sizes and the rounding mode the kernels compile with.
- the fixed sources from ``c/`` beside this module: the int8 kernels (the integer
  reference's arithmetic, bit for bit), a host driver (stdio), a Cortex-M driver and start-up
  over semihosting, a linker script for the MPS2-AN500 board and a Makefile.

``build`` runs ``make host`` (gcc) or ``make cortex-m7`` (``arm-none-eabi-gcc``, every
warning an error for both); ``run_c`` feeds int8 images through the built program (natively,
or under ``qemu-system-arm -M mps2-an500``) and returns its raw outputs; ``image_sizes``
reads flash and SRAM use from the linker map.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobiledl.deploy.mcu.fixedpoint import DOUBLE, EVEN, UP
from mobiledl.deploy.mcu.graph import ADD_LEFT_SHIFT, Graph, Op
from mobiledl.deploy.mcu.planner import MemoryPlan
from mobiledl.errors import UserError
from mobiledl.fileio import write_json_atomic, write_text_atomic

SOURCES = Path(__file__).parent / "c"
MANIFEST = "model.json"
FIXED_FILES = (
    "kernels.c",
    "kernels.h",
    "main.c",
    "mcu_main.c",
    "startup.c",
    "semihost.h",
    "mps2_an500.ld",
    "Makefile",
)
TARGETS = ("host", "cortex-m7")
#: The op kinds the kernels implement (``Graph`` ops; ReLU / ReLU6 are fused clamps).
KERNELS = ("conv", "pointwise", "depthwise", "fc", "add", "avgpool", "global_avgpool", "maxpool")
_ROUNDING_CODE = {EVEN: 0, UP: 1, DOUBLE: 2}
_TOOLS = {
    "host": (("make", "make"), ("gcc", "gcc")),
    "cortex-m7": (
        ("make", "make"),
        ("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"),
    ),
}
_QEMU = ("qemu-system-arm", "qemu-system-arm")
#: Generous wall-clock limit of one emulator run (QEMU runs a small CNN in well under 1 s).
QEMU_SECONDS_PER_IMAGE = 30.0


@dataclass
class CProject:
    """A generated C project: its folder, the plan it encodes and the graph's boundary."""

    folder: Path
    plan: MemoryPlan
    input_bytes: int
    output_bytes: int
    output_dtype: type


def generate_c(plan: MemoryPlan, folder: str | Path) -> CProject:
    """Write the C project of ``plan`` into ``folder`` (module docstring)."""
    graph = plan.graph
    for op in graph.ops:
        if op.kind not in KERNELS:
            raise UserError(f"layer '{op.layer}': op '{op.kind}' has no C kernel")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for name in FIXED_FILES:
        shutil.copyfile(SOURCES / name, target / name)
    source, output = graph.tensors[graph.input], graph.tensors[graph.output]
    write_text_atomic(target / "model.h", _header(plan, source.nbytes, output.nbytes, output.dtype))
    write_text_atomic(target / "model.c", "".join(_model_source(plan)))
    write_json_atomic(target / MANIFEST, _manifest(plan))
    return CProject(target, plan, source.nbytes, output.nbytes, output.dtype)


def _manifest(plan: MemoryPlan) -> dict[str, Any]:
    """What running the project needs without the model: the boundary tensors' grids."""
    graph = plan.graph
    source, output = graph.tensors[graph.input], graph.tensors[graph.output]
    return {
        "source": graph.source,
        "ops": len(graph.ops),
        "rounding": graph.rounding,
        "arena_bytes": plan.arena_bytes,
        "in_place_depthwise_ops": len(plan.in_place),
        "constants_bytes": graph.flash_bytes,
        "input": {
            "shape": list(source.shape),
            "scale": float(np.asarray(source.scale).reshape(-1)[0]),
            "zero_point": source.zero_point,
        },
        "output": {
            "shape": list(output.shape),
            "dtype": np.dtype(output.dtype).name,
            "scale": np.asarray(output.scale, np.float64).reshape(-1).tolist(),
            "zero_point": output.zero_point,
        },
    }


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``model.json`` of a generated project (``UserError`` if it is not one)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise UserError(f"{folder}: not a generated C project (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"{path}: not JSON ({error})") from None
    missing = [key for key in ("input", "output", "arena_bytes") if key not in manifest]
    if missing:
        raise UserError(f"{path}: not a C project manifest (no '{missing[0]}')")
    return manifest


def _header(plan: MemoryPlan, input_bytes: int, output_bytes: int, dtype: type) -> str:
    rounding = _ROUNDING_CODE[plan.graph.rounding]
    return f"""/* Generated by mobiledl.deploy.mcu.codegen from {plan.graph.source or "a Graph"}. */
#ifndef MDL_MODEL_H
#define MDL_MODEL_H
#include <stdint.h>

#define MDL_ROUNDING {rounding} /* 0: once, ties to even; 1: once, ties up; 2: gemmlowp */
#define MDL_ARENA_BYTES {plan.arena_bytes}
#define MDL_INPUT_BYTES {input_bytes}
#define MDL_OUTPUT_BYTES {output_bytes}
#define MDL_OUTPUT_INT32 {int(np.dtype(dtype) == np.int32)}
#define MDL_ADD_LEFT_SHIFT {ADD_LEFT_SHIFT} /* headroom of an add's rescaled inputs */

int8_t *mdl_input(void);
const void *mdl_output(void);
void mdl_run(void);
#endif
"""


def _model_source(plan: MemoryPlan) -> Iterator[str]:
    graph = plan.graph
    yield f"/* Generated by mobiledl.deploy.mcu.codegen from {graph.source or 'a Graph'}:\n"
    yield f" * {len(graph.ops)} ops, arena {plan.arena_bytes} bytes, "
    yield f"constants {graph.flash_bytes} bytes. */\n"
    yield '#include "kernels.h"\n#include "model.h"\n\n'
    yield "static union {\n    int32_t align;\n    int8_t bytes[MDL_ARENA_BYTES];\n} arena;\n\n"
    yield "#define AT(offset) (arena.bytes + (offset))\n\n"
    for op_index in plan.order:
        yield from _op_constants(op_index, graph.ops[op_index], graph)
    yield f"int8_t *mdl_input(void) {{ return AT({plan.offset(graph.input)}); }}\n"
    yield f"const void *mdl_output(void) {{ return AT({plan.offset(graph.output)}); }}\n\n"
    yield "void mdl_run(void) {\n"
    for op_index in plan.order:
        yield _call(op_index, graph.ops[op_index], plan)
    yield "}\n"


def _array(c_type: str, name: str, values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1)
    rows = (
        "    " + ", ".join(str(int(v)) for v in flat[i : i + 24]) for i in range(0, flat.size, 24)
    )
    return f"static const {c_type} {name}[{flat.size}] = {{\n" + ",\n".join(rows) + "\n};\n"


def _op_constants(index: int, op: Op, graph: Graph) -> Iterator[str]:
    yield f"/* op {index}: {op.kind} {op.layer} */\n"
    if op.kind == "add":
        yield _add_block(index, op, graph)
        return
    if op.weight is not None:
        yield _array("int8_t", f"w{index}", op.weight)
        yield _array("int32_t", f"b{index}", op.bias)
    if op.requant is not None:
        yield _array("int32_t", f"m{index}", op.requant.m0)
        yield _array("int32_t", f"s{index}", op.requant.shift)
    yield _op_block(index, op, graph)


def _op_block(index: int, op: Op, graph: Graph) -> str:
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.output]
    in_c, in_h, in_w = _chw(x.shape)
    out_c, out_h, out_w = _chw(y.shape)
    if op.kind == "fc":
        in_c, in_h, in_w = x.size, 1, 1
    fields = {
        "in_c": in_c,
        "in_h": in_h,
        "in_w": in_w,
        "out_c": out_c,
        "out_h": out_h,
        "out_w": out_w,
        "kh": op.kernel[0],
        "kw": op.kernel[1],
        "sh": op.stride[0],
        "sw": op.stride[1],
        "pt": op.pads[0],
        "pl": op.pads[1],
        "groups": op.groups,
        "in_zp": x.zero_point,
        "out_zp": y.zero_point,
        "lo": op.clamp[0],
        "hi": op.clamp[1],
    }
    pointers = {}
    if op.weight is not None:
        pointers.update(weight=f"w{index}", bias=f"b{index}")
    if op.requant is not None:
        pointers.update(m0=f"m{index}", shift=f"s{index}")
    body = ", ".join(f".{k} = {v}" for k, v in {**fields, **pointers}.items())
    return f"static const mdl_op op{index} = {{{body}}};\n\n"


def _add_block(index: int, op: Op, graph: Graph) -> str:
    a, b = (graph.tensors[name] for name in op.inputs)
    y = graph.tensors[op.output]
    (ra, rb), final = op.input_requant, op.requant
    fields = {
        "size": y.size,
        "zp_a": a.zero_point,
        "zp_b": b.zero_point,
        "out_zp": y.zero_point,
        "lo": op.clamp[0],
        "hi": op.clamp[1],
        "m0_a": int(ra.m0[0]),
        "sh_a": int(ra.shift[0]),
        "m0_b": int(rb.m0[0]),
        "sh_b": int(rb.shift[0]),
        "m0": int(final.m0[0]),
        "shift": int(final.shift[0]),
    }
    body = ", ".join(f".{k} = {v}" for k, v in fields.items())
    return f"static const mdl_add_op op{index} = {{{body}}};\n\n"


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Channels, height, width of a batch-1 NCHW (or ``(1, features)``) shape."""
    padded = (*shape[1:], 1, 1)
    return padded[0], padded[1], padded[2]


def _call(index: int, op: Op, plan: MemoryPlan) -> str:
    inputs = ", ".join(f"AT({plan.offset(name)})" for name in op.inputs)
    output = f"AT({plan.offset(op.output)})"
    note = f"  /* {op.layer} */\n"
    if index in plan.in_place:
        temp = plan.temporary(index)
        return f"    mdl_depthwise_in_place(&op{index}, {inputs}, AT({temp.offset})); {note}"
    if op.kind in ("conv", "pointwise", "depthwise"):
        return f"    mdl_conv(&op{index}, {inputs}, {output});{note}"
    if op.kind == "fc":
        return f"    mdl_fc(&op{index}, {inputs}, {output});{note}"
    if op.kind == "add":
        return f"    mdl_add(&op{index}, {inputs}, {output});{note}"
    is_max = int(op.kind == "maxpool")
    return f"    mdl_pool(&op{index}, {inputs}, {output}, {is_max});{note}"


# ---------------------------------------------------------------- build and run


def check_tools(target: str, run: bool = False) -> None:
    """Raise ``UserError`` naming the Debian package of the first missing tool."""
    if target not in TARGETS:
        raise UserError(f"target '{target}' is not one of {', '.join(TARGETS)}")
    tools = list(_TOOLS[target]) + ([_QEMU] if run and target == "cortex-m7" else [])
    for tool, package in tools:
        if shutil.which(tool) is None:
            raise UserError(f"{tool} not found: apt-get install {package}")


def build(folder: str | Path, target: str = "host") -> Path:
    """Compile the project in ``folder`` for ``target``; the program's path."""
    check_tools(target)
    project = Path(folder)
    if not (project / "model.c").exists():
        raise UserError(f"{project}: not a generated C project (no model.c)")
    result = subprocess.run(
        ["make", "-s", "-C", str(project), target], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise UserError(f"building {project} for {target} failed: {lines[0]}")
    return project / ("model_host" if target == "host" else "model.elf")


def run_c(
    folder: str | Path, images: np.ndarray, target: str = "host", output_dtype: type = np.int8
) -> np.ndarray:
    """The raw outputs of the built program on int8 ``images`` (one row per image)."""
    check_tools(target, run=True)
    project = Path(folder)
    program = project / ("model_host" if target == "host" else "model.elf")
    if not program.exists():
        raise UserError(f"{program} not built: make -C {project} {target}")
    codes = np.ascontiguousarray(np.asarray(images, np.int8))
    with tempfile.TemporaryDirectory(prefix="mobiledl-mcu-run-") as tmp:
        work = Path(tmp)
        codes.tofile(work / "input.bin")
        command = _command(program.resolve(), target)
        seconds = QEMU_SECONDS_PER_IMAGE * max(1, len(codes))
        try:
            result = subprocess.run(
                command, cwd=work, capture_output=True, text=True, timeout=seconds, check=False
            )
        except subprocess.TimeoutExpired:
            raise UserError(f"{program} did not finish within {seconds:.0f} s") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise UserError(f"{program} failed (exit {result.returncode}): {detail[0]}")
        raw = np.fromfile(work / "output.bin", dtype=np.dtype(output_dtype).newbyteorder("<"))
    if raw.size % max(1, len(codes)):
        raise UserError(f"{program} wrote {raw.size} values for {len(codes)} images")
    return raw.reshape(len(codes), -1).astype(output_dtype)


def _command(program: Path, target: str) -> list[str]:
    if target == "host":
        return [str(program), "input.bin", "output.bin"]
    return [
        "qemu-system-arm",
        "-M",
        "mps2-an500",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        str(program),
    ]


_SECTION = re.compile(r"^(\.\w+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", re.MULTILINE)
_ARENA = re.compile(r"^\s*\.bss\.arena\s*(?:\n\s*)?0x[0-9a-f]+\s+0x([0-9a-f]+)", re.MULTILINE)


@dataclass
class ImageSizes:
    """Bytes of a built Cortex-M image, from its linker map: ``flash`` = .text (code,
    weights, tables) + .ARM.exidx + .data's initial values; ``sram`` = .data + .bss (the
    arena included; the stack comes on top)."""

    text: int
    data: int
    bss: int
    arena: int
    flash: int
    sram: int


def image_sizes(map_file: str | Path) -> ImageSizes:
    """Section sizes of the linked image whose ``-Map`` file is ``map_file``."""
    text = Path(map_file).read_text()
    sizes = {name: int(size, 16) for name, _, size in _SECTION.findall(text)}
    arena = _ARENA.search(text)
    code, data, bss = sizes.get(".text", 0), sizes.get(".data", 0), sizes.get(".bss", 0)
    flash = code + sizes.get(".ARM.exidx", 0) + data
    return ImageSizes(code, data, bss, int(arena.group(1), 16) if arena else 0, flash, data + bss)


__all__ = [
    "CProject",
    "ImageSizes",
    "build",
    "check_tools",
    "generate_c",
    "image_sizes",
    "read_manifest",
    "run_c",
]
