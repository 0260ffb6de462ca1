"""``MethodConfig``: typed, frozen, versioned, per-layer rules, round trip through data."""

from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from mobiledl.compress.prune import ChannelPruneConfig, PruneConfig
from mobiledl.compress.quantize import KMeansConfig, QuantConfig
from mobiledl.core.config import LayerRule
from mobiledl.core.methods import config_from_dict, list_methods
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PruneConfig(sparsity="0.5"), "PruneConfig.sparsity must be"),
        (lambda: TrainConfig(epochs=2.5), "TrainConfig.epochs must be int"),
        (lambda: TrainConfig(lr=float("nan")), "lr must be a finite number"),
        (lambda: TrainConfig(label_smoothing=2), "label_smoothing must lie in"),
        (lambda: QuantConfig(per_channel="yes"), "QuantConfig.per_channel must be bool"),
        (lambda: ChannelPruneConfig(scope="everywhere"), "scope must be one of"),
        (lambda: QuantConfig(weight_bits=True), "weight_bits must be int"),
    ],
)
def test_bad_field_types_and_values_are_user_errors(build, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()


def test_configs_are_frozen() -> None:
    config = QuantConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.weight_bits = 4  # type: ignore[misc]


@pytest.mark.parametrize("method", [m.name for m in list_methods()])
def test_every_default_config_round_trips_through_data(method: str) -> None:
    config_type = next(m.config_type for m in list_methods() if m.name == method)
    config = config_type()
    data = config.to_dict()
    assert data["method"] == method and data["version"] == config_type.version
    assert config_from_dict(data) == config


def test_a_newer_or_unknown_config_version_is_a_clear_error() -> None:
    data = QuantConfig().to_dict()
    with pytest.raises(UserError, match="newer than this mobiledl reads"):
        config_from_dict({**data, "version": QuantConfig.version + 1})
    with pytest.raises(UserError, match="unknown method 'hyperprune'"):
        config_from_dict({**data, "method": "hyperprune"})


def test_layer_rules_by_name_glob_type_and_predicate() -> None:
    conv, linear = nn.Conv2d(1, 1, 1), nn.Linear(1, 1)
    config = KMeansConfig(
        bits=8,
        overrides=[
            {"match": "features.*", "bits": 4},
            {"match": "type:Linear", "bits": 5},
            LayerRule(lambda name, module: name.endswith(".skipme"), {"skip": True}),
        ],
    )
    assert config.for_layer("features.0", conv).bits == 4
    assert config.for_layer("head", linear).bits == 5
    assert config.for_layer("other", conv).bits == 8
    assert config.for_layer("features.skipme", conv) is None


def test_layer_rules_only_set_per_layer_fields() -> None:
    with pytest.raises(UserError, match="not a per-layer setting"):
        KMeansConfig(overrides=[{"match": "fc", "finetune": 1}])
    with pytest.raises(UserError, match="bits must lie"):
        KMeansConfig(overrides=[{"match": "fc", "bits": 12}])


def test_a_predicate_rule_is_resolved_to_names_before_it_is_saved() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Linear(2, 2))
    rule = LayerRule(lambda name, module: isinstance(module, nn.Linear), {"bits": 4})
    config = KMeansConfig(overrides=(rule,))
    with pytest.raises(UserError, match="cannot be saved"):
        config.to_dict()
    resolved = config.resolved(model)
    assert resolved.overrides[0].match == ("1",)
    assert config_from_dict(resolved.to_dict()) == resolved


def test_partial_nested_config_keeps_the_field_default() -> None:
    config = PruneConfig.from_fields({"finetune": {"lr": 0.01}})
    assert config.finetune.lr == 0.01 and config.finetune.epochs == 0  # not TrainConfig's 30
