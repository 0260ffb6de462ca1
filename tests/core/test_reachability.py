"""One source of truth: every field of every registered method's config is reachable from
the command line (``mobiledl apply METHOD``, flags derived from the class) and from a recipe
step (``{step: METHOD, field: value}``), and reaches the config with the value given."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import pytest

from mobiledl.cli import build_parser
from mobiledl.cli.args import _field_hint, config_field_paths, config_from_args, flag_for
from mobiledl.cli.methods import seed_values
from mobiledl.core.config import LayerRule
from mobiledl.core.methods import list_methods
from mobiledl.pipeline import parse_recipe

METHODS = {m.name: m for m in list_methods()}
CLI_METHODS = sorted(set(METHODS) - {"nas_subnet"})  # `mobiledl nas extract` (below)


def _value_for(config_type: type, path: str) -> tuple[str, Any]:
    """A command-line text and the value a field should get from it: not the default."""
    hint = _field_hint(config_type, path)
    default = _default(config_type, path)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if union else hint
    if typing.get_origin(base) is Literal:
        choice = next(c for c in typing.get_args(base) if c != default)
        return str(choice), choice
    if base is bool:
        return "", not default
    if base is int:
        return "3", 3
    if base is float:
        return "0.25", 0.25
    if typing.get_origin(base) is tuple and typing.get_args(base)[:1] == (LayerRule,):
        return "conv*:skip=true", (LayerRule("conv*", {"skip": True}),)
    if typing.get_origin(base) is tuple:
        element = typing.get_args(base)[0]
        if element is str:
            return "a,b", ("a", "b")
        return "3,3", (3, 3)
    if typing.get_origin(base) is dict:
        return '{"fc": 0.25}', {"fc": 0.25}
    return "fc", "fc"


def _default(config_type: type, path: str) -> Any:
    value: Any = config_type()
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _get(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _valid_alone(config_type: type, path: str) -> bool:
    """Fields whose non-default value alone makes an invalid config are set with a partner."""
    return path not in PARTNERS.get(config_type.method, {})


#: Values some fields need beside them to form a valid config (e.g. a schedule needs epochs).
PARTNERS: dict[str, dict[str, dict[str, Any]]] = {
    "prune": {
        "macs_ratio": {"sparsity": None},
        "schedule": {"finetune.epochs": 2},
        "rewind_epochs": {"schedule": "lottery", "finetune.epochs": 4},
        "granularity": {},
        "overrides": {},
        "sparsity": {},
    },
    "channel_prune": {"sparsity": {"macs_ratio": None}, "scope": {}},
    "factorize": {
        "macs_ratio": {"energy": None},
        "vbmf": {"energy": None},
        "ranks": {"energy": None},
        "decomposition": {},
    },
    "adapt": {"strategy": {"memory_budget": 10**6}},
    "distill": {"alpha": {}, "feature": {}},
}


def _fields(method: str) -> list[str]:
    return config_field_paths(METHODS[method].config_type)


def _special(method: str, path: str) -> tuple[str, Any] | None:
    """Text/value pairs for fields whose generic value is not valid."""
    table = {
        ("prune", "granularity"): ("kernel", "kernel"),
        ("prune", "criterion"): ("l2", "l2"),
        ("prune", "sparsity"): ("0.25", 0.25),
        ("channel_prune", "criterion"): ("l2", "l2"),
        ("factorize", "decomposition"): ("svd,cp", ("svd", "cp")),
        ("factorize", "ranks"): ('{"fc": 2}', {"fc": 2}),
        ("factorize", "energy"): ("0.25", 0.25),
        ("ptq", "observer"): ("mse", "mse"),
        ("ptq", "weight_observer"): ("mse", "mse"),
        ("ptq", "weight_bits"): ("4", 4),
        ("ptq", "act_bits"): ("4", 4),
        ("ptq", "overrides"): ("conv*:weight_bits=4", (LayerRule("conv*", {"weight_bits": 4}),)),
        ("mixed_precision", "overrides"): (
            "conv*:weight_bits=4",
            (LayerRule("conv*", {"weight_bits": 4}),),
        ),
        ("kmeans", "overrides"): ("conv*:bits=4", (LayerRule("conv*", {"bits": 4}),)),
        ("adapt", "optimizer"): ("sgd", "sgd"),
        ("distill", "teacher"): ("teacher.pt", "teacher.pt"),
        ("distill", "temperature"): ("2.0", 2.0),
        ("adapt", "tinytl.kernel_size"): ("5", 5),
        ("adapt", "sparse.ratios"): ("0.5,1", (0.5, 1.0)),
    }
    if path.startswith("quant."):
        return table.get(("ptq", path.removeprefix("quant.")))
    if path.endswith(".optimizer"):
        return ("adamw", "adamw") if METHODS[method].config_type is not None else None
    return table.get((method, path))


def _case(method: str, path: str) -> tuple[str, Any]:
    return _special(method, path) or _value_for(METHODS[method].config_type, path)


CASES = [(method, path) for method in CLI_METHODS for path in _fields(method)]


@pytest.mark.parametrize(("method", "path"), CASES)
def test_every_config_field_is_a_flag_of_mobiledl_apply(method: str, path: str) -> None:
    config_type = METHODS[method].config_type
    text, value = _case(method, path)
    flag = flag_for(path)
    argv = ["apply", method, "model.pt", "--task", "digits", "--out", "o.pt"]
    if text == "":
        argv.append(flag if value else f"--no-{flag.removeprefix('--')}")
    else:
        argv += [flag, text]
    for partner, partner_value in PARTNERS.get(method, {}).get(path, {}).items():
        if partner_value is not None:
            argv += [flag_for(partner), str(partner_value)]
    args = build_parser().parse_args(argv)
    values = {k: v for k, v in PARTNERS.get(method, {}).get(path, {}).items() if v is None}
    values |= seed_values(config_type, args)  # the task's --seed also seeds the method
    config = config_from_args(config_type, args, values=values)
    assert _get(config, path) == value


@pytest.mark.parametrize(("method", "path"), CASES)
def test_every_config_field_is_a_recipe_field(method: str, path: str) -> None:
    text, value = _case(method, path)
    step: dict[str, Any] = {"step": method}
    _nest(step, path, _plain(value))
    for partner, partner_value in PARTNERS.get(method, {}).get(path, {}).items():
        _nest(step, partner, partner_value)
    recipe = {"name": "r", "task": {"name": "digits"}, "model": {"arch": "lenet300"}}
    parsed = parse_recipe({**recipe, "steps": [step]}).parsed_steps[0]
    assert parsed.kind == method and _get(parsed.config, path) == value


def test_subnet_fields_are_flags_of_nas_extract() -> None:
    config_type = METHODS["nas_subnet"].config_type
    argv = ["nas", "extract", "--supernet", "s.pt", "--task", "digits", "--out", "o.pt"]
    argv += ["--kernels", "3,5", "--depths", "1,2", "--calibration-samples", "3"]
    config = config_from_args(config_type, build_parser().parse_args(argv))
    assert (config.kernels, config.depths, config.calibration_samples) == ((3, 5), (1, 2), 3)
    assert {f.name for f in dataclasses.fields(config_type)} == set(_fields("nas_subnet"))


def test_named_commands_derive_their_flags_from_the_configs() -> None:
    parser = build_parser()
    prune = parser.parse_args(["prune", "m.pt", "--task", "t", "--out", "o.pt", "--round-to", "4"])
    assert prune.cfg__round_to == 4
    quantize = ["quantize", "m.pt", "--task", "t", "--out", "o.pt", "--adaround-iters", "7"]
    assert parser.parse_args(quantize).cfg__adaround_iters == 7


def _nest(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, LayerRule):
        return value.to_dict()
    return value
