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
from mobiledl.deploy.mcu.graph import ADD_LEFT_SHIFT, Graph, Op, Tensor
from mobiledl.deploy.mcu.patch import Region, input_region, patch_regions, rest_graph, tile_plan
from mobiledl.deploy.mcu.planner import MemoryPlan, plan_memory
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
    """A generated C project: its folder, its arena and the graph's boundary."""

    folder: Path
    arena_bytes: int
    input_bytes: int
    output_bytes: int
    output_dtype: type


@dataclass(frozen=True)
class View:
    """A ``(channels, height, width)`` window into the arena: element ``(c, y, x)`` sits at
    ``offset + c * plane + y * pitch + x`` (offset in bytes, strides in elements)."""

    offset: int
    channels: int
    height: int
    width: int
    pitch: int
    plane: int


def whole(offset: int, shape: tuple[int, ...]) -> View:
    """The contiguous view of a batch-1 NCHW (or ``(1, features)``) tensor at ``offset``."""
    channels, height, width = (*shape[1:], 1, 1)[:3]
    return View(offset, channels, height, width, width, height * width)


def generate_c(plan: MemoryPlan, folder: str | Path) -> CProject:
    """Write the layer-by-layer C project of ``plan`` into ``folder`` (module docstring)."""
    graph = plan.graph
    emitter = _Emitter(graph)
    emitter.stage(plan, [(i, i) for i in plan.order])
    input_at = f"AT({plan.offset(graph.input)})"
    return _write_project(folder, graph, plan.arena_bytes, emitter, input_at, {"patch": None})


def generate_patch_c(
    graph: Graph, split: int, grid: tuple[int, int], folder: str | Path, in_place: bool = True
) -> CProject:
    """Write the patch-based C project (MCUNetV2, Lin et al. 2021) into ``folder``: the first
    ``split`` ops tile by tile on a ``grid``, each tile planned on its own behind the full
    split tensor (at offset 0), then the rest layer by layer in the same arena, as
    ``patch.run_patch_based_in_arena`` executes it. The full input image is a separate
    buffer (a camera frame); each tile copies its crop."""
    tiles = patch_regions(graph, split, grid)
    plans = [tile_plan(graph, split, need, in_place) for need in tiles]
    joint = graph.tensors[graph.ops[split - 1].output]
    rest = plan_memory(rest_graph(graph, split), in_place_depthwise=in_place)
    arena = max(joint.nbytes + max(p.arena_bytes for p in plans), rest.arena_bytes)
    emitter = _Emitter(graph)
    for number, (need, plan) in enumerate(zip(tiles, plans, strict=True)):
        emitter.tile(number, need, plan, joint.nbytes)
    emitter.calls.append(f"    memmove(AT({rest.offset(joint.name)}), AT(0), {joint.nbytes});\n")
    emitter.stage(rest, [(split + i, i) for i in rest.order])
    patch = {"split": split, "split_layer": graph.ops[split - 1].layer, "grid": list(grid)}
    return _write_project(folder, graph, arena, emitter, "image", {"patch": patch})


def _write_project(
    folder: str | Path,
    graph: Graph,
    arena: int,
    emitter: _Emitter,
    input_at: str,
    extra: dict[str, Any],
) -> CProject:
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for name in FIXED_FILES:
        shutil.copyfile(SOURCES / name, target / name)
    source, output = graph.tensors[graph.input], graph.tensors[graph.output]
    write_text_atomic(target / "model.h", _header(graph, arena, source.nbytes, output))
    body = emitter.source(arena, input_at, emitter.output_at)
    write_text_atomic(target / "model.c", body)
    write_json_atomic(target / MANIFEST, {**_manifest(graph, arena, emitter), **extra})
    return CProject(target, arena, source.nbytes, output.nbytes, output.dtype)


def _manifest(graph: Graph, arena: int, emitter: _Emitter) -> dict[str, Any]:
    """What running the project needs without the model: the boundary tensors' grids."""
    source, output = graph.tensors[graph.input], graph.tensors[graph.output]
    return {
        "source": graph.source,
        "ops": len(graph.ops),
        "rounding": graph.rounding,
        "arena_bytes": arena,
        "in_place_depthwise_calls": emitter.in_place_calls,
        "constants_bytes": graph.flash_bytes,
        "input": {
            "shape": list(source.shape),
            "scale": source.first_scale,
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


def _header(graph: Graph, arena: int, input_bytes: int, output: Tensor) -> str:
    rounding = _ROUNDING_CODE[graph.rounding]
    return f"""/* Generated by mobiledl.deploy.mcu.codegen from {graph.source or "a Graph"}. */
#ifndef MDL_MODEL_H
#define MDL_MODEL_H
#include <stdint.h>

#define MDL_ROUNDING {rounding} /* 0: once, ties to even; 1: once, ties up; 2: gemmlowp */
#define MDL_ARENA_BYTES {arena}
#define MDL_INPUT_BYTES {input_bytes}
#define MDL_OUTPUT_BYTES {output.nbytes}
#define MDL_OUTPUT_INT32 {int(np.dtype(output.dtype) == np.int32)}
#define MDL_ADD_LEFT_SHIFT {ADD_LEFT_SHIFT} /* headroom of an add's rescaled inputs */

int8_t *mdl_input(void);
const void *mdl_output(void);
void mdl_run(void);
#endif
"""


class _Emitter:
    """Collects the constants, parameter blocks and calls of ``model.c``."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.constants: list[str] = []
        self.blocks: list[str] = []
        self.calls: list[str] = []
        self.emitted: set[int] = set()
        self.in_place_calls = 0
        self.output_at = ""

    def stage(self, plan: MemoryPlan, indices: list[tuple[int, int]]) -> None:
        """Ops of ``plan`` layer by layer: ``(graph op index, plan op index)`` pairs."""
        for index, local in indices:
            op = plan.graph.ops[local]
            tensors = plan.graph.tensors
            inputs = [whole(plan.offset(n), tensors[n].shape) for n in op.inputs]
            output = whole(plan.offset(op.output), tensors[op.output].shape)
            temp = plan.temporary(local) if local in plan.in_place else None
            self.op(index, op, inputs, output, temp.offset if temp else None, "")
        self.output_at = f"AT({plan.offset(plan.graph.output)})"

    def tile(self, number: int, need: dict[str, Region], plan: MemoryPlan, base: int) -> None:
        """One tile's ops: each reads the crop of its input tiles it needs; the last writes
        its patch of the full split tensor at offset 0."""
        graph, tile = self.graph, plan.graph
        image, region = graph.tensors[graph.input], need[graph.input]
        channels, height, width = image.shape[1:]
        start = region.r0 * width + region.c0
        self.calls.append(
            f"    mdl_crop(image + {start}, {width}, {height * width}, {channels}, "
            f"{region.r1 - region.r0}, {region.c1 - region.c0}, "
            f"AT({base + plan.offset(graph.input)}));  /* tile {number} */\n"
        )
        last = graph.ops[len(tile.ops) - 1].output
        for local in plan.order:
            op, original = tile.ops[local], graph.ops[local]
            inputs = [
                self._crop(name, need, input_region(original, need[op.output], graph.tensors[name]),
                           base + plan.offset(name))
                for name in op.inputs
            ]  # fmt: skip
            if op.output == last:
                output = self._patch_of_full(need[last], graph.tensors[last].shape)
            else:
                output = whole(base + plan.offset(op.output), tile.tensors[op.output].shape)
            temp = plan.temporary(local) if local in plan.in_place else None
            offset = base + temp.offset if temp else None
            self.op(local, op, inputs, output, offset, f"_t{number}")

    def _crop(self, name: str, need: dict[str, Region], wanted: Region, at: int) -> View:
        outer = need[name]
        channels = self.graph.tensors[name].shape[1]
        pitch = outer.c1 - outer.c0
        offset = at + (wanted.r0 - outer.r0) * pitch + (wanted.c0 - outer.c0)
        height, width = wanted.r1 - wanted.r0, wanted.c1 - wanted.c0
        return View(offset, channels, height, width, pitch, outer.area)

    @staticmethod
    def _patch_of_full(region: Region, shape: tuple[int, ...]) -> View:
        channels, height, width = shape[1:]
        offset = region.r0 * width + region.c0
        rows, cols = region.r1 - region.r0, region.c1 - region.c0
        return View(offset, channels, rows, cols, width, height * width)

    def op(
        self, index: int, op: Op, inputs: list[View], output: View, temp: int | None, suffix: str
    ) -> None:
        """Constants (once per graph op), the parameter block and the call of one op."""
        if index not in self.emitted:
            self.emitted.add(index)
            self.constants.extend(_op_constants(index, op))
        name = f"op{index}{suffix}"
        tensors = self.graph.tensors
        if op.kind == "add":
            self.blocks.append(_add_block(name, op, inputs, output, tensors))
        else:
            self.blocks.append(_op_block(name, index, op, inputs[0], output, tensors))
        self.calls.append(_call(name, op, inputs, output, temp))
        self.in_place_calls += temp is not None

    def source(self, arena: int, input_at: str, output_at: str) -> str:
        graph = self.graph
        head = [
            f"/* Generated by mobiledl.deploy.mcu.codegen from {graph.source or 'a Graph'}:\n",
            f" * {len(graph.ops)} ops, arena {arena} bytes, constants {graph.flash_bytes} "
            "bytes. */\n",
            '#include <string.h>\n#include "kernels.h"\n#include "model.h"\n\n',
            "static union {\n    int32_t align;\n    int8_t bytes[MDL_ARENA_BYTES];\n} arena;\n",
            "#define AT(offset) (arena.bytes + (offset))\n\n",
        ]
        if input_at == "image":
            head.append("static int8_t image[MDL_INPUT_BYTES]; /* the camera frame */\n\n")
        tail = [
            f"int8_t *mdl_input(void) {{ return {input_at}; }}\n",
            f"const void *mdl_output(void) {{ return {output_at}; }}\n\n",
            "void mdl_run(void) {\n",
            *self.calls,
            "}\n",
        ]
        return "".join([*head, *self.constants, *self.blocks, "\n", *tail])


def _array(c_type: str, name: str, values: np.ndarray) -> str:
    flat = np.asarray(values).reshape(-1)
    rows = (
        "    " + ", ".join(str(int(v)) for v in flat[i : i + 24]) for i in range(0, flat.size, 24)
    )
    return f"static const {c_type} {name}[{flat.size}] = {{\n" + ",\n".join(rows) + "\n};\n"


def _op_constants(index: int, op: Op) -> Iterator[str]:
    if op.kind not in KERNELS:
        raise UserError(f"layer '{op.layer}': op '{op.kind}' has no C kernel")
    yield f"/* op {index}: {op.kind} {op.layer} */\n"
    if op.weight is not None:
        yield _array("int8_t", f"w{index}", op.weight)
        yield _array("int32_t", f"b{index}", op.bias)
    if op.requant is not None and op.kind != "add":
        yield _array("int32_t", f"m{index}", op.requant.m0)
        yield _array("int32_t", f"s{index}", op.requant.shift)


def _op_block(name: str, index: int, op: Op, x: View, y: View, tensors: dict[str, Tensor]) -> str:
    in_c = x.channels * x.height * x.width if op.kind == "fc" else x.channels
    fields: dict[str, object] = {
        "in_c": in_c, "in_h": x.height, "in_w": x.width,
        "out_c": y.channels, "out_h": y.height, "out_w": y.width,
        "kh": op.kernel[0], "kw": op.kernel[1], "sh": op.stride[0], "sw": op.stride[1],
        "pt": op.pads[0], "pl": op.pads[1], "groups": op.groups,
        "in_pitch": x.pitch, "in_plane": x.plane, "out_pitch": y.pitch, "out_plane": y.plane,
        "in_zp": tensors[op.inputs[0]].zero_point, "out_zp": tensors[op.output].zero_point,
        "lo": op.clamp[0], "hi": op.clamp[1],
    }  # fmt: skip
    if op.weight is not None:
        fields.update(weight=f"w{index}", bias=f"b{index}")
    if op.requant is not None:
        fields.update(m0=f"m{index}", shift=f"s{index}")
    body = ", ".join(f".{k} = {v}" for k, v in fields.items())
    return f"static const mdl_op {name} = {{{body}}};\n"


def _add_block(name: str, op: Op, inputs: list[View], y: View, tensors: dict[str, Tensor]) -> str:
    a, b = inputs
    (ra, rb), final = op.input_requant, op.requant
    fields = {
        "c": y.channels, "h": y.height, "w": y.width,
        "a_pitch": a.pitch, "a_plane": a.plane, "b_pitch": b.pitch, "b_plane": b.plane,
        "y_pitch": y.pitch, "y_plane": y.plane,
        "zp_a": tensors[op.inputs[0]].zero_point, "zp_b": tensors[op.inputs[1]].zero_point,
        "out_zp": tensors[op.output].zero_point, "lo": op.clamp[0], "hi": op.clamp[1],
        "m0_a": int(ra.m0[0]), "sh_a": int(ra.shift[0]),
        "m0_b": int(rb.m0[0]), "sh_b": int(rb.shift[0]),
        "m0": int(final.m0[0]), "shift": int(final.shift[0]),
    }  # fmt: skip
    body = ", ".join(f".{k} = {v}" for k, v in fields.items())
    return f"static const mdl_add_op {name} = {{{body}}};\n"


def _call(name: str, op: Op, inputs: list[View], output: View, temp: int | None) -> str:
    args = ", ".join(f"AT({view.offset})" for view in inputs)
    target = f"AT({output.offset})"
    note = f"  /* {op.layer} */\n"
    if temp is not None:
        return f"    mdl_depthwise_in_place(&{name}, {args}, AT({temp}));{note}"
    if op.kind in ("conv", "pointwise", "depthwise"):
        return f"    mdl_conv(&{name}, {args}, {target});{note}"
    if op.kind == "fc":
        return f"    mdl_fc(&{name}, {args}, {target});{note}"
    if op.kind == "add":
        return f"    mdl_add(&{name}, {args}, {target});{note}"
    is_max = int(op.kind == "maxpool")
    return f"    mdl_pool(&{name}, {args}, {target}, {is_max});{note}"


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
    "generate_patch_c",
    "image_sizes",
    "read_manifest",
    "run_c",
]
