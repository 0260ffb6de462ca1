"""``mobiledl adapt``: a model file in, an adapted model file out, the memory in the JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mobiledl.cli import main
from mobiledl.models import create_model, load_model, save_model


# Deliberately not the shared module-scoped ``single_thread`` (tests/conftest.py): this copy
# was per-test, so the module-scoped ``pretrained`` fixture builds its model with the default
# thread count, and the count is restored after every test. It overrides the shared one here.
@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("adapt") / "mcunet.pt"
    return save_model(path, create_model("mcunet", 10, 1, 8, width_mult=0.5))


def adapt_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["adapt", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_adapt_tinytl_round_trip(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapted.pt"
    argv = [str(pretrained), "--task", "digits", "--method", "tinytl", "--epochs", "1"]
    result = adapt_json(capsys, *argv, "--batch-size", "64", "--out", str(out))
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["peak_memory_bytes"] > 0
    extra = result["extra"]
    assert abs(extra["measured_peak_memory_bytes"] - result["peak_memory_bytes"]) <= (
        0.15 * extra["measured_peak_memory_bytes"]
    )
    assert 0 < extra["trainable_params"] < result["params"]
    assert extra["plan"]["lite_residual_blocks"]
    loaded = load_model(out)
    evaluated = json.loads(_run_json(capsys, "eval", str(out), "--task", "digits"))
    assert evaluated["accuracy"] == pytest.approx(result["accuracy"], abs=1e-6)
    assert any(t["kind"] == "tinytl" for t in loaded.arch["transforms"])


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--json"]) == 0
    return capsys.readouterr().out


def test_adapt_sparse_within_budget(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sparse.pt"
    argv = [str(pretrained), "--task", "digits", "--method", "sparse", "--epochs", "1"]
    budget_kb = 2048
    result = adapt_json(
        capsys,
        *argv,
        *("--memory-budget-kb", str(budget_kb), "--batch-size", "32", "--probe-steps", "1"),
        *("--out", str(out)),
    )
    assert result["peak_memory_bytes"] <= budget_kb * 1024
    assert result["extra"]["measured_peak_memory_bytes"] <= budget_kb * 1024
    assert "layers" in result["extra"]["plan"]
    assert load_model(out).model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_budget_too_small_is_one_line_and_exit_2(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["adapt", str(pretrained), "--task", "digits", "--method", "sparse"]
    code = main([*argv, "--memory-budget-kb", "4", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "minimum" in err and "KB" in err
    assert not (tmp_path / "x.pt").exists()


def test_unknown_method_is_a_user_error(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["adapt", str(pretrained), "--task", "digits", "--method", "everything"]
    assert main([*argv, "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--method must be one of 'full'" in err[0]


def test_adapt_tinytl_under_a_budget_adapts_the_last_blocks_that_fit(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(pretrained), "--task", "digits", "--epochs", "1", "--batch-size", "64"]
    whole = adapt_json(capsys, *argv, "--method", "tinytl", "--out", str(tmp_path / "a.pt"))
    last = adapt_json(capsys, *argv, "--method", "last", "--out", str(tmp_path / "b.pt"))
    budget_kb = (whole["peak_memory_bytes"] + last["peak_memory_bytes"]) // 2048
    out = tmp_path / "tail.pt"
    budget = ("--memory-budget-kb", str(budget_kb))
    result = adapt_json(capsys, *argv, "--method", "tinytl", *budget, "--out", str(out))
    plan = result["extra"]["plan"]
    assert result["peak_memory_bytes"] <= budget_kb * 1024
    assert 1 <= plan["last_blocks"] == len(plan["lite_residual_blocks"])
    assert len(plan["lite_residual_blocks"]) < len(whole["extra"]["plan"]["lite_residual_blocks"])
    assert load_model(out).model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    roomy = ("--memory-budget-kb", str(whole["peak_memory_bytes"] // 1024 + 1))
    same = adapt_json(capsys, *argv, "--method", "tinytl", *roomy, "--out", str(tmp_path / "c.pt"))
    assert same["extra"]["plan"]["last_blocks"] is None
    assert same["accuracy"] == whole["accuracy"]  # fitting the budget leaves the run unchanged
