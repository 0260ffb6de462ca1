"""interleaved_benchmark and LatencyStats: call counts, order, statistics (never wall-clock)."""

from __future__ import annotations

import time

import pytest

from mobiledl.deploy import LatencyStats, clock_for, interleaved_benchmark
from mobiledl.errors import UserError


def _counting_runners(names: list[str], log: list[str]) -> dict[str, object]:
    return {name: (lambda name=name: log.append(name)) for name in names}


@pytest.mark.parametrize(
    ("warmup", "repeats", "rounds"), [(5, 30, None), (0, 7, 3), (2, 1, 1), (1, 10, 10)]
)
def test_every_runner_called_warmup_plus_repeats_times(warmup, repeats, rounds):
    log: list[str] = []
    names = ["a", "b", "c"]
    stats = interleaved_benchmark(_counting_runners(names, log), warmup, repeats, rounds)
    assert list(stats) == names
    for name in names:
        assert log.count(name) == warmup + repeats
        assert stats[name].repeats == repeats
        assert len(stats[name].times_ms) == repeats


def test_rounds_interleave_and_rotate_order():
    log: list[str] = []
    interleaved_benchmark(_counting_runners(["a", "b", "c"], log), warmup=0, repeats=6, rounds=3)
    # 3 rounds of 2 calls each; the first runner of each round rotates a, b, c.
    assert log == list("aabbcc" + "bbccaa" + "ccaabb")


def test_warmup_is_round_robin_before_timing():
    log: list[str] = []
    interleaved_benchmark(_counting_runners(["a", "b"], log), warmup=2, repeats=2, rounds=2)
    assert log[:4] == ["a", "b", "a", "b"]


def test_remainder_spread_over_first_rounds():
    log: list[str] = []
    interleaved_benchmark(_counting_runners(["a", "b"], log), warmup=0, repeats=5, rounds=2)
    assert log == list("aaabbb" + "bbaa")


def test_stats_are_sane_and_context_is_stored():
    stats = interleaved_benchmark(
        {"x": lambda: sum(range(100))}, warmup=1, repeats=20, batch_size=4, threads=2
    )["x"]
    assert 0 <= stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.min_ms <= stats.mean_ms <= max(stats.times_ms)
    assert (stats.batch_size, stats.threads, stats.repeats) == (4, 2, 20)


def test_clock_is_used_for_every_timed_call():
    ticks = iter(range(0, 10_000, 2))  # every call "takes" 2 s on this fake clock
    log: list[str] = []
    stats = interleaved_benchmark(
        _counting_runners(["a", "b"], log), warmup=3, repeats=4, clock=lambda: next(ticks)
    )
    for result in stats.values():
        assert result.times_ms == [2000.0] * 4
        assert result.median_ms == result.p90_ms == result.min_ms == 2000.0


def test_latency_stats_from_times():
    stats = LatencyStats.from_times([4.0, 1.0, 3.0, 2.0, 10.0], batch_size=2)
    assert stats.median_ms == 3.0
    assert stats.min_ms == 1.0
    assert stats.mean_ms == 4.0
    assert stats.median_ms <= stats.p90_ms <= 10.0
    assert stats.per_sample_ms == 1.5
    assert "times_ms" not in stats.to_dict()
    assert stats.to_dict(with_times=True)["times_ms"] == [4.0, 1.0, 3.0, 2.0, 10.0]


def test_to_measurement_fills_latency_fields():
    stats = LatencyStats.from_times([1.0, 2.0, 3.0], batch_size=8, threads=2, engine="onnxruntime")
    measurement = stats.to_measurement("net")
    assert measurement.name == "net"
    assert measurement.latency_ms_median == 2.0
    assert measurement.latency_ms_p90 == stats.p90_ms
    assert (measurement.batch_size, measurement.threads) == (8, 2)
    assert measurement.engine == "onnxruntime"


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
        ({"repeats": 3, "rounds": 4}, "rounds"),
        ({"repeats": 3, "rounds": 0}, "rounds"),
    ],
)
def test_bad_arguments_raise_user_error(kwargs, word):
    with pytest.raises(UserError, match=word):
        interleaved_benchmark({"a": lambda: None}, **kwargs)


def test_no_runners_is_a_user_error():
    with pytest.raises(UserError, match="runner"):
        interleaved_benchmark({})


def test_clock_for_names_the_clock_and_refuses_thread_time_on_several_threads() -> None:
    assert clock_for("wall", [1, 2]) is time.perf_counter
    assert clock_for("thread", [1]) is time.thread_time
    with pytest.raises(UserError, match="needs 1 thread"):
        clock_for("thread", [1, 2])
    with pytest.raises(UserError, match="unknown clock 'cpu'"):
        clock_for("cpu")
