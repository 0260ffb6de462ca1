"""Microcontroller deployment (Cai et al. 2022, Sec. 6; MCUNet/TinyEngine, Lin et al. 2020;
MCUNetV2, Lin et al. 2021): an int8 model from our quantizer, read into an integer IR
(``graph``), executed with integer arithmetic only (``reference``, Jacob et al. 2018), planned
into one static SRAM arena (``planner``, with TinyEngine's in-place depthwise) and run in it
(``arena``), or run patch by patch for its first stages (``patch``), so it fits in a few
hundred kB. ``budget`` checks a plan against SRAM and flash; ``mobiledl mcu plan`` prints it.

    from mobiledl.deploy.mcu import plan_memory, read_graph
    graph = read_graph("model.int8.onnx")
    plan = plan_memory(graph, in_place_depthwise=True)
    print(plan.arena_bytes, plan.flash_bytes, plan.peak_step.layer)
"""

from mobiledl.deploy.mcu.arena import ArenaExecutor, run_planned
from mobiledl.deploy.mcu.graph import Graph, Op, Tensor, read_graph
from mobiledl.deploy.mcu.patch import PatchMemory, patch_memory, run_patch_based, search_patch
from mobiledl.deploy.mcu.planner import MemoryPlan, plan_memory
from mobiledl.deploy.mcu.reference import dequantize, quantize_input, run

__all__ = [
    "ArenaExecutor",
    "Graph",
    "MemoryPlan",
    "Op",
    "PatchMemory",
    "Tensor",
    "dequantize",
    "patch_memory",
    "plan_memory",
    "quantize_input",
    "read_graph",
    "run",
    "run_patch_based",
    "run_planned",
    "search_patch",
]
