"""``mobiledl mcu plan MODEL --sram-kb 256 --flash-kb 1024 [--patch none] [--no-in-place]
[--layers] [--json]``: plan an int8 model's static SRAM arena for a microcontroller
(``mobiledl.deploy.mcu``; MCUNet/TinyEngine, Lin et al. 2020) and say whether it fits.

MODEL is an int8 ``.onnx`` export (``mobiledl quantize ... --onnx q.onnx``) or a quantized
mobiledl ``.pt``; a float model is refused with one line saying how to quantize it (the
planner does not pick calibration data). The plan prints the peak SRAM (the arena), its lower
bound, the layer-by-layer peak without in-place depthwise, the flash (weights, biases and
multiplier tables; code size not included), whether both fit, and if not which tensors are
live at the peak and what would make it fit. ``--patch auto`` (patch-based inference,
MCUNetV2) is not implemented yet. kB are 1024 bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mobiledl.cli.support import add_command
from mobiledl.errors import UserError
from mobiledl.validate import positive_number_arg


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
        "--no-in-place", action="store_true", help="plan without in-place depthwise convs"
    )
    sub.add_argument("--layers", action="store_true", help="print the live bytes of every step")


def _cmd_plan(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.deploy.mcu.budget import KB, check_fit
    from mobiledl.deploy.mcu.model_file import load_int8_graph
    from mobiledl.deploy.mcu.planner import plan_memory

    if args.patch == "auto":
        raise UserError("--patch auto: patch-based inference is not implemented yet; use none")
    graph = load_int8_graph(args.model)
    layer_by_layer = plan_memory(graph, in_place_depthwise=False)
    plan = layer_by_layer if args.no_in_place else plan_memory(graph, in_place_depthwise=True)
    sram, flash = int(args.sram_kb * KB), int(args.flash_kb * KB)
    fit = check_fit(plan, sram, flash, None if args.no_in_place else layer_by_layer.arena_bytes)
    result = _result(args.model, plan, layer_by_layer.arena_bytes, fit)
    if args.json:
        return result
    _print(result, args.layers)
    return None


def _result(model: Path, plan: Any, layer_by_layer: int, fit: Any) -> dict[str, Any]:
    peak = plan.peak_step
    return {
        "model": str(model),
        "ops": len(plan.graph.ops),
        "peak_memory_bytes": plan.arena_bytes,
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
        "patch": "none",
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
    print(f"  budget {kb(result['sram_budget_bytes'])}: {verdict(result['fits_sram'])}")
    print(
        f"flash: {kb(result['flash_bytes'])} (weights, biases, multiplier tables; code not "
        f"included)  budget {kb(result['flash_budget_bytes'])}: {verdict(result['fits_flash'])}"
    )
    peak = result["peak"]
    print(f"peak at step {peak['step']}: {peak['layer']} ({peak['kind']})")
    for tensor in peak["live"]:
        print(f"  {tensor['name']:>16}  {kb(tensor['bytes']):>10}  from {tensor['producer']}")
    if layers:
        for step in result["layers"]:
            live = kb(step["live_bytes"])
            print(f"  {step['step']:>4}  {live:>10}  {step['kind']:<14} {step['layer']}")
    for line in result["advice"]:
        print(f"to fit: {line}")
