"""Deployment (Cai et al. 2022, Sec. 6 "system design"): engines that run exported models.

``get_engine("onnxruntime")`` exports an ``nn.Module`` to an artifact, loads it as a
``Runner`` and times it; ``interleaved_benchmark`` compares several candidates fairly.
"""

from mobiledl.deploy.engine import (
    DEFAULT_ENGINE,
    Engine,
    Runner,
    eager_output,
    get_engine,
    list_engines,
    register_engine,
)
from mobiledl.deploy.onnxruntime import OnnxRuntimeEngine, OrtRunner, parity_check
from mobiledl.deploy.timing import CLOCKS, LatencyStats, clock_for, interleaved_benchmark

__all__ = [
    "CLOCKS",
    "DEFAULT_ENGINE",
    "Engine",
    "LatencyStats",
    "OnnxRuntimeEngine",
    "OrtRunner",
    "Runner",
    "clock_for",
    "eager_output",
    "get_engine",
    "interleaved_benchmark",
    "list_engines",
    "parity_check",
    "register_engine",
]
