"""Deployment (Cai et al. 2022, Sec. 6 "system design"): engines that run exported models.

``get_engine(name)`` (``None``: the default engine) exports an ``nn.Module`` to an artifact,
loads it as a ``Runner`` and times it; ``engine_for_artifact(path)`` finds the
engine of a file; ``interleaved_benchmark`` compares several candidates fairly.
"""

from mobiledl.deploy.engine import (
    DEFAULT_ENGINE,
    Engine,
    Runner,
    artifact_suffixes,
    eager_output,
    engine_for_artifact,
    get_engine,
    list_engines,
    register_engine,
)
from mobiledl.deploy.onnxruntime import OnnxRuntimeEngine, OrtRunner, parity_check
from mobiledl.deploy.streaming import FrameStream
from mobiledl.deploy.timing import CLOCKS, LatencyStats, clock_for, interleaved_benchmark

__all__ = [
    "CLOCKS",
    "DEFAULT_ENGINE",
    "Engine",
    "FrameStream",
    "LatencyStats",
    "OnnxRuntimeEngine",
    "OrtRunner",
    "Runner",
    "artifact_suffixes",
    "clock_for",
    "eager_output",
    "engine_for_artifact",
    "get_engine",
    "interleaved_benchmark",
    "list_engines",
    "parity_check",
    "register_engine",
]
