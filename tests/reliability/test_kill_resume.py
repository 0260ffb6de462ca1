"""``kill -9`` at random points of ``mobiledl train`` and ``mobiledl run``, restarting with
``--resume`` each time: no finished epoch is lost or done twice, and the run ends with exactly
the model and numbers of an uninterrupted run.

Each command is killed ``KILLS`` times. The kill points are seeded and spread over the run: the
uninterrupted run is watched to count its checkpoint writes (one per finished epoch, one per
finished step), each kill waits for a random number of them and then a random fraction of the
time between two, so kills land in every part of an epoch (training, validation, the
checkpoint being written) and between steps. After each kill the checkpoints may only have
moved forward, and the next start must say it resumes right after the last epoch they hold.

The kill loops run in processes forked from one warmed-up interpreter (``forkrunner.py``), so
the test is not dominated by start-up; the last ``--resume`` that finishes the run is a fresh
``python -m mobiledl.cli`` process.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from mobiledl.models import read_model_record
from mobiledl.train.resume import checkpoint_epoch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc: Linux"),
]

KILLS = 10
SEED = 20261204
ROOT = Path(__file__).resolve().parents[2]
TRAIN_EPOCHS = 24
RECIPE = {
    "name": "kill-resume",
    "task": {"name": "digits"},
    "model": {"arch": "lenet300"},
    "measure": {"latency": False},
    "report": {"sensitivity": []},
    "steps": [
        {"step": "train", "epochs": 10},
        {
            "step": "prune",
            "granularity": "element",
            "criterion": "l1",
            "sparsity": 0.6,
            "finetune": {"epochs": 6, "lr": 0.01},
        },
    ],
}


def environment() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


class ForkRunner:
    """Client of ``forkrunner.py``: start a command in a forked child, kill it, wait for it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("forkrunner.py"))],
            env=environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._reply() == {"ready": True}

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        assert line, "the fork runner died"
        return json.loads(line)

    def _ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def start(self, argv: list[str], log: Path) -> int:
        request = {"argv": argv, "stdout": str(log.with_suffix(".out")), "stderr": str(log)}
        return self._ask(request)["pid"]

    def wait(self, pid: int) -> dict:
        return self._ask({"wait": pid})

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def forks() -> Iterator[ForkRunner]:
    runner = ForkRunner()
    yield runner
    runner.close()


def running(pid: int) -> bool:
    """The child has not exited (a zombie waiting to be reaped has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class Writes:
    """Checkpoint writes seen so far: each finished epoch (and step) replaces a file."""

    pattern: Callable[[], list[Path]]
    seen: set[tuple[str, int, int, int]] = field(default_factory=set)
    times: list[float] = field(default_factory=list)

    def poll(self) -> int:
        for path in self.pattern():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            key = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if key not in self.seen:
                self.seen.add(key)
                self.times.append(time.monotonic())
        return len(self.seen)


def listing(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)``, sorted; empty if a folder vanishes while it is listed (the run
    deletes a step's epoch folder once the step is recorded, at any moment of a poll)."""
    try:
        return sorted(folder.glob(pattern))
    except FileNotFoundError:
        return []


def text(path: Path) -> str:
    """What a child wrote so far ("" before it opened the file)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def wait_for(condition: Callable[[], bool], pid: int, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert running(pid), f"the command ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.003)


@dataclass
class Command:
    """How to run, watch and check one command under the kill loop."""

    argv: list[str]  # with --resume
    marker: re.Pattern[str]  # stderr shows the command is past its start-up
    writes: Callable[[], list[Path]]
    progress: Callable[[], dict[str, int]]  # what the checkpoints hold (only moves forward)


def uninterrupted(forks: ForkRunner, command: Command, log: Path) -> tuple[int, float, str]:
    """Run the command to the end in a forked child; its writes, seconds per write, stdout."""
    writes = Writes(command.writes)
    pid = forks.start(command.argv, log)
    while running(pid):
        writes.poll()
        time.sleep(0.003)
    assert forks.wait(pid) == {"exit": 0}, log.read_text()[-2000:]
    gaps = [b - a for a, b in zip(writes.times, writes.times[1:], strict=False)]
    assert len(writes.seen) >= 10, "too few checkpoint writes to spread kills over"
    return len(writes.seen), sum(gaps) / len(gaps), log.with_suffix(".out").read_text()


def kill_loop(
    forks: ForkRunner, command: Command, total: int, gap: float, logs: Path, rng: random.Random
) -> list[dict]:
    """``KILLS`` seeded kill points over the run, a restart with ``--resume`` before each."""
    # the last kill point is 3 writes before the end: a write missed by the poll (two within
    # one poll on a loaded machine) cannot leave a kill waiting for a write that never comes
    targets = sorted(rng.uniform(0, total - 3) for _ in range(KILLS))
    writes, kills = Writes(command.writes), []
    before = command.progress()
    for attempt, target in enumerate(targets):
        log = logs / f"attempt-{attempt:02d}.log"
        pid = forks.start(command.argv, log)
        wait_for(lambda log=log: command.marker.search(text(log)) is not None, pid, "start")
        count = int(target)
        wait_for(lambda count=count: writes.poll() >= count, pid, f"{count} checkpoint writes")
        time.sleep((target - int(target)) * gap)
        assert running(pid), f"attempt {attempt} ended before its kill point"
        os.kill(pid, signal.SIGKILL)
        assert forks.wait(pid) == {"signal": signal.SIGKILL}
        writes.poll()
        after = command.progress()
        check_resumed_where_it_stopped(log.read_text(), before, after, attempt)
        for name, epoch in before.items():  # no finished epoch lost
            assert after.get(name, epoch) >= epoch, f"attempt {attempt}: {name} went back"
        kills.append({"target": round(target, 2), "before": before, "after": after})
        before = after
    return kills


RESUMING = re.compile(r"resuming training from (\S+): (\d+) of (\d+) epochs done")


def check_resumed_where_it_stopped(
    stderr: str, before: dict[str, int], after: dict[str, int], attempt: int
) -> None:
    """Every training this start resumed continued right after its last finished epoch, and
    one that moved on from a checkpoint did so by resuming it (no epoch done twice)."""
    resumed = {Path(path).name: int(done) for path, done, _ in RESUMING.findall(stderr)}
    for name, done in resumed.items():
        assert name in before, f"attempt {attempt} resumed {name}, which held nothing before"
        assert done == before[name] + 1, f"attempt {attempt}: {name} resumed at {done}, {before}"
    for name, epoch in before.items():
        if name != "steps" and after.get(name, epoch) > epoch:
            assert name in resumed, f"attempt {attempt} trained {name} again from the start"


def final_run(argv: list[str], log: Path) -> str:
    """Finish the run in a fresh ``python -m mobiledl.cli`` process; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "mobiledl.cli", *argv],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log.write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_model_record(path)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{a.name}: {key} differs"


def report(name: str, kills: list[dict], seconds: float) -> None:
    moved = sum(k["after"] != k["before"] for k in kills)
    print(f"\n{name}: {len(kills)} kills in {seconds:.1f} s, {moved} after progress; {kills}")


def test_kill_9_during_train_resumes_to_the_same_model(forks: ForkRunner, tmp_path: Path) -> None:
    started = time.monotonic()
    task = ["--model", "lenet300", "--task", "digits", "--epochs", str(TRAIN_EPOCHS)]

    def command(out: Path) -> Command:
        ckpt = out.with_name(f"{out.name}.ckpt")

        def progress() -> dict[str, int]:
            epoch = checkpoint_epoch(ckpt)
            return {} if epoch is None else {ckpt.name: epoch}

        return Command(
            ["train", *task, "--out", str(out), "--resume", "--json"],
            re.compile(r"training lenet300 on"),
            lambda: [ckpt],
            progress,
        )

    (tmp_path / "logs").mkdir()
    reference = tmp_path / "reference" / "m.pt"
    total, gap, stdout = uninterrupted(forks, command(reference), tmp_path / "logs" / "ref.log")
    assert total == TRAIN_EPOCHS

    out = tmp_path / "killed" / "m.pt"
    rng = random.Random(SEED)
    kills = kill_loop(forks, command(out), total, gap, tmp_path / "logs", rng)
    assert len(kills) >= 10 and kills[-1]["after"], "no kill landed after an epoch"
    final = json.loads(final_run(command(out).argv, tmp_path / "logs" / "final.log"))
    expected = json.loads(stdout)
    assert final["extra"].pop("out") == str(out)
    expected["extra"].pop("out")
    assert final == expected
    assert_same_weights(out, reference)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.pt"]  # no .ckpt, .partial, .tmp
    report("mobiledl train", kills, time.monotonic() - started)


def test_kill_9_during_run_resumes_to_the_same_results(forks: ForkRunner, tmp_path: Path) -> None:
    started = time.monotonic()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")

    def command(out: Path) -> Command:
        def writes() -> list[Path]:
            return listing(out / "checkpoints", "*.pt") + listing(
                out / "checkpoints", "*.epochs/*.pt"
            )

        def progress() -> dict[str, int]:
            held: dict[str, int] = {}
            state = out / "state.json"
            if state.is_file():
                held["steps"] = len(json.loads(state.read_text())["steps"])
            for path in listing(out / "checkpoints", "*.epochs/*.pt"):
                held[path.name] = checkpoint_epoch(path)
            return held

        return Command(
            ["run", str(recipe), "--out", str(out), "--resume", "--json"],
            re.compile(r"\[\d+/\d+\]"),
            writes,
            progress,
        )

    (tmp_path / "logs").mkdir()
    reference = tmp_path / "reference"
    total, gap, stdout = uninterrupted(forks, command(reference), tmp_path / "logs" / "ref.log")

    out = tmp_path / "killed"
    rng = random.Random(SEED + 1)
    kills = kill_loop(forks, command(out), total, gap, tmp_path / "logs", rng)
    assert len(kills) >= 10
    final = json.loads(final_run(command(out).argv, tmp_path / "logs" / "final.log"))
    assert final == json.loads(stdout)
    for model in sorted((reference / "checkpoints").glob("*.pt")):
        assert_same_weights(out / "checkpoints" / model.name, model)
    assert not list(out.glob("checkpoints/*.epochs")) and not list(out.rglob(".*.tmp"))
    report("mobiledl run", kills, time.monotonic() - started)
