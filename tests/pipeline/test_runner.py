"""The runner checkpoints after every step, resumes after the last finished one, and a
``kill -9`` in the middle of a step loses no finished step."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mobiledl.errors import UserError
from mobiledl.pipeline import run_recipe

SRC = Path(__file__).resolve().parents[2] / "src"
HEADER = {
    "name": "tiny",
    "task": {"name": "digits"},
    "model": {"arch": "lenet300"},
    "measure": {"latency": False},
    "report": {"sensitivity": []},
}


pytestmark = pytest.mark.usefixtures("single_thread")


def write_recipe(path: Path, steps: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({**HEADER, "steps": steps}), encoding="utf-8")
    return path


def fingerprint(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


TWO_STEPS = [
    {"step": "train", "epochs": 1},
    {"step": "factorize", "energy": 0.6, "round_to": 8},
]


def test_resume_skips_finished_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mobiledl")
    out = tmp_path / "run"
    first = run_recipe(write_recipe(tmp_path / "a.yaml", TWO_STEPS), out, progress=False)
    assert [m.name for m in first] == ["train", "factorize"]
    files = {p.name: fingerprint(p) for p in (out / "checkpoints").glob("*.pt")}
    assert set(files) == {"00-input.pt", "01-train.pt", "02-factorize.pt"}
    caplog.clear()

    longer = write_recipe(tmp_path / "b.yaml", [*TWO_STEPS, {"step": "finetune", "epochs": 1}])
    with pytest.raises(UserError, match="pass --resume"):
        run_recipe(longer, out, progress=False)
    measurements = run_recipe(longer, out, resume=True, progress=False)
    log = caplog.text
    assert "2 of 3 steps done, skipping them" in log
    assert "[1/3]" not in log and "[2/3]" not in log and "[3/3] finetune" in log
    assert [m.name for m in measurements] == ["train", "factorize", "finetune"]
    assert measurements[:2] == first
    assert {p.name: fingerprint(p) for p in (out / "checkpoints").glob("0[0-2]-*.pt")} == files
    assert (out / "report.html").is_file()
    assert json.loads((out / "report.json").read_text())["layer_times"] == {}  # latency off

    changed = write_recipe(tmp_path / "c.yaml", [TWO_STEPS[0], {**TWO_STEPS[1], "energy": 0.7}])
    with pytest.raises(UserError, match="ran more steps than the recipe has"):
        run_recipe(changed, out, resume=True, progress=False)
    changed = write_recipe(
        tmp_path / "c.yaml", [TWO_STEPS[0], {**TWO_STEPS[1], "energy": 0.7}, {"step": "export"}]
    )
    with pytest.raises(UserError, match="step 1 'factorize' changed"):
        run_recipe(changed, out, resume=True, progress=False)


def run_cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "mobiledl.cli", "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_running_step(state_file: Path, index: int, process: subprocess.Popen) -> dict:
    """Poll the state until step ``index`` is running; return that state."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state["running"] and state["running"]["index"] == index:
                return state
        time.sleep(0.02)
    process.kill()
    pytest.fail("the run never reached the step to interrupt")


def test_kill_9_mid_step_loses_no_finished_step(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        [
            {"step": "train", "epochs": 1},
            {"step": "finetune", "epochs": 10},
            {"step": "factorize", "energy": 0.6},
        ],
    )
    out = tmp_path / "run"
    process = run_cli(str(recipe), "--out", str(out))
    wait_for_running_step(out / "state.json", 1, process)  # step 1 has started: kill it
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads((out / "state.json").read_text())  # intact: written atomically
    assert [s["name"] for s in state["steps"]] == ["train"]
    trained = out / state["steps"][0]["model"]
    before = fingerprint(trained)

    resumed = run_cli(str(recipe), "--out", str(out), "--resume", "--json")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-2000:]
    assert "1 of 3 steps done, skipping them" in stderr and "[1/3]" not in stderr
    measurements = json.loads(stdout)
    assert [m["name"] for m in measurements] == ["train", "finetune", "factorize"]
    assert all(m["accuracy"] is not None and m["macs"] for m in measurements)
    assert fingerprint(trained) == before
    assert not list(out.rglob(".*.tmp"))
    assert (out / "report.html").is_file()


def test_a_token_task_recipe_trains_and_exports(tmp_path: Path) -> None:
    recipe = {
        **HEADER,
        "name": "tokens",
        "task": {"name": "mnist1d-tokens"},
        "model": {"arch": "seq_cnn", "width_mult": 0.25},
        "steps": [{"step": "train", "epochs": 1}, {"step": "export", "file": "seq.onnx"}],
    }
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    trained, exported = run_recipe(path, tmp_path / "run", progress=False)
    assert trained.accuracy > 0.15 and exported.extra["accuracy_of"] == "seq.onnx"
    assert exported.accuracy == pytest.approx(exported.extra["pytorch_accuracy"], abs=2e-3)
    assert "inputs [40]" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")


def test_report_times_the_input_and_final_model_per_layer(tmp_path: Path) -> None:
    recipe = tmp_path / "timed.yaml"
    timed = {**HEADER, "measure": {"latency": True, "repeats": 3}}
    recipe.write_text(yaml.safe_dump({**timed, "steps": [TWO_STEPS[0]]}), encoding="utf-8")
    run_recipe(recipe, tmp_path / "run", progress=False)
    layer_times = json.loads((tmp_path / "run" / "report.json").read_text())["layer_times"]
    assert list(layer_times) == ["input", "train"]  # before the first step, the final model
    assert all(sum(times.values()) > 0 for times in layer_times.values())
    assert "engine time per layer" in (tmp_path / "run" / "report.html").read_text()
