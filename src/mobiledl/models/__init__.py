"""Compact model zoo (Cai et al. 2022, Sec. 2.5 "compact model design") and building blocks."""

from mobiledl.models.checkpoint import (
    LoadedModel,
    load_model,
    record_transform,
    register_transform,
    save_model,
)
from mobiledl.models.registry import ModelInfo, create_model, list_models, model_info

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "create_model",
    "list_models",
    "load_model",
    "model_info",
    "record_transform",
    "register_transform",
    "save_model",
]
