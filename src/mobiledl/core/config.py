"""``MethodConfig``: the typed, frozen, versioned description of one application of a method.

Every method (a pruning granularity, PTQ, QAT, k-means, factorization, TinyTL, ...) is driven
by one config class, as torchao drives quantization with ``Int8Config``-style objects. A config

- checks its field types and values when it is built (a ``UserError`` naming the class and the
  field, never a raw ``TypeError`` deep inside a method);
- is frozen, so a config shared by two calls cannot change between them;
- round-trips through plain JSON data with its method name and version (``to_dict`` /
  ``config_from_dict``), which is what model files and recipe runs record; reading data of a
  newer version than this mobiledl knows is a clear error;
- may carry per-layer ``overrides`` (``LayerRule``: a module name, a glob or a predicate, and
  the settings that differ for the layers it matches), where the method has per-layer
  settings (``layer_fields``).

CLI flags (``mobiledl.cli.args``) and recipe fields (``mobiledl.pipeline.recipe``) are derived
from the same classes, so the three never drift apart.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union

from torch import nn

from mobiledl.errors import UserError
from mobiledl.validate import check_config_numbers

C = TypeVar("C", bound="MethodConfig")
Predicate = Callable[[str, nn.Module], bool]

#: The setting every ``LayerRule`` may use: leave the matched layers untouched.
SKIP = "skip"
#: A ``LayerRule`` match of this prefix selects layers by class name (``"type:Linear"``).
TYPE_PREFIX = "type:"


@dataclass(frozen=True)
class LayerRule:
    """Per-layer settings for the layers ``match`` selects.

    ``match`` is a module name, an ``fnmatch`` glob (``"features.*"``), ``"type:Linear"`` (the
    layers of that class), a tuple of names, or a predicate ``fn(name, module) -> bool``.
    ``settings`` maps fields of the method's config to the values these layers take instead
    (``{"weight_bits": 4}``); ``{"skip": True}`` leaves them untouched. Later rules win over
    earlier ones.
    """

    match: str | tuple[str, ...] | Predicate
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.match, list):
            object.__setattr__(self, "match", tuple(self.match))
        if not (isinstance(self.match, str | tuple) or callable(self.match)):
            raise UserError(
                f"layer rule match must be a name, a glob, a list of names or a function; "
                f"got {type(self.match).__name__}"
            )
        if not isinstance(self.settings, Mapping) or not self.settings:
            raise UserError(f"layer rule for {self.describe()} sets nothing")
        object.__setattr__(self, "settings", dict(self.settings))

    def matches(self, name: str, module: nn.Module | None = None) -> bool:
        """True if the layer called ``name`` is one this rule selects."""
        if isinstance(self.match, str) and self.match.startswith(TYPE_PREFIX):
            wanted = self.match.removeprefix(TYPE_PREFIX)
            return module is not None and type(module).__name__ == wanted
        if isinstance(self.match, str):
            return fnmatch.fnmatchcase(name, self.match)
        if isinstance(self.match, tuple):
            return name in self.match
        return bool(self.match(name, module))

    def describe(self) -> str:
        if isinstance(self.match, str | tuple):
            return repr(self.match)
        return getattr(self.match, "__name__", "a predicate")

    def resolved(self, names: list[str], modules: Mapping[str, nn.Module]) -> LayerRule:
        """This rule with a predicate replaced by the names it selects (so it serializes)."""
        if not callable(self.match):
            return self
        chosen = tuple(n for n in names if self.matches(n, modules.get(n)))
        return LayerRule(chosen, self.settings)

    def to_dict(self) -> dict[str, Any]:
        if callable(self.match):
            raise UserError(
                f"layer rule {self.describe()} selects layers with a function, which cannot be "
                "saved; resolve it against the model first (MethodConfig.resolved)"
            )
        match = list(self.match) if isinstance(self.match, tuple) else self.match
        return {"match": match, **self.settings}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> LayerRule:
        if isinstance(data, LayerRule):
            return data
        if not isinstance(data, Mapping) or "match" not in data:
            raise UserError(f"{where}: a layer rule is a mapping with 'match' and settings")
        settings = {k: v for k, v in data.items() if k != "match"}
        return cls(data["match"], settings)


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method's config (see the module docstring).

    Subclasses are ``@dataclass(frozen=True, kw_only=True)`` and set ``method`` (the registry
    name, e.g. ``"ptq"``) and ``version`` (bumped when a field changes meaning). Their
    docstring lists fields as ``- ``name``: help`` bullets, which become the ``--help`` of the
    derived CLI flags. ``__post_init__`` type-checks every field; subclasses that check values
    call ``super().__post_init__()`` first.
    """

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1
    #: Fields a ``LayerRule`` may set for some layers (empty: no per-layer settings).
    layer_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether a ``LayerRule`` may leave layers untouched (``{"skip": True}``).
    can_skip: ClassVar[bool] = True

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            value = _normalized(getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            check_type(value, hints[f.name], f"{type(self).__name__}.{f.name}")
        check_config_numbers(self)
        for rule in getattr(self, "overrides", ()):
            self._check_rule(rule)

    # ------------------------------------------------------------------ per-layer settings

    def _check_rule(self, rule: LayerRule) -> None:
        hints = field_types(type(self))
        allowed = (*self.layer_fields, SKIP) if self.can_skip else self.layer_fields
        for key, value in rule.settings.items():
            where = f"{type(self).__name__}.overrides[{rule.describe()}].{key}"
            if key not in allowed:
                raise UserError(
                    f"{where}: not a per-layer setting; choose from {', '.join(allowed)}"
                )
            check_type(value, bool if key == SKIP else hints[key], where)
        dataclasses.replace(self, overrides=(), **_field_settings(rule))  # values are valid

    def for_layer(self: C, name: str, module: nn.Module | None = None) -> C | None:
        """This config as it applies to the layer ``name``: ``None`` if a rule skips it."""
        changes: dict[str, Any] = {}
        skip = False
        for rule in getattr(self, "overrides", ()):
            if rule.matches(name, module):
                skip = bool(rule.settings.get(SKIP, skip))
                changes.update(_field_settings(rule))
        if skip:
            return None
        return dataclasses.replace(self, **changes) if changes else self

    def check_rules_match(self, layers: Mapping[str, nn.Module], what: str) -> None:
        """``UserError`` if a rule selects none of ``layers`` (a misspelt name or glob)."""
        for rule in getattr(self, "overrides", ()):
            if not any(rule.matches(name, module) for name, module in layers.items()):
                raise UserError(
                    f"{type(self).__name__}: layer rule {rule.describe()} matches no {what}; "
                    f"layers: {', '.join(layers)}"
                )

    def resolved(self: C, model: nn.Module) -> C:
        """This config with predicate rules replaced by the layer names they select."""
        rules = getattr(self, "overrides", ())
        if not any(callable(rule.match) for rule in rules):
            return self
        modules = dict(model.named_modules())
        names = list(modules)
        return dataclasses.replace(
            self, overrides=tuple(rule.resolved(names, modules) for rule in rules)
        )

    # ------------------------------------------------------------------ serialization

    def fields_dict(self) -> dict[str, Any]:
        """Field values as JSON-ready data (tuples become lists, nested configs dicts)."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """``{"method", "version", "config"}``: what model files and runs record."""
        return {"method": self.method, "version": self.version, "config": self.fields_dict()}

    @classmethod
    def from_fields(
        cls: type[C], data: Mapping[str, Any], where: str | None = None, prefix: str = ""
    ) -> C:
        """Build from JSON/YAML-like field data; unknown fields and bad values name ``where``
        (``None``: the messages name only the field, as on the command line). ``prefix`` is
        the path of this config inside an enclosing one (``finetune.``)."""
        context = where or cls.__name__
        if not isinstance(data, Mapping):
            raise UserError(f"{context}: expected a mapping of fields, got {type(data).__name__}")
        hints = field_types(cls)
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"{context}: unknown field '{prefix}{unknown[0]}'; "
                f"fields: {', '.join(sorted(known))}"
            )
        defaults = {f.name: f for f in dataclasses.fields(cls)}
        values = {
            k: coerce(_over_default(defaults[k], v), hints[k], context, f"{prefix}{k}")
            for k, v in data.items()
        }
        try:
            return cls(**values)
        except UserError as exc:
            raise UserError(f"{where}: {exc}" if where else str(exc)) from None


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested config field, completed by the field's own default
    (a ``finetune`` of ``{"lr": 0.01}`` keeps the 0 epochs its config defaults to)."""
    if not isinstance(value, Mapping):
        return value
    has_factory = f.default_factory is not dataclasses.MISSING
    default = f.default_factory() if has_factory else f.default
    if not isinstance(default, MethodConfig):
        return value
    return {**default.fields_dict(), **value}


@functools.cache
def field_types(cls: type) -> Mapping[str, Any]:
    """The resolved type hints of a dataclass's fields (resolved once per class: building the
    command line asks for them hundreds of times)."""
    return types.MappingProxyType(typing.get_type_hints(cls))


def _field_settings(rule: LayerRule) -> dict[str, Any]:
    return {k: v for k, v in rule.settings.items() if k != SKIP}


# ---------------------------------------------------------------- type checks


def describe_type(hint: Any) -> str:
    """A short readable name of a type hint (``float | None``, ``one of 'a', 'b'``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args)
    if origin is tuple:
        return f"a list of {describe_type(args[0])}" if args else "a list"
    if origin in (dict, Mapping):
        return f"a mapping of {describe_type(args[0])} to {describe_type(args[1])}"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def check_type(value: Any, hint: Any, where: str) -> None:
    """Raise ``UserError`` if ``value`` does not have the type ``hint`` describes."""
    if not _has_type(value, hint):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise UserError(
            f"{where} must be {describe_type(hint)}; got {type(value).__name__} {shown}"
        )


def _has_type(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_has_type(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_has_type(v, args[0]) for v in value)
        return len(args) == len(value) and all(map(_has_type, value, args))
    if origin in (dict, Mapping):
        return isinstance(value, Mapping) and all(
            _has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items()
        )
    if origin is not None and callable(origin) and origin.__module__ == "collections.abc":
        return callable(value)
    return _has_scalar_type(value, hint)


def _has_scalar_type(value: Any, hint: Any) -> bool:
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this checker does not model (TypeVar, Protocol): trust the method


def _normalized(value: Any, hint: Any) -> Any:
    """Lists become tuples where the field is a tuple (also as the values of a mapping);
    layer-rule dicts become rules."""
    values_hint = _mapping_values(hint)
    if isinstance(value, Mapping) and values_hint is not None:
        return {k: _normalized(v, values_hint) for k, v in value.items()}
    if isinstance(value, list) and _accepts(hint, tuple):
        element = _tuple_element(hint)
        if element is LayerRule:
            return tuple(LayerRule.from_dict(v, "overrides") for v in value)
        return tuple(value)
    if isinstance(value, tuple) and _tuple_element(hint) is LayerRule:
        return tuple(LayerRule.from_dict(v, "overrides") for v in value)
    return value


def _mapping_values(hint: Any) -> Any:
    """The value type of the mapping ``hint`` allows (``None`` if it allows no mapping)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        found = [v for v in map(_mapping_values, args) if v is not None]
        return found[0] if found else None
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


def _accepts(hint: Any, kind: type) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts(a, kind) for a in typing.get_args(hint))
    return origin is kind or hint is kind


def _tuple_element(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for arg in args:
            element = _tuple_element(arg)
            if element is not None:
                return element
        return None
    if origin is tuple and args:
        return args[0]
    return None


# ---------------------------------------------------------------- JSON data <-> values


def to_plain(value: Any) -> Any:
    """JSON-ready data of a field value."""
    if isinstance(value, MethodConfig):
        return value.fields_dict()
    if isinstance(value, LayerRule):
        return value.to_dict()
    if isinstance(value, nn.Module):  # e.g. a teacher given as a module: named, not stored
        return f"<{type(value).__name__} module>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def coerce(value: Any, hint: Any, where: str, path: str = "") -> Any:
    """Turn JSON/YAML data into a value of type ``hint`` where the data is a plain form of it:
    a mapping for a nested config, a list for a tuple, an int or a numeric string (YAML reads
    ``1e-3`` as a string) for a float. Anything else is left for the type check."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        candidates = [a for a in args if a is not type(None)]
        for arg in candidates:
            if _has_type(value, arg):
                return value
        return coerce(value, candidates[0], where, path) if len(candidates) == 1 else value
    if hint is LayerRule:
        return LayerRule.from_dict(value, f"{where}: {path}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return _nested(hint, value, where, path)
    if origin is tuple and isinstance(value, list | tuple):
        element = args[0] if args else Any
        return tuple(coerce(v, element, where, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float:
        return _as_float(value)
    return value


def _nested(hint: type, value: Mapping[str, Any], where: str, path: str) -> Any:
    if issubclass(hint, MethodConfig):
        return hint.from_fields(value, where, prefix=f"{path}.")
    known = {f.name for f in dataclasses.fields(hint)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise UserError(f"{where}: unknown field '{path}.{unknown[0]}'")
    hints = field_types(hint)
    return hint(**{k: coerce(v, hints[k], where, f"{path}.{k}") for k, v in value.items()})


def _as_float(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
