"""The benchmark harness: one argument parser, machine description, interleaved timing,
markdown tables and one result schema for every benchmark in ``benchmarks/``.

A benchmark module builds its parser with ``benchmark_parser``, parses with ``parse``, runs,
and hands its rows and summary to ``write_results``, which writes
``{benchmark, git_commit, argv, config, machine, created, rows, summary}`` as JSON and the
benchmark's markdown beside it, both atomically.
"""

from benchmarks.harness.cli import (
    add_compress_arguments,
    add_seeds_argument,
    benchmark_parser,
    names,
    parse,
    positive_int,
    positive_ints,
    resolve,
    resolve_compress,
)
from benchmarks.harness.machine import machine_info
from benchmarks.harness.peers import nncf_quantize, ort_quantize_static, quiet
from benchmarks.harness.results import SCHEMA_KEYS, git_commit, write_results
from benchmarks.harness.stages import StageStore
from benchmarks.harness.tables import machine_line, markdown_table, pct, plural, yes
from benchmarks.harness.tasks import (
    add_task_arguments,
    calibration_task,
    load_task,
    resolve_tasks,
    task_fingerprint,
    task_summary,
    train_baseline,
)
from benchmarks.harness.timing import clock_text, interleaved, onnx_grid, onnx_speedups

__all__ = [
    "add_seeds_argument",
    "add_compress_arguments",
    "add_task_arguments",
    "SCHEMA_KEYS",
    "StageStore",
    "benchmark_parser",
    "calibration_task",
    "clock_text",
    "git_commit",
    "interleaved",
    "load_task",
    "machine_info",
    "machine_line",
    "markdown_table",
    "names",
    "nncf_quantize",
    "onnx_grid",
    "onnx_speedups",
    "ort_quantize_static",
    "parse",
    "pct",
    "plural",
    "positive_int",
    "positive_ints",
    "quiet",
    "resolve",
    "resolve_compress",
    "resolve_tasks",
    "task_fingerprint",
    "task_summary",
    "train_baseline",
    "write_results",
    "yes",
]
