"""What the bad-input tests share: the input files a careless or hostile user hands mobiledl
(``make_inputs``), and the pieces of the check every case makes (``snapshot``, ``error_line``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobiledl.deploy import get_engine
from mobiledl.models import create_model, read_model_record, save_model


@dataclass(frozen=True)
class Inputs:
    """Files every case may name (read-only for the cases)."""

    root: Path
    model: Path
    onnx: Path
    npz: Path

    def path(self, name: str) -> Path:
        return self.root / name


def _save_payload(path: Path, payload: Any) -> Path:
    torch.save(payload, path)
    return path


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _digits_like(n: int = 60, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 8, 8)).astype(np.float32)
    return x, np.repeat(np.arange(classes), n // classes)


def _crafted_models(root: Path, good: dict[str, Any]) -> None:
    """Model files whose record or weights are wrong in one way each (see test_bad_models)."""
    for name, payload in crafted_payloads(good).items():
        _save_payload(root / f"{name}.pt", payload)
    (root / "empty.pt").write_bytes(b"")
    (root / "random.pt").write_bytes(os.urandom(2048))
    data = (root / "model.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    _zip_bomb(root / "bomb.pt")
    _pickle_exploit(root / "exploit.pt")


def crafted_payloads(good: dict[str, Any]) -> dict[str, Any]:
    """Name -> payload, each a copy of the good file's payload with one field made bad."""
    arch, state = good["arch"], good["state_dict"]

    def with_arch(**changes: Any) -> dict[str, Any]:
        return {**good, "arch": {**arch, **changes}}

    def with_state(**changes: Any) -> dict[str, Any]:
        return {**good, "state_dict": {**state, **changes}}

    amplified = torch.zeros(1).expand(1_000_000, 88)
    return {
        "arch_list": {**good, "arch": ["lenet5"]},
        "arch_missing": {k: v for k, v in good.items() if k != "arch"},
        "state_missing": {k: v for k, v in good.items() if k != "state_dict"},
        "num_classes_huge": with_arch(num_classes=10**9),
        "num_classes_str": with_arch(num_classes="10"),
        "num_classes_bool": with_arch(num_classes=True),
        "num_classes_one": with_arch(num_classes=1),
        "in_channels_zero": with_arch(in_channels=0),
        "image_size_one_value": with_arch(image_size=[8]),
        "image_size_zero": with_arch(image_size=[0, 8]),
        "image_size_str": with_arch(image_size="8"),
        "image_size_huge": with_arch(image_size=[100000, 100000]),
        "width_nan": with_arch(width_mult=float("nan")),
        "width_negative": with_arch(width_mult=-1.0),
        "width_huge": with_arch(width_mult=1e6),
        "name_int": with_arch(name=123),
        "name_unknown": with_arch(name="no_such_net"),
        "arch_extra_field": with_arch(evil="x"),
        "transforms_dict": with_arch(transforms={"kind": "x"}),
        "transform_kind_int": with_arch(transforms=[{"kind": 5, "config": {}}]),
        "transform_unknown": with_arch(transforms=[{"kind": "os.system", "config": {}}]),
        "transform_config_list": with_arch(transforms=[{"kind": "kmeans", "config": []}]),
        "history_dict": with_arch(history={"method": "ptq"}),
        "history_unknown_method": with_arch(history=[{"method": "evil", "config": {}}]),
        "history_newer": with_arch(history=[{"method": "ptq", "version": 99, "config": {}}]),
        "display_name_list": with_arch(display_name=["x"]),
        "state_list": {**good, "state_dict": [1, 2]},
        "state_value_str": with_state(**{"features.0.weight": "x"}),
        "state_amplified": {
            **with_arch(num_classes=1_000_000),
            "state_dict": {**state, "classifier.2.weight": amplified},
        },
        "state_wrong_shape": with_state(**{"features.0.weight": torch.zeros(3, 3)}),
        "state_complex": with_state(**{"features.0.bias": torch.zeros(6, dtype=torch.complex64)}),
        "version_str": {**good, "version": "1"},
        "version_newer": {**good, "version": 99},
        "format_wrong": {**good, "format": "other"},
        "payload_list": [good],
        "meta_list": {**good, "meta": [1]},
    }


def _zip_bomb(path: Path) -> None:
    """A zip whose one record unpacks to 64 MB of zeros (a few KB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))


class _Exploit:
    """Pickles as a call to ``os.system`` (refused by ``weights_only`` loading)."""

    marker: Path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _pickle_exploit(path: Path) -> None:
    exploit = _Exploit()
    exploit.marker = path.with_suffix(".pwned")
    buffer = io.BytesIO()
    torch.save({"format": "mobiledl-model", "arch": exploit}, buffer)
    path.write_bytes(buffer.getvalue())


def _crafted_data(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    """User data with one problem each (see test_bad_data)."""
    nan, inf = x.copy(), x.copy()
    nan[5, 0, 2, 3] = np.nan
    nan[9, 0, 0, 0] = np.nan
    inf[7, 0, 1, 1] = np.inf
    huge = x.astype(np.float64)
    huge[4, 0, 0, 0] = 1e300
    _write_npz(root / "nan.npz", x=nan, y=y)
    _write_npz(root / "inf.npz", x=inf, y=y)
    _write_npz(root / "beyond_float32.npz", x=huge, y=y)
    _write_npz(root / "nan_test.npz", x=x, y=y, x_test=nan[:30], y_test=y[:30])
    _write_npz(root / "objects.npz", x=np.array([object()] * 4, dtype=object), y=y[:4])
    _write_npz(root / "no_y.npz", x=x)
    _write_npz(root / "negative_labels.npz", x=x, y=y - 1)
    _write_npz(root / "fractional_labels.npz", x=x, y=y + 0.5)
    _write_npz(root / "few_per_class.npz", x=x[:4], y=np.array([0, 0, 1, 1]))
    _write_npz(root / "mismatched.npz", x=x, y=y[:-1])
    _write_npz(root / "strings.npz", x=np.array(["a"] * 60), y=y)
    _write_npz(root / "five_dims.npz", x=x[:, None], y=y)
    with zipfile.ZipFile(root / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", b"\0" * (64 << 20))
    (root / "empty_folder").mkdir()
    bad_images = root / "bad_images" / "cat"
    bad_images.mkdir(parents=True)
    (bad_images / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "random.idx").write_bytes(os.urandom(64))


# ---------------------------------------------------------------- the contract


def snapshot(*folders: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folders`` with its mode and content hash."""
    files = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                files[str(path)] = (path.stat().st_mode, digest)
            elif path.is_dir():
                files[str(path)] = (path.stat().st_mode, "dir")
    return files


ERROR_LINE = re.compile(r"^mobiledl(?: [\w-]+)*: error: \S")


def error_line(err: str) -> str:
    """The one error line on stderr (progress lines around it are allowed)."""
    lines = [line for line in re.split(r"[\r\n]", err) if ERROR_LINE.match(line.strip())]
    assert len(lines) == 1, f"expected one error line, got: {err[-2000:]!r}"
    return lines[0].strip()


Refused = Callable[..., str]


def fill(template: list[str], inputs: Inputs, tmp_path: Path) -> list[str]:
    """A case's argv with ``{model}``, ``{onnx}``, ``{npz}``, ``{in:NAME}`` (an input file),
    ``{out:NAME}`` (a path in the case's own folder) and ``{existing}`` (a file that exists
    there and must stay unchanged) filled in."""
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"previous contents")
    values = {"model": inputs.model, "onnx": inputs.onnx, "npz": inputs.npz, "existing": existing}

    def one(arg: str) -> str:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", str(value))
        arg = re.sub(r"\{in:([^}]*)\}", lambda m: str(inputs.path(m.group(1))), arg)
        return re.sub(r"\{out:([^}]*)\}", lambda m: str(tmp_path / m.group(1)), arg)

    return [one(arg) for arg in template]


def make_inputs(root: Path) -> Inputs:
    """Write the session's input files into ``root``."""
    lenet = create_model("lenet5", 10, 1, 8)
    model = save_model(root / "model.pt", lenet, {"task": "digits"})
    onnx = get_engine().export(lenet, torch.randn(1, 1, 8, 8), root / "model.onnx")
    x, y = _digits_like()
    npz = _write_npz(root / "good.npz", x=x, y=y)
    _crafted_models(root, read_model_record(model))
    _crafted_data(root, x, y)
    (root / "a_file").write_text("not a folder\n")
    (root / "corrupt.onnx").write_bytes(b"\x08\x01garbage")
    (root / "recipe.yaml").write_text(RECIPE, encoding="utf-8")
    return Inputs(root, model, onnx, npz)


RECIPE = """name: tiny
task: {name: digits}
model: {arch: lenet5}
measure: {latency: false}
report: {sensitivity: []}
steps:
  - {step: train, epochs: 0}
"""
