"""Compact model zoo (Cai et al. 2022, Sec. 2.5 "compact model design") and building blocks.

Image classifiers take ``in_channels`` and ``image_size``; sequence classifiers (``seq_cnn``,
``tiny_transformer``) take token ids and ``vocab_size`` / ``seq_len``. ``create_model_for_task``
picks the right arguments for a task; ``input_specs`` reads a model's inputs from its record.
"""

from mobiledl.models.checkpoint import (
    LoadedModel,
    load_model,
    read_model_record,
    record_transform,
    register_transform,
    save_model,
)
from mobiledl.models.registry import (
    ModelInfo,
    create_model,
    create_model_for_task,
    example_input_for,
    input_specs,
    list_models,
    model_info,
    model_input_kind,
    model_input_specs,
)

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "create_model",
    "create_model_for_task",
    "example_input_for",
    "input_specs",
    "list_models",
    "load_model",
    "model_info",
    "model_input_kind",
    "model_input_specs",
    "read_model_record",
    "record_transform",
    "register_transform",
    "save_model",
]
