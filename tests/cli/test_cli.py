"""The command-line contract: commands, --json outputs, exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobiledl.cli import main

MEASUREMENT_KEYS = {"accuracy", "params", "macs", "bytes", "peak_memory_bytes"}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "lenet.pt"
    argv = ["train", "--model", "lenet300", "--task", "digits", "--epochs", "2", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_models_lists_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    models = run_json(capsys, "models")
    names = {m["name"] for m in models}
    assert {"lenet300", "resnet20", "mobilenet_v2", "mcunet"} <= names


def test_train_writes_a_loadable_model(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "eval", str(trained), "--task", "digits")
    assert result["accuracy"] > 0.8


def test_train_json_is_a_measurement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    argv = ["train", "--model", "lenet300", "--task", "digits", "--epochs", "1", "--out", str(out)]
    result = run_json(capsys, *argv)
    assert set(result) >= MEASUREMENT_KEYS
    assert result["params"] > 0 and out.is_file()


def test_profile_a_file_and_a_zoo_name(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "profile", str(trained), "--repeats", "5")
    assert result["macs"] > 0 and result["latency_ms_median"] > 0
    assert result["extra"]["layers"]
    result = run_json(capsys, "profile", "resnet8", "--input-shape", "1,3,16,16", "--no-latency")
    assert result["latency_ms_median"] is None and result["params"] > 0


def test_export_bench_and_eval_onnx(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_path = tmp_path / "m.onnx"
    exported = run_json(capsys, "export", str(trained), "--out", str(onnx_path))
    assert exported["extra"]["max_abs_diff"] < 1e-4
    bench = run_json(capsys, "bench", str(onnx_path), "--batch", "4", "--repeats", "5")
    assert bench["batch_size"] == 4 and bench["latency_ms_median"] > 0
    torch_acc = run_json(capsys, "eval", str(trained), "--task", "digits")["accuracy"]
    onnx_acc = run_json(capsys, "eval", str(onnx_path), "--task", "digits")["accuracy"]
    assert onnx_acc == pytest.approx(torch_acc, abs=1e-9)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--model", "nope", "--task", "digits", "--out", "x.pt"], "unknown model 'nope'"),
        (["eval", "missing.pt", "--task", "digits"], "missing.pt"),
        (["bench", "missing.onnx"], "missing.onnx"),
        (["profile", "resnet8", "--input-shape", "1,3,x"], "--input-shape"),
        (["train", "--model", "lenet300", "--task", "no/such/dir", "--out", "x.pt"], "no/such"),
        (
            [
                "train",
                "--model",
                "resnet8",
                "--task",
                "digits",
                "--width-mult",
                "0",
                "--out",
                "x.pt",
            ],
            "width_mult",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_eval_rejects_a_task_of_another_shape(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(trained), "--task", "mnist1d"]) == 2
    assert "inputs" in capsys.readouterr().err


def test_console_script_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "mobiledl.cli", "models", "--json"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)
    bad = subprocess.run(
        [sys.executable, "-m", "mobiledl.cli", "bench", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_eval_warns_when_the_split_differs_from_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "split.pt"
    args = ["--task", "digits", "--seed", "3", "--split", "0.5,0.25,0.25"]
    assert main(["train", "--model", "lenet300", "--epochs", "1", *args, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), *args, "--no-latency"]) == 0
    assert "may hold the model's training samples" not in capsys.readouterr().err
    assert main(["eval", str(out), "--task", "digits", "--no-latency"]) == 0
    err = capsys.readouterr().err
    assert "--seed 3 --split 0.5,0.25,0.25" in err and "--seed 0 --split 0.6,0.2,0.2" in err
