"""Crafted model files, user data and ONNX files: refused with one line naming the file and
the field, before anything large is allocated; nothing is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from badinput import Inputs, Refused
from onnx import TensorProto, helper, numpy_helper

from mobiledl.errors import UserError
from mobiledl.models import load_model, read_model_record

# (file in the inputs, regex of the error line)
MODEL_FILES = [
    ("arch_list", "arch must be a mapping; got list"),
    ("arch_missing", "lacks 'arch'"),
    ("state_missing", "lacks 'state_dict'"),
    ("num_classes_huge", "needs about .* of memory|asks for a model"),
    ("num_classes_str", "arch.num_classes must be an integer >= 2; got '10'"),
    ("num_classes_bool", "arch.num_classes must be an integer >= 2; got True"),
    ("num_classes_one", "arch.num_classes must be an integer >= 2; got 1"),
    ("in_channels_zero", "arch.in_channels must be an integer >= 1; got 0"),
    ("image_size_one_value", "arch.image_size must be two positive integers"),
    ("image_size_zero", "arch.image_size must be two positive integers"),
    ("image_size_str", "arch.image_size must be two positive integers; got '8'"),
    ("width_nan", "arch.width_mult must be a finite number > 0; got nan"),
    ("width_negative", "arch.width_mult must be a finite number > 0; got -1.0"),
    ("width_huge", "needs about .* of memory|asks for a model"),
    ("name_int", "arch.name must be a model name; got int"),
    ("name_unknown", "unknown model 'no_such_net'"),
    ("arch_extra_field", "arch has unknown field 'evil'"),
    ("transforms_dict", "arch.transforms must be a list; got dict"),
    ("transform_kind_int", r"arch.transforms\[0\].kind must be a string; got int"),
    ("transform_unknown", "unknown model transform 'os.system'"),
    ("transform_config_list", r"arch.transforms\[0\].config must be a mapping; got list"),
    ("history_dict", "arch.history must be a list; got dict"),
    ("history_unknown_method", r"history\[0\]: unknown method 'evil'"),
    ("history_newer", "version 99 is newer than this mobiledl reads"),
    ("display_name_list", "arch.display_name must be a string; got list"),
    ("state_list", "state_dict must be a mapping of names to tensors; got list"),
    ("state_value_str", r"state_dict\['features.0.weight'\] must map a name to a tensor"),
    ("state_amplified", "claims 88,000,000 values but its data holds fewer"),
    ("state_wrong_shape", "asks for a model of 63,102 values but the file holds 62,891"),
    ("state_complex", "is a torch.strided torch.complex64 tensor"),
    ("version_str", "written by a newer mobiledl \\(format '1'\\)"),
    ("version_newer", "written by a newer mobiledl \\(format 99\\)"),
    ("format_wrong", "is not a mobiledl model file"),
    ("payload_list", "is not a mobiledl model file"),
    ("meta_list", "meta must be a mapping; got list"),
    ("empty", "is not a readable mobiledl model file"),
    ("random", "is not a readable mobiledl model file"),
    ("truncated", "is not a readable mobiledl model file"),
    ("bomb", "its records unpack to 67,108,864 bytes"),
    ("exploit", "is not a readable mobiledl model file"),
]

# (--task data in the inputs, regex of the error line)
DATA = [
    (
        "nan.npz",
        r"nan.npz: 2 non-finite values .* in the inputs; the first in sample 5 at \[0, 2, 3\]",
    ),
    ("inf.npz", r"inf.npz: 1 non-finite values .*; the first in sample 7 at \[0, 1, 1\]"),
    ("beyond_float32.npz", r"1 non-finite values \(NaN, inf or beyond float32\)"),
    ("nan_test.npz", r"nan_test.npz: 2 non-finite values .* in the test inputs"),
    ("objects.npz", "not a readable .npz file"),
    ("no_y.npz", "npz has no array 'y'"),
    ("negative_labels.npz", "labels must be >= 0"),
    ("fractional_labels.npz", "labels must be integers"),
    ("few_per_class.npz", "has 2 samples; each class needs at least 3"),
    ("mismatched.npz", "60 inputs but 59 labels"),
    ("strings.npz", "inputs must be numeric"),
    ("five_dims.npz", "inputs must be shaped"),
    ("empty_folder", "folder is empty"),
    ("bad_images", "broken.png: not a readable image"),
    ("random.idx", "not an IDX file"),
]


@pytest.mark.parametrize(("name", "match"), MODEL_FILES)
@pytest.mark.parametrize("command", ["export", "profile"])
def test_crafted_model_file(
    refused: Refused, inputs: Inputs, tmp_path: Path, command: str, name: str, match: str
) -> None:
    path = inputs.path(f"{name}.pt")
    argv = {
        "export": ["export", str(path), "--out", str(tmp_path / "m.onnx")],
        "profile": ["profile", str(path), "--no-latency"],
    }[command]
    line = refused(argv, match)
    assert path.name in line
    assert not path.with_suffix(".pwned").exists()


@pytest.mark.parametrize(("name", "match"), DATA)
def test_bad_user_data(
    refused: Refused, inputs: Inputs, tmp_path: Path, name: str, match: str
) -> None:
    argv = ["eval", str(inputs.model), "--task", str(inputs.path(name))]
    refused(argv, match)


def test_archive_bomb_refused_before_unpacking(
    refused: Refused, inputs: Inputs, tmp_path: Path
) -> None:
    argv = ["eval", str(inputs.model), "--task", str(inputs.path("bomb.npz"))]
    refused([*argv, "--max-memory-gb", "0.01"], "bomb.npz: its arrays needs about 64.0 MiB")


def test_bad_data_refused_before_training(refused: Refused, inputs: Inputs, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    argv = ["train", "--model", "lenet5", "--task", str(inputs.path("nan.npz")), "--out", str(out)]
    refused(argv, "nan.npz: 2 non-finite values")


def test_crafted_file_never_allocates_its_claim(inputs: Inputs) -> None:
    """The 10**9-class record is refused from its shapes, not by trying to allocate 352 GB."""
    with pytest.raises(UserError, match="num_classes_huge.pt"):
        load_model(inputs.path("num_classes_huge.pt"))


def _onnx_with_external_data(folder: Path, location: str) -> Path:
    weight = numpy_helper.from_array(np.ones((8, 10), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    path = folder / "external.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link/secret.bin"]
)
def test_onnx_external_data_stays_in_its_folder(
    refused: Refused, tmp_path: Path, location: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(np.ones(80, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link").symlink_to(outside)
    path = _onnx_with_external_data(folder, location)
    refused(["bench", str(path), "--repeats", "1"], "external data of 'w'")


def test_onnx_external_data_inside_its_folder_loads(tmp_path: Path) -> None:
    from mobiledl.deploy import get_engine

    np.ones(80, np.float32).tofile(tmp_path / "weights.bin")
    runner = get_engine().load(_onnx_with_external_data(tmp_path, "weights.bin"))
    assert runner.run(np.ones((1, 1, 1, 8), np.float32)).shape == (1, 1, 1, 10)


def test_weights_only_loading_refuses_code(inputs: Inputs) -> None:
    with pytest.raises(UserError, match="exploit.pt"):
        load_model(inputs.path("exploit.pt"))
    assert not inputs.path("exploit.pwned").exists()
    assert read_model_record(inputs.model)["format"] == "mobiledl-model"


@pytest.fixture(scope="module")
def supernet_payload(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mobiledl.automl.nas.elastic import OFASupernet
    from mobiledl.automl.nas.space import tiny_space
    from mobiledl.automl.nas.store import save_supernet

    path = tmp_path_factory.mktemp("nas") / "super.pt"
    save_supernet(path, OFASupernet(tiny_space(((8, 8),)), 10, 1, (8, 8)), {"task": "digits"})
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_classes": 10**9}, "needs about|asks for a model"),
        ({"version": "2"}, "written by a newer mobiledl"),
        ({"state_dict": {"w": torch.zeros(1).expand(10**6, 100)}}, "claims 100,000,000 values"),
    ],
)
def test_crafted_supernet_file(
    refused: Refused, supernet_payload: dict, tmp_path: Path, changes: dict, match: str
) -> None:
    path = tmp_path / "super.pt"
    torch.save({**supernet_payload, **changes}, path)
    argv = ["nas", "extract", "--supernet", str(path), "--task", "digits"]
    refused([*argv, "--out", str(tmp_path / "sub.pt")], match)
