"""A clip task through the same commands as the image tasks: train -> profile -> export ->
eval (the model file and the ONNX file); one-line errors for a model of another kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobiledl.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")
TASK = "video-motion"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_train_profile_export_eval_a_clip_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pt, onnx = tmp_path / "tsm.pt", tmp_path / "tsm.onnx"
    argv = ["train", "--model", "tsm_resnet8", "--task", TASK, "--image-size", "16"]
    trained = run_json(capsys, *argv, "--epochs", "1", "--width-mult", "0.5", "--out", str(pt))
    profiled = run_json(capsys, "profile", str(pt), "--repeats", "3")
    assert profiled["extra"]["input_shape"] == [1, 8, 1, 16, 16]
    assert profiled["macs"] == trained["macs"] > 0
    exported = run_json(capsys, "export", str(pt), "--out", str(onnx))
    assert exported["extra"]["max_abs_diff"] < 1e-4
    torch_eval = run_json(capsys, "eval", str(pt), "--task", TASK)
    onnx_eval = run_json(capsys, "eval", str(onnx), "--task", TASK)
    assert torch_eval["accuracy"] == pytest.approx(trained["accuracy"], abs=1e-9)
    assert onnx_eval["accuracy"] == pytest.approx(torch_eval["accuracy"], abs=0.01)


def test_profile_a_clip_model_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    tsn = run_json(capsys, "profile", "tsn_resnet8", "--input-shape", "1,8,1,16,16")
    tsm = run_json(capsys, "profile", "tsm_resnet8", "--input-shape", "1,8,1,16,16")
    assert (tsm["params"], tsm["macs"]) == (tsn["params"], tsn["macs"])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--model", "resnet8", "--task", TASK], "'resnet8' takes images"),
        (["train", "--model", "tsm_resnet8", "--task", "digits"], "takes video clips"),
    ],
)
def test_one_line_errors(
    argv: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path / "unused.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


@pytest.mark.slow
def test_video_stream_plays_a_clip_frame_by_frame(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uni, bi = tmp_path / "uni.pt", tmp_path / "bi.pt"
    for model, out in (("tsm_uni_resnet8", uni), ("tsm_resnet8", bi)):
        argv = ["train", "--model", model, "--task", TASK, "--image-size", "16", "--epochs", "1"]
        assert main([*argv, "--width-mult", "0.5", "--out", str(out)]) == 0
    capsys.readouterr()
    frames = run_json(capsys, "video", "stream", str(uni), "--task", TASK, "--clip", "2")
    assert [row["frame"] for row in frames] == list(range(8))
    assert all(row["latency_ms"] > 0 and 0 <= row["prediction"] < 4 for row in frames)
    assert main(["video", "stream", str(bi), "--task", TASK]) == 2
    assert "needs a uni-directional model" in capsys.readouterr().err
    assert main(["video", "stream", str(uni), "--task", TASK, "--clip", "-1"]) == 2
    assert "--clip must lie in [0, 359)" in capsys.readouterr().err
