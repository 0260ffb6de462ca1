"""The benchmark harness: dispatch, shared arguments, the result schema and resumable stages."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from benchmarks import available, harness
from benchmarks.__main__ import main
from benchmarks.harness.results import write_atomic
from mobiledl.errors import UserError


def test_unknown_or_missing_name_lists_every_benchmark_on_one_line(capsys) -> None:
    for argv in (["nope"], []):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert all(f"{name}: " in err for name in available())
    assert "prune_channel" in available() and "harness" not in available()


def test_help_lists_benchmarks_and_bad_arguments_are_one_line_errors(capsys) -> None:
    assert main(["--help"]) == 0
    assert "nas_supernet" in capsys.readouterr().out
    assert main(["distill", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --no-such-flag" in err
    assert main(["engine_overhead", "--threads", "2", "--clock", "thread"]) == 2
    assert "needs 1 thread" in capsys.readouterr().err


def test_resolve_fills_only_what_was_not_given(tmp_path: Path) -> None:
    parser = harness.benchmark_parser("demo", "Demo.", many_threads=True, clock=True)
    parser.add_argument("--models", default=None)
    args = harness.parse(parser, ["--smoke", "--threads", "1", "--models", "a,b"])
    harness.resolve(args, {"models": "x", "repeats": 3}, {"models": "y", "repeats": 90})
    assert (args.models, args.repeats, args.threads, args.clock) == ("a,b", 3, [1], "wall")
    assert args.out.is_dir() and args.out.name.startswith("mobiledl-demo-")
    full = harness.parse(parser, [])
    assert harness.resolve(full, {}, {"repeats": 90}).repeats == 90
    assert full.out == Path(harness.cli.RESULTS)
    with pytest.raises(UserError, match="positive integers"):
        harness.parse(parser, ["--threads", "0"])


def test_write_results_uses_the_schema_atomically_with_umask_permissions(tmp_path: Path) -> None:
    parser = harness.benchmark_parser("demo", "Demo.")
    args = harness.parse(parser, ["--out", str(tmp_path), "--seed", "3"])
    old = os.umask(0o027)
    try:
        report = harness.write_results(
            args, [{"x": Path("a"), "t": (1, 2)}], {"ok": True}, lambda r: "# Demo\n"
        )
    finally:
        os.umask(old)
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert tuple(saved) == harness.SCHEMA_KEYS and saved == report
    assert saved["argv"] == ["python", "-m", "benchmarks", "demo", "--out", str(tmp_path),
                             "--seed", "3"]  # fmt: skip
    assert saved["rows"] == [{"x": "a", "t": [1, 2]}] and saved["summary"]["seconds"] >= 0
    assert saved["config"]["seed"] == 3 and "argv" not in saved["config"]
    assert set(saved["machine"]["cpu_flags"]) >= {"avx2", "avx512f", "avx512_vnni"}
    assert len(saved["git_commit"]) >= 40
    for name in ("demo.json", "demo.md"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.md"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = write_atomic(tmp_path / "r.json", "old")
    with pytest.raises(TypeError):
        write_atomic(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_git_commit_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert harness.git_commit(tmp_path) == "unknown"


def test_stage_store_recomputes_only_when_the_key_changes(tmp_path: Path) -> None:
    calls: list[int] = []

    def compute() -> dict[str, tuple[int, ...]]:
        calls.append(1)
        return {"value": (len(calls),)}

    store = harness.StageStore(tmp_path / "stages")
    assert store.json("a", {"k": 1}, compute) == {"value": [1]}
    assert harness.StageStore(tmp_path / "stages").json("a", {"k": 1}, compute) == {"value": [1]}
    assert store.json("a", {"k": 2}, compute) == {"value": [2]} and len(calls) == 2


def test_markdown_table_and_formatting() -> None:
    lines = harness.markdown_table(["a", "b"], [(1, "x")], align="lr")
    assert lines == ["| a | b |", "|---|---:|", "| 1 | x |"]
    assert (harness.pct(0.5), harness.pct(None), harness.yes(False)) == ("50.00", "—", "NO")


def _npz_task(path: Path, seed: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, 1, 8, 8)).astype("float32")
    np.savez(path, x=x, y=np.arange(60) % 3)
    return path


def test_deep_compression_takes_user_tasks_and_budgets(tmp_path: Path) -> None:
    from benchmarks import deep_compression

    data = str(_npz_task(tmp_path / "mine.npz", 0))
    argv = ["--smoke", "--task", data, "--task", "digits", "--baseline-epochs", "3"]
    args = deep_compression.parse_args([*argv, "--split", "0.5,0.25,0.25", "--prune-steps", "2"])
    assert args.task_specs == [data, "digits"] and args.split == "0.5,0.25,0.25"
    assert (args.budget.baseline, args.budget.prune_steps) == (3, 2)
    assert args.budget.lowbit == deep_compression.SMOKE.lowbit  # not given: the smoke budget
    full = deep_compression.parse_args(["--lowbit-epochs", "2"])
    assert full.task_specs == ["digits", "mnist1d"] and full.budget.baseline == 40
    assert full.budget.lowbit == 2


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--task", "digits", "--tasks", "digits"], "--task .* or --tasks, not both"),
        (["--split", "0.5,0.6,0.1"], "split"),
        (["--baseline-epochs", "0"], "positive integer"),
        (["--prune-epochs", "two"], "integers"),
    ],
)
def test_bad_task_or_budget_arguments_are_one_line_errors(extra: list[str], match: str) -> None:
    from benchmarks import deep_compression

    with pytest.raises(UserError, match=match) as caught:
        deep_compression.parse_args(["--smoke", *extra])
    assert "\n" not in str(caught.value)


def test_task_fingerprint_tells_user_tasks_of_the_same_name_apart(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = harness.load_task(str(_npz_task(tmp_path / "a" / "mine.npz", 0)))
    again = harness.load_task(str(tmp_path / "a" / "mine.npz"))
    other = harness.load_task(str(_npz_task(tmp_path / "b" / "mine.npz", 1)))
    resplit = harness.load_task(str(tmp_path / "a" / "mine.npz"), split="0.5,0.25,0.25")
    assert first.name == other.name
    assert harness.task_fingerprint(first) == harness.task_fingerprint(again)
    assert harness.task_fingerprint(first) != harness.task_fingerprint(other)
    assert harness.task_fingerprint(first) != harness.task_fingerprint(resplit)
