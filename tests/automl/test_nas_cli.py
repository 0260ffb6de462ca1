"""``mobiledl nas train`` and ``mobiledl nas search``: files, one JSON object, user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.space import tiny_space
from mobiledl.automl.nas.store import save_supernet
from mobiledl.cli import main
from mobiledl.models import load_model
from mobiledl.train import evaluate


@pytest.fixture(scope="module")
def supernet_file(tmp_path_factory) -> Path:
    """An untrained tiny supernet for digits (search mechanics do not need accuracy)."""
    torch.manual_seed(0)
    net = OFASupernet(tiny_space(((8, 8),)), 10, 1, (8, 8))
    return save_supernet(tmp_path_factory.mktemp("nas") / "super.pt", net, {"task": "digits"})


SEARCH = [
    "--predictor-samples",
    "6",
    "--latency-samples",
    "4",
    "--population",
    "6",
    "--generations",
    "2",
    "--top-k",
    "2",
    "--timing-repeats",
    "3",
]


def test_train_writes_a_supernet(tmp_path, capsys):
    out = tmp_path / "super.pt"
    code = main(
        [
            "nas",
            "train",
            "--task",
            "digits",
            "--space",
            "tiny",
            "--resolutions",
            "8",
            "--full-epochs",
            "1",
            "--kernel-epochs",
            "0",
            "--depth-epochs",
            "0",
            "--expand-epochs",
            "0",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0 and out.is_file()
    result = json.loads(capsys.readouterr().out)
    assert result["supernet"] == str(out) and result["space"]["resolutions"] == [[8, 8]]
    assert 0.0 <= result["val_accuracy"]["largest"] <= 1.0
    more = tmp_path / "more.pt"
    code = main(
        [
            "nas",
            "train",
            "--task",
            "digits",
            "--init",
            str(out),
            "--full-epochs",
            "0",
            "--kernel-epochs",
            "1",
            "--depth-epochs",
            "0",
            "--expand-epochs",
            "0",
            "--out",
            str(more),
            "--json",
        ]
    )
    continued = json.loads(capsys.readouterr().out)
    assert code == 0 and continued["init"] == str(out)
    assert continued["space"] == result["space"]
    code = main(["nas", "train", "--task", "mnist1d", "--init", str(out), "--out", str(more)])
    assert code == 2 and "task 'mnist1d'" in capsys.readouterr().err


def test_search_writes_model_report_and_one_json(supernet_file, tmp_path, capsys):
    out = tmp_path / "search"
    code = main(
        [
            "nas",
            "search",
            "--supernet",
            str(supernet_file),
            "--task",
            "digits",
            "--macs",
            "200000",
            *SEARCH,
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["macs"] <= 200000 and result["latency_ms_median"] > 0
    for name in ("subnet.pt", "subnet.onnx", "report.html", "search.json", "latency_model.json"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 2 and "<h2>Search history</h2>" in page
    history = json.loads((out / "search.json").read_text())["history"]
    scored = [best for best in history if best is not None]
    assert scored and scored == sorted(scored)  # the best so far never drops
    loaded = load_model(out / "subnet.pt")
    from mobiledl.data import build_task

    assert evaluate(loaded.model, build_task("digits"), "test") == pytest.approx(result["accuracy"])
    assert loaded.name.startswith("nas-subnet ")
    assert main(["eval", str(out / "subnet.pt"), "--task", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == loaded.name


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give a budget"),
        (["--latency-ms", "-1"], "must be > 0"),
        (["--peak-memory-kb", "0.001"], "no sub-network meets"),
    ],
)
def test_bad_input_is_one_line_exit_2(supernet_file, tmp_path, capsys, extra, message):
    code = main(
        [
            "nas",
            "search",
            "--supernet",
            str(supernet_file),
            "--task",
            "digits",
            *extra,
            *SEARCH,
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0]


def test_wrong_task_and_missing_file_are_user_errors(supernet_file, tmp_path, capsys):
    code = main(
        [
            "nas",
            "search",
            "--supernet",
            str(supernet_file),
            "--task",
            "mnist1d",
            "--macs",
            "1e6",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "task 'mnist1d'" in capsys.readouterr().err
    code = main(
        [
            "nas",
            "search",
            "--supernet",
            str(tmp_path / "none.pt"),
            "--task",
            "digits",
            "--macs",
            "1e6",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "supernet file not found" in capsys.readouterr().err
