"""``mobiledl mcu plan MODEL --sram-kb 256 --flash-kb 1024 [--patch none|auto]
[--max-mac-overhead 0.3] [--no-in-place] [--layers] [--json]``: plan an int8 model's static
SRAM arena for a microcontroller (``mobiledl.deploy.mcu``; MCUNet/TinyEngine, Lin et al. 2020)
and say whether it fits. ``mobiledl mcu codegen MODEL --out DIR [--target host|cortex-m7]``
writes the model as a C99 project (``mobiledl.deploy.mcu.codegen``) and builds it;
``mobiledl mcu run DIR (--input X.npy | --task T) [--target host|cortex-m7]`` runs the built
program (natively or under QEMU) and checks it against the integer reference.

MODEL is an int8 ``.onnx`` export (``mobiledl quantize ... --onnx q.onnx``) or a quantized
mobiledl ``.pt``; a float model is refused with one line saying how to quantize it (the
planner does not pick calibration data). The plan prints the peak SRAM (the arena), its lower
bound, the layer-by-layer peak without in-place depthwise, the flash (weights, biases and
multiplier tables; code size not included), whether both fit, and if not which tensors are
live at the peak and what would make it fit. ``--patch auto`` judges the fit on patch-based
inference (MCUNetV2, Lin et al. 2021): the split and grid with the smallest peak within
``--max-mac-overhead`` extra MACs; with ``--patch none`` it is only advice when the plan does
not fit. kB are 1024 bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mobiledl.cli.support import add_command
from mobiledl.fileio import output_dir_arg
from mobiledl.validate import positive_int_arg, positive_number_arg, seed_arg


def add_mcu_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl mcu`` with its ``plan`` sub-command."""
    mcu = commands.add_parser(
        "mcu",
        help="microcontrollers: plan an int8 model's SRAM arena and flash",
        description="Microcontroller deployment (MCUNet / TinyEngine, Lin et al. 2020).",
    )
    actions = mcu.add_subparsers(dest="mcu_command", required=True, metavar="ACTION")
    sub = add_command(
        actions, "plan", "plan the static SRAM arena of an int8 model and check budgets", _cmd_plan
    )
    sub.add_argument("model", type=Path, help="an int8 .onnx export or a quantized mobiledl .pt")
    sub.add_argument("--sram-kb", type=positive_number_arg, default=256.0, help="SRAM (kB)")
    sub.add_argument("--flash-kb", type=positive_number_arg, default=1024.0, help="flash (kB)")
    sub.add_argument(
        "--patch", choices=("none", "auto"), default="none", help="patch-based inference"
    )
    sub.add_argument(
        "--max-mac-overhead",
        type=positive_number_arg,
        default=0.3,
        help="extra MACs patch-based inference may cost (fraction, default 0.3)",
    )
    sub.add_argument(
        "--no-in-place", action="store_true", help="plan without in-place depthwise convs"
    )
    sub.add_argument("--layers", action="store_true", help="print the live bytes of every step")
    _add_codegen_commands(actions)


def _add_codegen_commands(actions: argparse._SubParsersAction) -> None:
    from mobiledl.deploy.mcu.codegen import TARGETS

    sub = add_command(
        actions, "codegen", "write an int8 model as a C project and build it", _cmd_codegen
    )
    sub.add_argument("model", type=Path, help="an int8 .onnx export or a quantized mobiledl .pt")
    sub.add_argument("--out", type=output_dir_arg, required=True, help="project folder")
    sub.add_argument("--target", choices=TARGETS, default="host", help="build for (default host)")
    sub.add_argument("--no-in-place", action="store_true", help="no in-place depthwise convs")
    sub.add_argument(
        "--patch",
        choices=("none", "auto"),
        default="none",
        help="auto: the first stages patch by patch (the smallest peak, MCUNetV2)",
    )
    sub.add_argument(
        "--max-mac-overhead",
        type=positive_number_arg,
        default=0.3,
        help="extra MACs patch-based inference may cost (fraction, default 0.3)",
    )
    sub = add_command(actions, "run", "run a generated C project on inputs", _cmd_run)
    sub.add_argument("folder", type=Path, help="a folder written by 'mobiledl mcu codegen'")
    given = sub.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", type=Path, help=".npy of float inputs (N, C, H, W)")
    given.add_argument("--task", help="built-in task or user data: its test split")
    sub.add_argument("--seed", type=seed_arg, default=0, help="seed of the task split (default 0)")
    sub.add_argument("--limit", type=positive_int_arg, help="run the first N inputs only")
    sub.add_argument("--target", choices=TARGETS, default="host", help="run on (default host)")


def _cmd_codegen(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy.mcu.codegen import (
        build,
        check_tools,
        generate_c,
        generate_patch_c,
        image_sizes,
        read_manifest,
    )
    from mobiledl.deploy.mcu.model_file import load_int8_graph
    from mobiledl.deploy.mcu.patch import search_patch
    from mobiledl.deploy.mcu.planner import plan_memory
    from mobiledl.errors import UserError

    check_tools(args.target)
    graph = load_int8_graph(args.model)
    in_place = not args.no_in_place
    if args.patch == "auto":
        patch = search_patch(graph, args.max_mac_overhead, in_place_depthwise=in_place)
        if patch is None:
            raise UserError(f"{args.model}: no split within +{args.max_mac_overhead:.0%} MACs "
                            "can run by patches (try --patch none)")  # fmt: skip
        project = generate_patch_c(graph, patch.split, patch.grid, args.out, in_place)
    else:
        project = generate_c(plan_memory(graph, in_place_depthwise=in_place), args.out)
    program = build(project.folder, args.target)
    sizes = image_sizes(project.folder / "model.map") if args.target != "host" else None
    manifest = read_manifest(project.folder)
    result = {
        "model": str(args.model),
        "folder": str(project.folder),
        "target": args.target,
        "program": str(program),
        "ops": len(graph.ops),
        "arena_bytes": project.arena_bytes,
        "in_place_depthwise_calls": manifest["in_place_depthwise_calls"],
        "patch": manifest["patch"],
        "frame_buffer_bytes": project.input_bytes if manifest["patch"] else 0,
        "constants_bytes": graph.flash_bytes,
        "image": vars(sizes) if sizes else None,
    }
    if args.json:
        return result
    _print_codegen(result)
    return None


def _print_codegen(result: dict[str, Any]) -> None:
    from mobiledl.deploy.mcu.budget import kb

    print(f"{result['folder']}: {result['ops']} int8 ops, built {result['program']}")
    print(
        f"arena (static, = the planner's peak): {kb(result['arena_bytes'])}; "
        f"{result['in_place_depthwise_calls']} in-place depthwise calls"
    )
    patch = result["patch"]
    if patch:
        grid = "x".join(map(str, patch["grid"]))
        print(
            f"patch-based: {grid} patches up to {patch['split_layer']}, then layer by layer; "
            f"the input frame ({kb(result['frame_buffer_bytes'])}) is a buffer of its own"
        )
    print(f"constants (weights, biases, multiplier tables): {kb(result['constants_bytes'])}")
    image = result["image"]
    if image:
        print(
            f"Cortex-M7 image (linker map): flash {kb(image['flash'])} (.text {kb(image['text'])}, "
            f".data {kb(image['data'])}); SRAM {kb(image['sram'])} (.bss {kb(image['bss'])}, "
            f"arena {kb(image['arena'])}; stack not counted)"
        )


def _cmd_run(args: argparse.Namespace) -> dict[str, Any] | None:
    import time

    import numpy as np

    from mobiledl.deploy.mcu.codegen import build, read_manifest, run_c
    from mobiledl.deploy.mcu.reference import quantize_codes

    manifest = read_manifest(args.folder)
    floats, labels = _run_inputs(args, tuple(manifest["input"]["shape"][1:]))
    grid = manifest["input"]
    codes = quantize_codes(floats, grid["scale"], grid["zero_point"])
    build(args.folder, args.target)
    dtype = np.dtype(manifest["output"]["dtype"]).type
    start = time.perf_counter()
    outputs = run_c(args.folder, codes, args.target, dtype)
    seconds = time.perf_counter() - start
    predictions = outputs.argmax(axis=1) if outputs.shape[1] > 1 else None
    result = {
        "folder": str(args.folder),
        "target": args.target,
        "inputs": len(codes),
        "seconds": round(seconds, 3),
        "accuracy": _accuracy(predictions, labels),
        "reference": _against_reference(manifest, codes, outputs),
    }
    if args.json:
        return result
    _print_run(result)
    return None


def _run_inputs(args: argparse.Namespace, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Float inputs (and labels with ``--task``) of the expected per-image ``shape``."""
    import numpy as np

    from mobiledl.errors import UserError

    if args.input is not None:
        try:
            floats, labels = np.load(args.input, allow_pickle=False), None
        except (OSError, ValueError) as error:
            raise UserError(f"{args.input}: not a .npy array ({error})") from None
        if floats.shape == shape:
            floats = floats[None]
    else:
        from mobiledl.data import build_task

        size = shape[1:] if len(shape) == 3 else None
        x, y = build_task(args.task, image_size=size, seed=args.seed).split("test")
        floats, labels = x.numpy(), y.numpy()
    if tuple(floats.shape[1:]) != shape:
        raise UserError(f"inputs of shape {tuple(floats.shape[1:])}; the model takes {shape}")
    if not np.isfinite(floats).all():
        raise UserError("the inputs hold NaN or infinite values")
    limit = args.limit or len(floats)
    return floats[:limit], None if labels is None else labels[:limit]


def _accuracy(predictions: Any, labels: Any) -> float | None:
    if predictions is None or labels is None:
        return None
    return float((predictions == labels).mean())


def _against_reference(manifest: dict[str, Any], codes: Any, outputs: Any) -> dict[str, Any]:
    """Whether the C outputs equal the integer reference's (when the source model is there)."""
    from mobiledl.deploy.mcu.model_file import load_int8_graph
    from mobiledl.deploy.mcu.reference import run

    source = Path(manifest.get("source") or "")
    if not manifest.get("source") or not source.exists():
        return {"checked": False, "reason": f"source model '{source}' not found"}
    graph = load_int8_graph(source)
    graph.rounding = manifest.get("rounding", graph.rounding)
    expected = run(graph, codes).reshape(len(codes), -1)
    differ = int((expected != outputs).any(axis=1).sum())
    return {"checked": True, "bit_exact": differ == 0, "inputs_that_differ": differ}


def _print_run(result: dict[str, Any]) -> None:
    where = f"{result['folder']} on {result['target']}"
    print(f"{where}: {result['inputs']} inputs in {result['seconds']} s")
    if result["accuracy"] is not None:
        print(f"top-1 accuracy: {result['accuracy']:.2%}")
    reference = result["reference"]
    if not reference["checked"]:
        print(f"integer reference: not checked ({reference['reason']})")
    elif reference["bit_exact"]:
        print("integer reference: bit-exact on every input")
    else:
        print(f"integer reference: DIFFERS on {reference['inputs_that_differ']} inputs")


def _cmd_plan(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy.mcu.budget import KB, check_fit
    from mobiledl.deploy.mcu.model_file import load_int8_graph
    from mobiledl.deploy.mcu.patch import search_patch
    from mobiledl.deploy.mcu.planner import plan_memory

    graph = load_int8_graph(args.model)
    layer_by_layer = plan_memory(graph, in_place_depthwise=False)
    plan = layer_by_layer if args.no_in_place else plan_memory(graph, in_place_depthwise=True)
    sram, flash = int(args.sram_kb * KB), int(args.flash_kb * KB)
    in_use = args.patch == "auto"
    patch = None
    if in_use or plan.arena_bytes > sram:
        patch = search_patch(graph, args.max_mac_overhead, in_place_depthwise=not args.no_in_place)
    without = None if args.no_in_place else layer_by_layer.arena_bytes
    fit = check_fit(plan, sram, flash, without, patch, in_use)
    result = _result(args.model, plan, layer_by_layer.arena_bytes, fit, patch if in_use else None)
    if args.json:
        return result
    _print(result, args.layers)
    return None


def _result(model: Path, plan: Any, layer_by_layer: int, fit: Any, patch: Any) -> dict[str, Any]:
    peak = plan.peak_step
    return {
        "model": str(model),
        "ops": len(plan.graph.ops),
        "peak_memory_bytes": patch.peak_bytes if patch is not None else plan.arena_bytes,
        "arena_bytes": plan.arena_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "layer_by_layer_bytes": layer_by_layer,
        "in_place_depthwise_ops": len(plan.in_place),
        "flash_bytes": plan.flash_bytes,
        "code_bytes": None,
        "sram_budget_bytes": fit.sram_bytes,
        "flash_budget_bytes": fit.flash_bytes,
        "fits_sram": fit.fits_sram,
        "fits_flash": fit.fits_flash,
        "fits": fit.fits,
        "placement": plan.placement,
        "order": plan.order,
        "patch": _patch(plan.graph, patch),
        "peak": {
            "step": peak.step,
            "layer": peak.layer,
            "kind": peak.kind,
            "live": [vars(t) for t in peak.live],
        },
        "layers": [
            {"step": s.step, "layer": s.layer, "kind": s.kind, "live_bytes": s.live_bytes}
            for s in plan.steps
        ],
        "advice": fit.advice,
    }


def _patch(graph: Any, patch: Any) -> dict[str, Any] | None:
    """The patch-based plan in use (``--patch auto``), or None."""
    if patch is None:
        return None
    return {
        "split": patch.split,
        "split_layer": graph.ops[patch.split - 1].layer,
        "grid": list(patch.grid),
        "peak_bytes": patch.peak_bytes,
        "patch_stage_bytes": patch.patch_stage_bytes,
        "rest_stage_bytes": patch.rest_stage_bytes,
        "macs": patch.macs,
        "layer_by_layer_macs": patch.layer_by_layer_macs,
        "mac_overhead": patch.mac_overhead,
    }


def _print(result: dict[str, Any], layers: bool) -> None:
    from mobiledl.deploy.mcu.budget import kb

    def verdict(ok: bool) -> str:
        return "fits" if ok else "DOES NOT FIT"

    print(f"{result['model']}: {result['ops']} int8 ops")
    print(
        f"peak SRAM (arena): {kb(result['arena_bytes'])}  (lower bound "
        f"{kb(result['lower_bound_bytes'])}; {result['placement']}; "
        f"{result['in_place_depthwise_ops']} depthwise convs in place)"
    )
    print(f"  layer by layer without in-place depthwise: {kb(result['layer_by_layer_bytes'])}")
    patch = result["patch"]
    if patch is not None:
        print(
            f"patch-based: {patch['grid'][0]}x{patch['grid'][1]} patches up to "
            f"{patch['split_layer']}: peak {kb(patch['peak_bytes'])} (patches "
            f"{kb(patch['patch_stage_bytes'])}, then layer by layer "
            f"{kb(patch['rest_stage_bytes'])}), +{patch['mac_overhead']:.0%} MACs"
        )
    print(f"  budget {kb(result['sram_budget_bytes'])}: {verdict(result['fits_sram'])}")
    print(
        f"flash: {kb(result['flash_bytes'])} (weights, biases, multiplier tables; code not "
        f"included)  budget {kb(result['flash_budget_bytes'])}: {verdict(result['fits_flash'])}"
    )
    peak = result["peak"]
    print(f"layer-by-layer peak at step {peak['step']}: {peak['layer']} ({peak['kind']})")
    for tensor in peak["live"]:
        print(f"  {tensor['name']:>16}  {kb(tensor['bytes']):>10}  from {tensor['producer']}")
    if layers:
        for step in result["layers"]:
            live = kb(step["live_bytes"])
            print(f"  {step['step']:>4}  {live:>10}  {step['kind']:<14} {step['layer']}")
    for line in result["advice"]:
        print(f"to fit: {line}")
