"""Microcontroller deployment (Cai et al. 2022, Sec. 6; MCUNet/TinyEngine, Lin et al. 2020):
an int8 model from our quantizer, read into an integer IR (``graph``), executed with integer
arithmetic only (``reference``, Jacob et al. 2018) and planned into a static SRAM arena
(``planner``, with TinyEngine's in-place depthwise), so it fits in a few hundred kB.

    from mobiledl.deploy.mcu import plan_memory, read_graph
    graph = read_graph("model.int8.onnx")
    plan = plan_memory(graph, in_place_depthwise=True)
"""

from mobiledl.deploy.mcu.arena import ArenaExecutor, run_planned
from mobiledl.deploy.mcu.graph import Graph, Op, Tensor, read_graph
from mobiledl.deploy.mcu.planner import MemoryPlan, plan_memory
from mobiledl.deploy.mcu.reference import dequantize, quantize_input, run

__all__ = [
    "ArenaExecutor",
    "Graph",
    "MemoryPlan",
    "Op",
    "Tensor",
    "dequantize",
    "plan_memory",
    "quantize_input",
    "read_graph",
    "run",
    "run_planned",
]
