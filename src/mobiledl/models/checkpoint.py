"""Model files: everything needed to rebuild a (possibly pruned) zoo model, no code inside.

A file (format 2, ``mobiledl.models.packed``) is a JSON header and the tensors' bytes, each
tensor in its smallest exact encoding, so loading never executes code from the file;
version-1 files (a plain dict written with ``torch.save``) are read with
``torch.load(weights_only=True)``. A frozen file (:func:`freeze`) holds low-bit layers baked
into plain ones, whose few distinct values the packed format stores at their bit width.
The architecture is rebuilt from the registry (``model.mobiledl_arch``); layers whose
stored weights have other shapes than the fresh build (channel-pruned layers) are
replaced by layers of the stored shapes; then the structural transforms listed in
``arch["transforms"]`` (e.g. wrapping layers with fake-quantizers) are re-applied in
order through ``register_transform``, and finally the weights are loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiledl.core.clone import clone_module
from mobiledl.core.methods import config_from_dict, load_plugins
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path
from mobiledl.models.packed import Grid, is_packed_file, read_packed, write_packed
from mobiledl.models.quantized import quant_layers
from mobiledl.models.record import check_archive, check_payload, check_rebuild_size
from mobiledl.models.registry import create_model
from mobiledl.validate import expect_path

FORMAT = "mobiledl-model"
#: 2: the packed format (models/packed.py); version-1 files (``torch.save`` archives) still load.
VERSION = 2
#: Record keys that are not constructor arguments of the zoo model.
RECORD_KEYS = ("transforms", "display_name", "history")

Transform = Callable[[nn.Module, dict[str, Any]], nn.Module]
_TRANSFORMS: dict[str, Transform] = {}
_FREEZERS: dict[str, Transform] = {}


def register_transform(kind: str) -> Callable[[Transform], Transform]:
    """Register ``fn(model, config) -> model`` to re-apply a structural change on load.

    A method that changes a model's structure (other than channel counts) appends
    ``{"kind": kind, "config": {...JSON-like...}}`` to ``model.mobiledl_arch["transforms"]``
    (see ``record_transform``) so ``load_model`` can rebuild the model without user code.
    """

    def add(fn: Transform) -> Transform:
        _TRANSFORMS[kind] = fn
        return fn

    return add


def register_freeze(kind: str) -> Callable[[Transform], Transform]:
    """Register ``fn(model, config) -> model`` that bakes transform ``kind`` into plain layers
    for a frozen file (``save_model(..., frozen=True)``): e.g. binary weights become the
    ``±alpha`` values their parametrization computes, which the packed format then stores
    at one bit each. The frozen model computes the same outputs but trains no further as
    the method would (its latent weights, or its codebook, are gone)."""

    def add(fn: Transform) -> Transform:
        _FREEZERS[kind] = fn
        return fn

    return add


def freeze(model: nn.Module) -> nn.Module:
    """``model`` (a copy when anything changes) with its trailing freezable transforms baked
    in and dropped from its record, and the latent weights of linearly quantized layers
    replaced by the grid values they round to; ``model`` itself when it has neither."""
    arch = getattr(model, "mobiledl_arch", None) or {}
    transforms = list(arch.get("transforms", []))
    cut = len(transforms)
    while cut and transforms[cut - 1].get("kind") in _FREEZERS:
        cut -= 1
    gridded = any(layer.weight_grid() is not None for layer in quant_layers(model).values())
    if cut == len(transforms) and not gridded:
        return model
    frozen = clone_module(model)
    for transform in transforms[cut:]:
        frozen = _FREEZERS[transform["kind"]](frozen, transform.get("config", {}))
    for layer in quant_layers(frozen).values():
        layer.snap_weight()
    frozen.mobiledl_arch = {**arch, "transforms": transforms[:cut]}
    return frozen


def weight_grids(model: nn.Module) -> dict[str, Grid]:
    """The grid each linearly quantized weight of ``model`` is rounded onto, by state-dict key
    (what the packed format's ``grid`` encoding stores a frozen weight on)."""
    grids = {f"{name}.weight": layer.weight_grid() for name, layer in quant_layers(model).items()}
    return {key: grid for key, grid in grids.items() if grid is not None}


def record_transform(model: nn.Module, kind: str, config: dict[str, Any]) -> None:
    """Append a transform to the model's architecture record (copying the record)."""
    arch = dict(getattr(model, "mobiledl_arch", None) or {})
    if not arch:
        raise UserError(f"cannot record transform '{kind}': model was not built by create_model")
    arch["transforms"] = [*arch.get("transforms", []), {"kind": kind, "config": config}]
    model.mobiledl_arch = arch


@dataclass
class LoadedModel:
    """A model rebuilt from a file, with the metadata saved beside it."""

    model: nn.Module
    arch: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What to call the model in results: the record's ``display_name`` (a searched NAS
        sub-network, whose registry ``name`` is only the base its rebuild starts from), else
        the zoo name."""
        return str(self.arch.get("display_name", self.arch["name"]))


def save_model(
    path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None, frozen: bool = False
) -> Path:
    """Write ``model`` (built by ``create_model``) and JSON-like ``meta`` to ``path``.

    Every tensor is stored in the smallest exact form (``mobiledl.models.packed``). With
    ``frozen``, low-bit transforms are first baked in (:func:`freeze`), so binary, ternary
    and k-means weights are stored at their bit width instead of as latent fp32 weights.
    """
    data = model_file_bytes(model, meta, frozen)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def model_file_bytes(
    model: nn.Module, meta: dict[str, Any] | None = None, frozen: bool = False
) -> bytes:
    """The bytes :func:`save_model` writes for ``model`` (e.g. to compare file sizes)."""
    if getattr(model, "mobiledl_arch", None) is None:
        raise UserError(
            f"cannot save {type(model).__name__}: it was not built by mobiledl.create_model, "
            "so the file could not rebuild it"
        )
    if frozen:
        model = freeze(model)
    record = {"format": FORMAT, "version": VERSION, "arch": model.mobiledl_arch, "meta": meta or {}}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_packed(record, state, weight_grids(model) if frozen else None)


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the model stored at ``path`` in eval mode."""
    path = expect_path(path, "model file")
    payload = _read_payload(path)
    stored = check_payload(payload, path)
    arch, state = payload["arch"], payload["state_dict"]
    _check_history(arch.get("history", []), path)
    check_rebuild_size(lambda: _build(arch, state, path), stored, path)
    model = _build(arch, state, path)
    model.mobiledl_arch = arch
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1].strip()
        raise UserError(
            f"{path}: weights do not fit architecture '{arch['name']}': {first_line}"
        ) from None
    model.eval()
    return LoadedModel(model=model, arch=arch, meta=payload.get("meta", {}))


def _build(arch: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """The record's zoo model, resized to the stored shapes, with its transforms re-applied."""
    base = {k: v for k, v in arch.items() if k not in RECORD_KEYS}
    try:
        model = create_model(**base)
    except TypeError as exc:
        raise UserError(f"{path}: architecture record is invalid ({exc})") from exc
    resize_to_state_dict(model, state)
    return _apply_transforms(model, arch.get("transforms", []), path)


def _check_history(history: Any, path: Path) -> None:
    """Every method config the file records must be one this mobiledl can read."""
    if not isinstance(history, list):
        raise UserError(f"{path}: the record's history must be a list of method configs")
    for index, entry in enumerate(history):
        config_from_dict(entry, f"{path}: history[{index}]")


def _apply_transforms(model: nn.Module, transforms: list[dict[str, Any]], path: Path) -> nn.Module:
    if transforms:
        load_plugins()
    for transform in transforms:
        kind = transform.get("kind")
        if kind not in _TRANSFORMS:
            raise UserError(f"{path}: unknown model transform '{kind}'")
        model = _TRANSFORMS[kind](model, transform.get("config", {}))
    return model


def read_model_record(path: str | Path) -> dict[str, Any]:
    """The checked record of a model file, either format: ``format``, ``version``, ``arch``,
    ``meta`` and ``state_dict`` (the stored tensors, decoded)."""
    return _read_payload(expect_path(path, "model file"))


def _read_payload(path: Path) -> dict[str, Any]:
    """The checked dict inside a model file; a ``UserError`` naming the file otherwise."""
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if is_packed_file(path):
        record, state = read_packed(path)
        payload: Any = {**record, "state_dict": state}
    else:
        payload = _read_archive(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a mobiledl model file (no '{FORMAT}' header)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{path} was written by a newer mobiledl (format {version!r:.20})")
    for key in ("arch", "state_dict"):
        if key not in payload:
            raise UserError(f"{path}: model file lacks '{key}'")
    return payload


def _read_archive(path: Path) -> Any:
    """The payload of a version-1 file (a ``torch.save`` archive)."""
    check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt bytes surface as many exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable mobiledl model file ({reason[:120]})") from exc


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace convolutions, linears and batch norms whose stored shapes differ.

    Used to rebuild channel-pruned models: the registry builds the full architecture
    and each layer then takes the shape its saved weight has.
    """
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None:
            continue
        if tuple(weight.shape) == tuple(module.weight.shape):
            continue
        replacement = _layer_of_shape(module, weight, state.get(f"{name}.bias") is not None)
        if replacement is None:
            raise UserError(f"layer '{name}' ({type(module).__name__}) cannot be resized")
        _set_submodule(model, name, replacement)
    _resize_folded_norms(model, state)


_NORMS = (nn.BatchNorm2d, nn.BatchNorm1d)


def _resize_folded_norms(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give each batch norm with no stored tensors the width of the layer before it.

    Quantization folds batch norms into the preceding convolution, so the file of a
    channel-pruned, quantized model holds no batch-norm tensors; the rebuilt norms must
    still match their (resized) convolution for the fold to be re-applied.
    """
    previous: nn.Module | None = None
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d | nn.Linear):
            previous = module
            continue
        if not isinstance(module, _NORMS) or previous is None:
            continue
        if any(key.startswith(f"{name}.") for key in state):
            continue
        width = previous.out_channels if isinstance(previous, nn.Conv2d) else previous.out_features
        if module.num_features != width:
            _set_submodule(model, name, type(module)(width, module.eps, module.momentum))


def _layer_of_shape(module: nn.Module, weight: torch.Tensor, bias: bool) -> nn.Module | None:
    """A fresh layer like ``module`` whose weight has ``weight``'s shape."""
    if isinstance(module, nn.Conv2d):
        out_channels, in_per_group = weight.shape[:2]
        depthwise = module.groups > 1 and module.groups == module.in_channels
        groups = out_channels if depthwise else module.groups
        return nn.Conv2d(
            in_per_group * groups,
            out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups,
            bias,
        )
    if isinstance(module, nn.Linear):
        return nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        return type(module)(weight.shape[0], eps=module.eps, momentum=module.momentum)
    return None


def _set_submodule(model: nn.Module, name: str, replacement: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, replacement)
