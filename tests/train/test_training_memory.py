"""Training-memory profiler: hand-computed accounting, and prediction against measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobiledl.errors import UserError
from mobiledl.models import create_model, list_models
from mobiledl.train import freeze, measure_training_step, tinytl
from mobiledl.train.ondevice.memory import trace_training, training_memory

pytestmark = pytest.mark.usefixtures("single_thread")


# A 2-layer net on a batch of 8: x (8x16) -> Linear(16, 32) -> ReLU -> Linear(32, 4) -> loss.
W1, B1, W2, B2 = 16 * 32 * 4, 32 * 4, 32 * 4 * 4, 4 * 4  # parameter bytes
WEIGHTS = W1 + B1 + W2 + B2  # 2,704
INPUT = 8 * 16 * 4 + 8 * 8  # x (float32) and the int64 targets
HIDDEN = 8 * 32 * 4  # one hidden activation (the first layer's output or the ReLU's)
MASK = 8 * 32 // 8  # the ReLU's 1-bit mask
LOG_PROBS, TOTAL_WEIGHT = 8 * 4 * 4, 4  # kept by log_softmax and nll_loss


def two_layer(trainable: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    for name, param in model.named_parameters():
        param.requires_grad_(
            trainable == "full"
            or (trainable == "last" and name.startswith("2."))
            or (trainable == "bias" and name.endswith("bias"))
        )
    return model, torch.randn(8, 16), torch.randint(0, 4, (8,))


def test_two_layer_full_fine_tuning_by_hand() -> None:
    model, x, y = two_layer("full")
    profile = training_memory(model, x, y, optimizer="momentum")
    assert profile.weight_bytes == WEIGHTS
    assert profile.gradient_bytes == WEIGHTS
    assert profile.optimizer_bytes == WEIGHTS  # one momentum buffer per parameter
    assert profile.input_bytes == INPUT
    # layer 1 keeps x (the batch, counted once as input), the ReLU its mask, layer 2 its input
    assert profile.saved_activation_bytes == MASK + HIDDEN + LOG_PROBS + TOTAL_WEIGHT
    # peak: backward through the ReLU. Resident (weights, momentum, batch), layer 2's weight
    # gradients, the mask, the gradients of the ReLU's output and input, and the masked-gradient
    # workspace (unpacked mask bytes + the float chunk being masked).
    workspace = 8 * 32 + 4 * 8 * 32
    expected = WEIGHTS + WEIGHTS + INPUT + (W2 + B2) + MASK + 2 * HIDDEN + workspace
    assert (profile.peak_phase, profile.peak_layer) == ("backward", "1")
    assert profile.peak_bytes == expected


def test_two_layer_last_layer_only_by_hand() -> None:
    model, x, y = two_layer("last")
    profile = training_memory(model, x, y, optimizer="momentum")
    assert profile.trainable_params == 32 * 4 + 4
    assert profile.gradient_bytes == profile.optimizer_bytes == W2 + B2
    # only layer 2 keeps its input; nothing flows back to layer 1, so no mask
    assert profile.saved_activation_bytes == HIDDEN + LOG_PROBS + TOTAL_WEIGHT


def test_two_layer_bias_only_needs_no_input_activation() -> None:
    model, x, y = two_layer("bias")
    profile = training_memory(model, x, y, optimizer="momentum")
    assert profile.gradient_bytes == profile.optimizer_bytes == B1 + B2
    # no layer keeps its input: bias gradients need none; the ReLU keeps 1 bit per element
    assert profile.saved_activation_bytes == MASK + LOG_PROBS + TOTAL_WEIGHT
    layers = {layer.name: layer for layer in profile.layers}
    assert layers["2"].saved_bytes == 0 and layers["1"].saved_bytes == MASK


def test_optimizer_state_is_zero_one_or_two_copies() -> None:
    model, x, y = two_layer("full")
    states = {name: training_memory(model, x, y, name).optimizer_bytes for name in ("sgd", "adam")}
    assert states == {"sgd": 0, "adam": 2 * WEIGHTS}
    with pytest.raises(UserError, match="optimizer"):
        training_memory(model, x, y, optimizer="lion")


CASES = [
    ("resnet8", "full"),
    ("mcunet", "bias"),
    ("mobilenet_v2", "tinytl"),
    ("mobilenet_v3_small", "tinytl"),
    ("shufflenet_v2", "last"),
    ("lenet5", "bias"),
]


def prepared(name: str, method: str, size: int = 16) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 10, 3, size)
    return tinytl(model) if method == "tinytl" else freeze(model, method)


@pytest.mark.parametrize(("name", "method"), CASES)
def test_predicted_peak_within_15_percent_of_measured(name: str, method: str) -> None:
    model = prepared(name, method)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    predicted = training_memory(model, x, y).peak_bytes
    measured = measure_training_step(model, x, y).peak_bytes
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


@pytest.mark.usefixtures("avx2_memory_kernels")
def test_gradient_checkpointing_lowers_predicted_and_measured_peak() -> None:
    model = prepared("mcunet", "full", size=24)
    x, y = torch.randn(8, 3, 24, 24), torch.randint(0, 10, (8,))
    plain = training_memory(model, x, y)
    checkpointed = training_memory(model, x, y, checkpoint_segments=4)
    assert checkpointed.peak_bytes < 0.85 * plain.peak_bytes
    measured_plain = measure_training_step(model, x, y).peak_bytes
    measured_checkpointed = measure_training_step(model, x, y, checkpoint_segments=4).peak_bytes
    assert measured_checkpointed < 0.85 * measured_plain
    assert abs(checkpointed.peak_bytes - measured_checkpointed) <= 0.15 * measured_checkpointed


def test_every_zoo_op_has_a_rule() -> None:
    for info in list_models(inputs="image"):
        model = prepared(info.name, "full")
        trace = trace_training(model, torch.randn(2, 3, 16, 16))
        assert trace.profile().unknown_ops == [], info.name


def test_peak_breakdown_adds_up() -> None:
    model = prepared("resnet8", "full")
    profile = training_memory(model, torch.randn(4, 3, 16, 16))
    assert sum(profile.peak_breakdown.values()) == profile.peak_bytes
    assert profile.peak_breakdown["weights"] == profile.weight_bytes


def _sliced_batch(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 8 samples of a one-channel training split of ``samples`` (a view of it)."""
    torch.manual_seed(0)
    x, y = torch.randn(samples, 1, 12, 12), torch.randint(0, 10, (samples,))
    return x[:8], y[:8]


@pytest.mark.parametrize("method", ["full", "last", "tinytl"])
def test_training_memory_counts_one_batch_not_the_dataset(method: str) -> None:
    model = tinytl(create_model("mcunet", 10, 1, 12)) if method == "tinytl" else None
    model = model or freeze(create_model("mcunet", 10, 1, 12), method)
    small, large = _sliced_batch(100), _sliced_batch(200)
    predicted = [training_memory(model, x, y) for x, y in (small, large)]
    assert predicted[0].input_bytes == 8 * 144 * 4 + 8 * 8  # the batch, not the split
    assert predicted[0].peak_bytes == predicted[1].peak_bytes
    measured = [measure_training_step(model, x, y) for x, y in (small, large)]
    assert measured[0].resident_bytes == measured[1].resident_bytes
    assert abs(measured[0].peak_bytes - measured[1].peak_bytes) <= 0.01 * measured[0].peak_bytes
