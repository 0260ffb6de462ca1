"""Command-line flags derived from method configs, so flags and configs cannot drift apart.

``add_config_arguments(parser, PruneConfig)`` adds one flag per field of the config (nested
configs get a prefix: ``finetune.epochs`` is ``--finetune-epochs``), with the type, choices and
help the config class gives (its docstring's ``- ``field``: text`` bullets); ``config_from_args``
builds the config from the flags the user gave, every other field keeping the config's
default. ``overrides`` (per-layer rules) become a repeatable ``--layer MATCH:FIELD=VALUE,...``.

Flags default to "not given" (``argparse.SUPPRESS``), so a config's own defaults are the only
defaults: ``--help`` shows them, and ``config_from_args`` leaves them to the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from torch import nn

from mobiledl.core.config import LayerRule, MethodConfig, field_types
from mobiledl.errors import UserError

_BULLET = re.compile(r"^\s*-\s+``(\w+)``(?:\s*/\s*``(\w+)``)*\s*:\s*(.*)$")


@dataclass(frozen=True)
class FlagSpec:
    """One derived flag: the field path it sets (``finetune.epochs``), the flag and dest."""

    path: str
    flag: str
    dest: str


def config_field_paths(config_type: type[MethodConfig], prefix: str = "") -> list[str]:
    """Every settable field of ``config_type``, nested configs flattened (``finetune.epochs``)."""
    paths = []
    hints = field_types(config_type)
    for f in dataclasses.fields(config_type):
        nested = _nested_type(hints[f.name])
        if nested is not None:
            paths += config_field_paths(nested, f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


def flag_for(path: str, renames: Mapping[str, str] | None = None) -> str:
    """The flag of a field path: ``finetune.batch_size`` -> ``--finetune-batch-size``;
    ``overrides`` -> ``--layer`` (``renames`` maps other paths to chosen flags)."""
    if renames and path in renames:
        return renames[path]
    leaf = path.rsplit(".", 1)
    if leaf[-1] == "overrides":
        return "--" + (f"{leaf[0].replace('.', '-')}-" if len(leaf) == 2 else "") + "layer"
    return "--" + path.replace(".", "-").replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_type: type[MethodConfig],
    *,
    renames: Mapping[str, str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = (),
    title: str | None = None,
) -> list[FlagSpec]:
    """Add a flag for every field of ``config_type`` not in ``skip`` (field paths).

    A flag another config already added to ``parser`` is shared, so one command can build
    either of two configs from the same flags. ``renames`` chooses the
    flag of a field path, ``aliases`` adds further option strings (kept from older versions).
    """
    target = parser.add_argument_group(title) if title else parser
    existing = _existing_flags(parser)
    specs = []
    for path in config_field_paths(config_type):
        if path in skip:
            continue
        flag = flag_for(path, renames)
        spec = FlagSpec(path, flag, "cfg__" + flag.lstrip("-").replace("-", "_"))
        specs.append(spec)
        hint, help_text = _field_hint(config_type, path), _field_help(config_type, path)
        if flag in existing:
            continue
        option_strings = [flag, *(aliases or {}).get(path, ())]
        action = target.add_argument(*option_strings, dest=spec.dest, **_argument(hint, help_text))
        existing[flag] = action
    return specs


def config_from_args(
    config_type: type[MethodConfig],
    args: argparse.Namespace,
    *,
    renames: Mapping[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> Any:
    """The config the given flags describe (unset flags keep the config's defaults).

    ``values`` sets further field paths the command computed itself (flags win over them).
    """
    data: dict[str, Any] = {}
    for path, value in (values or {}).items():
        _set_path(data, path, value)
    flags = {}
    for path in config_field_paths(config_type):
        flag = flag_for(path, renames)
        owner, leaf = _owner(config_type, path)
        flags[f"{owner.__name__}.{leaf}"] = flag
        if hasattr(args, dest_of(flag)):
            _set_path(data, path, getattr(args, dest_of(flag)))
    try:
        return config_type.from_fields(data)
    except UserError as exc:  # name the flag, not the field: "--method must be one of ..."
        message = str(exc)
        for field, flag in sorted(flags.items(), key=lambda item: -len(item[0])):
            message = message.replace(field, flag)
        raise UserError(message) from None


def given_flags(args: argparse.Namespace) -> set[str]:
    """The derived flags the user gave (by dest)."""
    return {dest for dest in vars(args) if dest.startswith("cfg__")}


def dest_of(flag: str) -> str:
    """The argparse dest of a derived flag."""
    return "cfg__" + flag.lstrip("-").replace("-", "_")


# ---------------------------------------------------------------- types -> argparse


def _argument(hint: Any, help_text: str) -> dict[str, Any]:
    """``add_argument`` keywords for a field of type ``hint``."""
    options: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
    base = _without_none(hint)
    if base is bool:
        return {**options, "action": argparse.BooleanOptionalAction}
    if _is_rules(base):
        return {**options, "action": "append", "type": parse_layer_rule, "metavar": "MATCH:F=V"}
    if typing.get_origin(base) is Literal:  # checked by the config, with its own message
        return {**options, "metavar": "|".join(str(c) for c in typing.get_args(base))}
    parse = _parser_for(base)
    return {**options, "type": parse, "metavar": _metavar(base)}


def _parser_for(hint: Any) -> Any:
    """A function turning the flag's text into a value of ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        kinds = [a for a in args if a is not nn.Module]
        if any(typing.get_origin(a) in (dict, Mapping) for a in kinds):
            return _mapping_or(kinds)
        if any(typing.get_origin(a) is tuple for a in kinds) and str in kinds:
            return _names
        return _parser_for(kinds[0])
    if origin is tuple:
        element = args[0] if args else str
        return lambda text: tuple(_scalar(element)(part) for part in _split(text))
    if origin in (dict, Mapping):
        return _json_mapping
    return _scalar(hint)


def _scalar(hint: Any) -> Any:
    if hint in (int, float):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        return _parser_for(hint)
    return str


def _mapping_or(kinds: list[Any]) -> Any:
    """A number, or a JSON mapping (``{"fc": 0.3}``) for per-layer values."""
    scalar = next((k for k in kinds if k in (int, float)), str)

    def parse(text: str) -> Any:
        return _json_mapping(text) if text.lstrip().startswith("{") else scalar(text)

    return parse


def _json_mapping(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON mapping; got '{text}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON mapping; got '{text}'")
    return value


def _names(text: str) -> str | tuple[str, ...]:
    parts = _split(text)
    return parts[0] if len(parts) == 1 else tuple(parts)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _metavar(hint: Any) -> str:
    if hint is int:
        return "N"
    if hint is float:
        return "X"
    return "VALUE"


def parse_layer_rule(text: str) -> LayerRule:
    """``MATCH:FIELD=VALUE[,FIELD=VALUE]`` -> a ``LayerRule`` (values as JSON where they
    parse, e.g. numbers and ``true``; else strings). ``MATCH`` is a name, a glob or
    ``type:CLASS`` (``type:Linear:bits=5``)."""
    head = text.partition("=")[0]
    match, colon, _ = head.rpartition(":")
    settings: dict[str, Any] = {}
    for part in _split(text[len(match) + 1 :] if colon else ""):
        key, equals, value = part.partition("=")
        if not equals or not key.strip():
            raise argparse.ArgumentTypeError(f"expected MATCH:FIELD=VALUE; got '{text}'")
        settings[key.strip()] = _json_value(value.strip())
    if not colon or not match or not settings:
        raise argparse.ArgumentTypeError(f"expected MATCH:FIELD=VALUE; got '{text}'")
    try:
        return LayerRule(match, settings)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ---------------------------------------------------------------- helpers


def _nested_type(hint: Any) -> type[MethodConfig] | None:
    if isinstance(hint, type) and issubclass(hint, MethodConfig):
        return hint
    return None


def _field_hint(config_type: type[MethodConfig], path: str) -> Any:
    owner, leaf = _owner(config_type, path)
    return field_types(owner)[leaf]


def _owner(config_type: type[MethodConfig], path: str) -> tuple[type[MethodConfig], str]:
    parts = path.split(".")
    owner = config_type
    for part in parts[:-1]:
        nested = _nested_type(field_types(owner)[part])
        assert nested is not None  # paths come from config_field_paths
        owner = nested
    return owner, parts[-1]


def _field_help(config_type: type[MethodConfig], path: str) -> str:
    owner, leaf = _owner(config_type, path)
    default = _default(owner, leaf)
    text = _docstring_help(owner).get(leaf, "")
    suffix = f" (default {default})" if default is not None else ""
    return (text + suffix).replace("%", "%%").strip()


def _default(owner: type, leaf: str) -> Any:
    for f in dataclasses.fields(owner):
        if f.name != leaf:
            continue
        if f.default is not dataclasses.MISSING:
            return f.default if f.default != () else None
        return None
    return None


def _docstring_help(owner: type) -> dict[str, str]:
    """``{field: text}`` from the ``- ``field``: text`` bullets of ``owner``'s docstring."""
    helps: dict[str, str] = {}
    current: list[str] = []
    for line in (owner.__doc__ or "").splitlines():
        match = _BULLET.match(line)
        if match:
            names = re.findall(r"``(\w+)``", line.split(":")[0])
            current = names
            text = match.group(3).replace("``", "")
            for name in names:
                helps[name] = text
        elif current and line.strip() and not line.strip().startswith("-"):
            for name in current:
                helps[name] += " " + line.strip().replace("``", "")
        else:
            current = []
    return helps


def _without_none(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
    return hint


def _is_rules(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (LayerRule,)


def _existing_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = list(value) if isinstance(value, list | tuple) and leaf == "overrides" else value
