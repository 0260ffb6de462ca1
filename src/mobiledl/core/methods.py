"""The registry of methods and ``apply``, the one entry point that applies any of them.

``apply(model, config, task=None)`` looks up the handler registered for ``type(config)``,
runs it on a deep copy of ``model`` (the input is never mutated) and returns the new module,
which still runs in plain PyTorch. What the method measured or decided (the MAC ratio it
reached, the observer it chose, the layers it skipped) is its report: ``report_of(result)``.
Methods compose by chaining calls: prune -> distill -> quantize -> export.

A package adds a method with ``@register_method(ConfigClass)`` on a handler
``fn(model, config, task) -> (model, report_dict)``; the handler may change the copy it is
given in place. A method written for some kinds of input only (most compression methods
assume images) says so with ``inputs=(IMAGE,)``; ``apply`` then refuses a model or task of
another kind with a one-line ``UserError`` instead of failing somewhere inside. Packages
are found through the ``mobiledl.methods`` entry point group (see ``pyproject.toml``), so a
user's package can add methods of its own the same way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mobiledl.core.clone import clone_module
from mobiledl.core.config import MethodConfig
from mobiledl.core.inputs import kind_label
from mobiledl.errors import UserError
from mobiledl.validate import expect_task

Handler = Callable[[nn.Module, Any, Any], tuple[nn.Module, dict[str, Any]]]
ENTRY_POINT_GROUP = "mobiledl.methods"


@dataclass(frozen=True)
class Method:
    """One registered method: its name, config class, handler, whether it needs data, and
    the kinds of input it handles (``None``: any)."""

    name: str
    config_type: type[MethodConfig]
    handler: Handler
    needs_task: bool
    summary: str
    inputs: tuple[str, ...] | None = None


@dataclass
class MethodReport:
    """What one ``apply`` did: the method, its config as data, and the method's findings."""

    method: str
    config: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "config": self.config, **self.values}


_BY_NAME: dict[str, Method] = {}
_BY_TYPE: dict[type, Method] = {}
_loaded = False


def register_method(
    config_type: type[MethodConfig],
    *,
    needs_task: bool = True,
    summary: str = "",
    inputs: tuple[str, ...] | None = None,
) -> Callable[[Handler], Handler]:
    """Register ``handler(model, config, task) -> (model, report)`` for ``config_type``.

    ``config_type.method`` is the method's name (unique); ``needs_task``: ``apply`` refuses
    to run without a task. ``summary`` (default: the first sentence of the config's docstring)
    is what ``list_methods`` shows. ``inputs``: the kinds of input the method handles
    (``("image",)``); ``None`` for any.
    """
    name = config_type.method
    if not name:
        raise ValueError(f"{config_type.__name__} has no 'method' name")
    if name in _BY_NAME and _BY_NAME[name].config_type is not config_type:
        raise ValueError(f"method '{name}' is already registered")

    def add(handler: Handler) -> Handler:
        text = summary or _first_sentence(config_type.__doc__ or "")
        method = Method(name, config_type, handler, needs_task, text, inputs)
        _BY_NAME[name] = method
        _BY_TYPE[config_type] = method
        return handler

    return add


def _first_sentence(doc: str) -> str:
    """The docstring's first sentence, on one line."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = re.search(r"(?<!et al)(?<!e\.g)(?<!i\.e)(?<!Sec)\.(\s|$)", paragraph)
    return paragraph if end is None else paragraph[: end.start() + 1]


def load_plugins() -> None:
    """Import every package registered under the ``mobiledl.methods`` entry point group.

    Their import registers their methods and model-file transforms. Only the named modules
    are imported; nothing from a model file or recipe decides what is imported.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(entry.value.split(":")[0])


def list_methods() -> list[Method]:
    """Every registered method, sorted by name."""
    load_plugins()
    return [_BY_NAME[name] for name in sorted(_BY_NAME)]


def get_method(name: str) -> Method:
    """The method called ``name``; ``UserError`` listing the choices if unknown."""
    load_plugins()
    if name not in _BY_NAME:
        raise UserError(f"unknown method '{name}'; available: {', '.join(sorted(_BY_NAME))}")
    return _BY_NAME[name]


def method_of(config: Any) -> Method:
    """The method a config object belongs to."""
    load_plugins()
    method = _BY_TYPE.get(type(config))
    if method is None:
        raise UserError(
            f"{type(config).__name__} is not the config of a registered method; "
            f"methods: {', '.join(sorted(_BY_NAME))}"
        )
    return method


def config_from_dict(data: Any, where: str = "config") -> MethodConfig:
    """The config a ``MethodConfig.to_dict`` came from.

    An unknown method, or data written by a newer version of the method than this mobiledl
    reads, is a ``UserError`` naming ``where``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise UserError(f"{where}: a method config is a mapping with 'method' and 'config'")
    load_plugins()
    method = _BY_NAME.get(data["method"])
    if method is None:
        raise UserError(f"{where}: unknown method '{data['method']}'")
    version = data.get("version", 1)
    known = method.config_type.version
    if not isinstance(version, int) or version > known:
        raise UserError(
            f"{where}: method '{method.name}' config version {version!r} is newer than this "
            f"mobiledl reads (version {known}); upgrade mobiledl"
        )
    return method.config_type.from_fields(data.get("config", {}), f"{where} ({method.name})")


def apply(model: nn.Module, config: MethodConfig, task: Any = None) -> nn.Module:
    """Apply the method ``config`` belongs to; return a new module (``model`` is unchanged).

    ``task`` supplies data for methods that calibrate, search or fine-tune; a method that
    needs one raises ``UserError`` without it. ``report_of(result)`` has the method's report.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"apply needs an nn.Module; got {type(model).__name__}")
    if not isinstance(config, MethodConfig):
        raise UserError(f"apply needs a method config; got {type(config).__name__}")
    method = method_of(config)
    if method.needs_task and task is None:
        raise UserError(f"method '{method.name}' needs a task (data to calibrate or train on)")
    if task is not None:
        expect_task(task, f"apply {method.name}")
    check_input_kind(config, model, task)
    config = config.resolved(model)
    working = clone_module(model)
    result, values = method.handler(working, config, task)
    report = MethodReport(method.name, config.fields_dict(), dict(values))
    _record_history(result, config)
    result.mobiledl_report = report
    return result


def check_input_kind(config: MethodConfig, model: nn.Module, task: Any = None) -> None:
    """``UserError`` if the model and task disagree on their kind of input, or the method of
    ``config`` does not handle it (``apply`` checks this first; a command that works on the
    model before ``apply`` can check it earlier). A model's kind comes from its zoo record,
    else from the task."""
    from mobiledl.models.registry import model_input_kind  # models build on core

    method = method_of(config)
    model_kind = model_input_kind(model)
    task_kind = getattr(task, "input_kind", None)
    if model_kind and task_kind and model_kind != task_kind:
        raise UserError(
            f"the model takes {kind_label(model_kind)} but task '{task.name}' gives "
            f"{kind_label(task_kind)}"
        )
    kind = model_kind or task_kind
    if method.inputs is not None and kind is not None and kind not in method.inputs:
        handled = " or ".join(kind_label(k) for k in method.inputs)
        raise UserError(
            f"method '{method.name}' handles {handled}; this model takes {kind_label(kind)}"
        )


def report_of(model: nn.Module) -> MethodReport | None:
    """The report of the ``apply`` that produced ``model`` (``None`` if none did)."""
    report = getattr(model, "mobiledl_report", None)
    return report if isinstance(report, MethodReport) else None


def _record_history(model: nn.Module, config: MethodConfig) -> None:
    """Append the config to the model record's history (zoo models carry a record)."""
    arch = getattr(model, "mobiledl_arch", None)
    if not arch:
        return
    model.mobiledl_arch = {**arch, "history": [*arch.get("history", []), config.to_dict()]}
