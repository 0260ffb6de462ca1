"""Packed model files: low-bit weights stored at their bit width, loaded back exactly."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mobiledl import apply
from mobiledl.cli.main import main
from mobiledl.compress.quantize import BinaryConfig, KMeansConfig, QuantConfig, TernaryConfig
from mobiledl.compress.quantize.ptq import quantize
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model
from mobiledl.models.entropy import decode_stream, encode_stream
from mobiledl.models.packed import HEADER_DICTIONARY, Grid, decode_tensor, encode_tensor
from mobiledl.models.quantized import quant_layers
from mobiledl.train import TrainConfig

NO_TRAINING = TrainConfig(epochs=0, progress=False)
LOWBIT = {
    "kmeans4": KMeansConfig(bits=4),
    "binary": BinaryConfig(train=NO_TRAINING),
    "twn": TernaryConfig(train=NO_TRAINING),
    "ttq": TernaryConfig(algorithm="ttq", train=NO_TRAINING),
}
#: Smallest fp32-file / packed-file ratio of resnet8 (issue 22: binary, ternary 10x; 4-bit 6x).
MIN_RATIO = {"kmeans4": 6, "binary": 10, "twn": 10, "ttq": 10}


def _round_trip(tensor: torch.Tensor) -> tuple[dict, torch.Tensor]:
    entry, data = encode_tensor(tensor)
    back = decode_tensor(entry, np.frombuffer(data, dtype=np.uint8), "t")
    return entry, back


@pytest.mark.parametrize("method", sorted(LOWBIT))
def test_lowbit_resnet8_file_is_small_and_loads_identical(tmp_path: Path, method: str) -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 1, 16).eval()
    fp32 = save_model(tmp_path / "fp32.pt", model).stat().st_size
    quantized = apply(model, LOWBIT[method])
    packed = save_model(tmp_path / "q.pt", quantized, frozen=True)
    assert fp32 >= MIN_RATIO[method] * packed.stat().st_size
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(quantized(x), load_model(packed).model(x))


def test_keep_float_file_still_trains_as_the_method(tmp_path: Path) -> None:
    quantized = apply(create_model("resnet8", 10, 1, 16).eval(), LOWBIT["binary"])
    latent = load_model(save_model(tmp_path / "q.pt", quantized)).model
    assert any("parametrizations" in name for name, _ in latent.named_parameters())
    frozen = load_model(save_model(tmp_path / "f.pt", quantized, frozen=True)).model
    assert not any("parametrizations" in name for name, _ in frozen.named_parameters())


@pytest.mark.parametrize(
    ("tensor", "codec"),
    [
        (torch.randn(6, 5), "raw"),
        (torch.full((3, 4), 0.25), "fill"),
        (torch.randint(0, 16, (40, 7), dtype=torch.uint8), "bits"),
        (torch.rand(300) > 0.5, "bits"),
        (torch.tensor([-1.5, 0.5, 2.0])[torch.randint(0, 3, (50, 9))], "palette"),
        (torch.randn(8, 1).abs() * torch.randn(8, 90).sign(), "rows"),
        (torch.randn(2000) * (torch.rand(2000) > 0.95), "sparse"),
        (
            torch.tensor([0.5, -0.5])[torch.randint(0, 2, (4000,))] * (torch.rand(4000) > 0.9),
            "sparse",
        ),
        (torch.arange(12, dtype=torch.int64).reshape(3, 4), "raw"),
        (torch.randn(5, dtype=torch.float64), "raw"),
        (torch.randn(4).to(torch.bfloat16), "raw"),
    ],
)
def test_every_codec_is_exact(tensor: torch.Tensor, codec: str) -> None:
    entry, back = _round_trip(tensor)
    assert entry["codec"] == codec
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back, tensor)


def test_huffman_stream_is_shorter_and_exact_on_skewed_symbols() -> None:
    rng = np.random.default_rng(0)
    symbols = rng.choice(16, size=5000, p=[0.5] + [0.5 / 15] * 15)
    header, data = encode_stream(symbols, 16)
    assert header["h"] == 1 and len(data) < 5000 * 4 / 8
    assert np.array_equal(decode_stream(header, np.frombuffer(data, np.uint8), "s"), symbols)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n": 10**9}, "need more than"),
        ({"a": 1000}, "need more than"),
        ({"z": 3}, "does not match"),
        ({"h": "x"}, "must be an integer"),
    ],
)
def test_corrupt_stream_is_one_clear_error(change: dict, match: str) -> None:
    header, data = encode_stream(np.arange(64) % 8, 8)
    with pytest.raises(UserError, match=match):
        decode_stream({**header, **change}, np.frombuffer(data, np.uint8), "s")


@pytest.mark.parametrize("cut", [4, 14, 40, -3])
def test_truncated_packed_file_is_one_clear_error(tmp_path: Path, cut: int) -> None:
    data = save_model(tmp_path / "m.pt", create_model("lenet300", 10, 1, 8)).read_bytes()
    (tmp_path / "bad.pt").write_bytes(data[:cut])
    with pytest.raises(UserError, match="bad.pt is not a readable mobiledl model file"):
        load_model(tmp_path / "bad.pt")


def test_deep_compress_command_writes_a_small_file_it_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    torch.manual_seed(0)
    source = save_model(tmp_path / "m.pt", create_model("lenet300", 10, 1, 8), {"task": "digits"})
    out = tmp_path / "small.pt"
    argv = ["deep-compress", str(source), "--task", "digits", "--out", str(out), "--json"]
    flags = ["--prune-steps", "1", "--prune-epochs", "0", "--finetune-epochs", "0"]
    assert main([*argv, *flags, "--no-latency"]) == 0
    result = json.loads(capsys.readouterr().out)
    extra = result["extra"]
    assert extra["model_bytes"] == out.stat().st_size
    assert extra["compression"] == pytest.approx(extra["fp32_model_bytes"] / out.stat().st_size)
    assert extra["compression"] > 10
    assert load_model(out).meta["deep_compression"]["fc_bits"] == 4


@pytest.mark.parametrize(("bits", "min_ratio"), [(8, 3.5), (4, 6.0)])
def test_linear_quantized_file_stores_grid_codes(
    tmp_path: Path, bits: int, min_ratio: float
) -> None:
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 1, 16).eval()
    fp32 = save_model(tmp_path / "fp32.pt", model).stat().st_size
    quantized = quantize(model, QuantConfig(weight_bits=bits), data=torch.randn(64, 1, 16, 16))
    latent = save_model(tmp_path / "latent.pt", quantized).stat().st_size
    packed = save_model(tmp_path / "q.pt", quantized, frozen=True)
    assert fp32 >= min_ratio * packed.stat().st_size
    assert latent > 0.9 * fp32  # without freezing, the latent float weights are kept
    codecs = [entry["codec"] for entry in _entries(packed)]
    assert codecs.count("grid") == len(quant_layers(quantized))
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(quantized(x), load_model(packed).model(x))


def test_grid_codec_is_exact_and_refused_off_the_grid() -> None:
    scale = torch.rand(6) + 0.01
    codes = torch.randint(-7, 8, (6, 20))
    weight = codes.float() * scale[:, None]
    grid = Grid(scale.numpy(), np.zeros(6, np.int64), -7, 7)
    entry, data = encode_tensor(weight, grid)
    assert entry["codec"] == "grid" and len(data) < weight.numel()
    back = decode_tensor(entry, np.frombuffer(data, dtype=np.uint8), "t")
    assert torch.equal(back, weight)
    entry, _ = encode_tensor(weight + 1e-3, grid)
    assert entry["codec"] != "grid"
    with pytest.raises(UserError, match="grid of 5 rows does not fit"):
        decode_tensor(
            {**encode_tensor(weight, grid)[0], "rows": 5}, np.frombuffer(data, np.uint8), "t"
        )


def _entries(path: Path) -> list[dict]:
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[8:12])
    inflater = zlib.decompressobj(zdict=HEADER_DICTIONARY)
    return json.loads(inflater.decompress(data[12 : 12 + length]))["tensors"]
