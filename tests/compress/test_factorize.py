"""Low-rank factorization: approximation, rank rules, MAC target, ONNX export, model files."""

import copy
import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl.compress.factorize import (
    FactorizeConfig,
    LayerSpec,
    evbmf_rank,
    factorize,
    factorize_model,
    factorized_layers,
)
from mobiledl.compress.factorize.decompose import decompose
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model
from mobiledl.profile import count_macs

pytestmark = pytest.mark.usefixtures("single_thread")


def relative_error(layer: nn.Module, approx: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((approx(x) - layer(x)).norm() / layer(x).norm())


CONV_RANKS = {
    "svd": [(4,), (12,), (24,)],
    "spatial": [(4,), (16,), (48,)],
    "tucker2": [(4, 4), (12, 8), (24, 16)],
    "cp": [(4,), (24,), (96,)],
}


@pytest.mark.parametrize("method", sorted(CONV_RANKS))
def test_conv_error_decreases_with_rank(method: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 16, 9, 9)
    errors = [
        relative_error(conv, decompose(conv, LayerSpec.of("c", conv, method, r)), x)
        for r in CONV_RANKS[method]
    ]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.9 * errors[0]
    if method != "cp":  # the last rank is full: the decomposition is exact
        assert errors[-1] < 1e-5


def test_linear_svd_is_the_eckart_young_optimum() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(40, 30, bias=False)
    rank = 7
    factorized = decompose(linear, LayerSpec.of("l", linear, "svd", (rank,)))
    assert [type(m) for m in factorized] == [nn.Linear, nn.Linear]
    singular = torch.linalg.svdvals(linear.weight.detach())
    weight = factorized[1].weight @ factorized[0].weight
    error = (weight - linear.weight).detach().norm().item()
    assert error == pytest.approx(singular[rank:].norm().item(), rel=1e-4)


def test_spatial_layers_are_vertical_then_horizontal() -> None:
    conv = nn.Conv2d(8, 16, (3, 5), stride=(2, 1), padding=(1, 2), dilation=1)
    factorized = decompose(conv, LayerSpec.of("c", conv, "spatial", (6,)))
    first, second = factorized
    assert first.kernel_size == (3, 1) and first.stride == (2, 1) and first.bias is None
    assert second.kernel_size == (1, 5) and second.padding == (0, 2) and second.bias is not None


def test_evbmf_finds_the_rank_of_a_noisy_low_rank_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    for rank in (0, 3, 9):
        signal = torch.randn(60, rank, generator=g) @ torch.randn(rank, 100, generator=g)
        noisy = signal + 0.3 * torch.randn(60, 100, generator=g)
        assert evbmf_rank(noisy) == rank
        assert evbmf_rank(noisy.T) == rank


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet8", 10, 1, 16).eval()


@pytest.mark.parametrize("method", ["tucker2", "svd"])
def test_mac_target_is_hit_with_ranks_in_multiples_of_8(resnet: nn.Module, method: str) -> None:
    x = torch.randn(1, 1, 16, 16)
    config = FactorizeConfig(decomposition=method, macs_ratio=0.5, round_to=8)
    result = factorize(resnet, config, data=torch.randn(64, 1, 16, 16))
    ratio = count_macs(result, x) / count_macs(resnet, x)
    assert abs(ratio - 0.5) <= 0.02 * 0.5
    for name, layer in factorized_layers(result).items():
        full = (layer.spec.out_channels, layer.spec.in_channels)
        for rank, channels in zip(layer.spec.ranks, full, strict=False):
            assert rank % 8 == 0 or rank == channels, (name, layer.spec.ranks)
    assert not factorized_layers(resnet)  # the input model is left alone


def test_unreachable_mac_target_is_best_effort_with_one_warning(resnet: nn.Module) -> None:
    x = torch.randn(1, 1, 16, 16)
    config = FactorizeConfig(macs_ratio=0.01, round_to=8, data_aware=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = factorize_model(copy.deepcopy(resnet), config, data=x)
    lines = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(lines) == 1
    achieved = count_macs(result, x) / count_macs(resnet, x)
    assert f"keeps {achieved:.3f} of the MACs" in lines[0]
    assert "lowest allowed ranks (ranks are multiples of round_to=8): features.1" in lines[0]
    assert "-" not in lines[0].split("MACs (")[0]  # no negative MAC count


def test_strict_makes_a_missed_target_an_error(resnet: nn.Module) -> None:
    config = FactorizeConfig(macs_ratio=0.01, round_to=8, data_aware=False, strict=True)
    with pytest.raises(UserError, match=r"macs_ratio 0.01 not met.*\(strict\)"):
        factorize_model(copy.deepcopy(resnet), config, data=torch.randn(1, 1, 16, 16))


class _AttentionAndDeadBranch(nn.Module):
    """A conv stem, attention over its positions, and a layer the input never reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.unused = nn.Linear(32, 32)
        self.tiny = nn.Linear(32, 1)
        self.head = nn.Linear(32, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        mixed, _ = self.attention(tokens, tokens, tokens)
        pooled = mixed.mean(1)
        return torch.cat([self.head(pooled), self.tiny(pooled)], 1)


def test_attention_internals_unrun_and_tiny_layers_are_skipped_with_one_warning() -> None:
    torch.manual_seed(0)
    model, x = _AttentionAndDeadBranch().eval(), torch.randn(8, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = factorize_model(copy.deepcopy(model), FactorizeConfig(energy=0.5), data=x)
    lines = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(lines) == 1
    assert "attention.out_proj (attention internals" in lines[0]
    assert "unused (not called on the example input)" in lines[0]
    assert "tiny (too small" in lines[0]
    assert set(factorized_layers(result)) <= {"stem", "head"}
    torch.testing.assert_close(result(x).shape, model(x).shape)


def test_energy_rule_keeps_more_macs_for_more_energy(resnet: nn.Module) -> None:
    x = torch.randn(1, 1, 16, 16)
    macs = [
        count_macs(factorize(resnet, FactorizeConfig(energy=e, data_aware=False), data=x), x)
        for e in (0.3, 0.6, 0.95)
    ]
    assert macs == sorted(macs) and macs[0] < macs[-1]


def test_explicit_ranks_and_bad_names() -> None:
    model = create_model("lenet300", 10, 1, 8)
    result = factorize(model, FactorizeConfig(ranks={"features.0": 16}, data_aware=False))
    assert list(factorized_layers(result)) == ["features.0"]
    assert factorized_layers(result)["features.0"].spec.ranks == (16,)
    with pytest.raises(UserError, match="'features.9'"):
        factorize(model, FactorizeConfig(ranks={"features.9": 16}, data_aware=False))
    with pytest.raises(UserError, match="exactly one rank rule"):
        FactorizeConfig(energy=0.9, macs_ratio=0.5)
    with pytest.raises(UserError, match="unknown decomposition 'qr'"):
        FactorizeConfig(decomposition="qr", energy=0.9)


@pytest.mark.parametrize("method", ["tucker2", "cp", "spatial", "svd"])
def test_factorized_models_export_to_onnx_and_reload(
    resnet: nn.Module, method: str, tmp_path: Path
) -> None:
    config = FactorizeConfig(decomposition=method, vbmf=True, round_to=8, data_aware=False)
    result = factorize(resnet, config)
    assert factorized_layers(result)
    x = torch.randn(3, 1, 16, 16)
    engine = get_engine("onnxruntime")
    artifact = engine.export(result, x[:1], tmp_path / "f.onnx")
    assert engine.parity_check(result, artifact, x) < 1e-4
    loaded = load_model(save_model(tmp_path / "f.pt", result)).model
    with torch.no_grad():
        assert torch.equal(loaded(x), result(x))
    assert {n: m.spec for n, m in factorized_layers(loaded).items()} == {
        n: m.spec for n, m in factorized_layers(result).items()
    }


def test_layers_and_exclude_select_layers() -> None:
    model = create_model("lenet300", 10, 1, 8)
    data = torch.randn(32, 1, 8, 8)
    config = FactorizeConfig(energy=0.5, layers=("features.0", "features.2"))
    only = factorize(model, config, data=data)
    assert set(factorized_layers(only)) <= {"features.0", "features.2"}
    rest = factorize(model, FactorizeConfig(energy=0.5, exclude=("features.0",)), data=data)
    assert "features.0" not in factorized_layers(rest)


def test_data_aware_factors_keep_the_responses_subspace() -> None:
    """Responses confined to a subspace are reproduced exactly at that rank (Zhang et al.),
    while a weight SVD of the same rank is not."""
    torch.manual_seed(0)
    linear = nn.Linear(12, 10, bias=False)
    x = torch.randn(200, 3) @ torch.randn(3, 12)  # inputs span 3 directions: so do responses
    model = nn.Sequential(linear)
    model.mobiledl_arch = None
    aware = factorize(model, FactorizeConfig(ranks={"0": 3}), data=x)
    blind = factorize(model, FactorizeConfig(ranks={"0": 3}, data_aware=False), data=x)
    with torch.no_grad():
        assert (aware(x) - linear(x)).abs().max() < 1e-4
        assert (blind(x) - linear(x)).abs().max() > 1e-2


def test_data_aware_needs_data(resnet: nn.Module) -> None:
    with pytest.raises(UserError, match="needs a task or data"):
        factorize(resnet, FactorizeConfig(energy=0.9))


def test_batchnorm_statistics_are_re_estimated(resnet: nn.Module) -> None:
    data = torch.randn(64, 1, 16, 16)
    config = FactorizeConfig(macs_ratio=0.5, round_to=8)
    fresh = factorize(resnet, config, data=data)
    stale = factorize(resnet, dataclasses.replace(config, recalibrate_bn=False), data=data)
    before = resnet.features[1].conv1.bn.running_var
    assert torch.equal(stale.features[1].conv1.bn.running_var, before)
    assert not torch.equal(fresh.features[1].conv1.bn.running_var, before)


def test_greedy_picks_a_method_per_layer(resnet: nn.Module) -> None:
    """With ranks in multiples of 16, Tucker-2 cannot cut a 16-channel layer: the greedy
    takes the spatial factorization there and Tucker-2 elsewhere."""
    data = torch.randn(64, 1, 16, 16)
    config = FactorizeConfig(decomposition=("tucker2", "spatial"), macs_ratio=0.6, round_to=16)
    result = factorize(resnet, config, data=data)
    specs = {name: layer.spec for name, layer in factorized_layers(result).items()}
    assert count_macs(result, data[:1]) <= 0.6 * count_macs(resnet, data[:1])
    assert {s.method for n, s in specs.items() if n.startswith("features.1.")} <= {"spatial"}
    assert all(r % 16 == 0 for s in specs.values() for r in s.ranks)
    with pytest.raises(UserError, match="unknown decomposition 'qr'"):
        FactorizeConfig(decomposition=("tucker2", "qr"), energy=0.9)


def test_min_saving_leaves_small_cuts_out(resnet: nn.Module) -> None:
    data = torch.randn(64, 1, 16, 16)
    loose = factorize(resnet, FactorizeConfig(energy=0.95, round_to=8), data=data)
    strict = factorize(resnet, FactorizeConfig(energy=0.95, round_to=8, min_saving=0.6), data=data)
    assert set(factorized_layers(strict)) < set(factorized_layers(loose))
