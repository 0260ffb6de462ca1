"""The pretrained all-MiniLM-L6-v2 sentence encoder compressed for a CPU: cascade token
pruning (SpAtten, Wang et al. 2021), head pruning (Michel et al. 2019) and int8 linear layers
in ONNX Runtime, alone and combined.

Every variant runs as ONNX Runtime graphs (``mobiledl.deploy.text_encoder``). Accuracy is a
logistic-regression probe on frozen embeddings of each text task (``rt-sentiment``,
``sms-spam``): fitted on train, scored on val (to choose) and test (reported). Cosine: the
mean cosine of a variant's test-split embeddings to the fp32 encoder's. Latency: batch 1 and
8 of 128-token texts (Rotten Tomatoes plot summaries, all 128 tokens real), 1 thread, the
variants timed interleaved, median.

Token-pruning schedules (layers 0-based): ``naive`` is the issue's reference (keep 50% after
the second layer, pool over kept tokens); the cascades keep fewer tokens layer by layer. The
``tokens`` rows of the summary are the fastest schedule whose val accuracy is within 1 point
of fp32 on both tasks; ``int8+tokens`` combines it with int8.

    python -m benchmarks nlp_minilm            # full run (~15 min on 2 cores)
    python -m benchmarks nlp_minilm --smoke    # a minute, into a temporary directory
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from mobiledl.apps.nlp.encoder import SentenceEncoder, load_encoder
from mobiledl.apps.nlp.pretrained import Tokenizer, minilm_folder
from mobiledl.apps.nlp.probe import embed, mean_cosine, probe_accuracy
from mobiledl.compress.prune.heads import prune_heads
from mobiledl.core.clone import clone_module
from mobiledl.data import build_task
from mobiledl.data.text import TextTask, rotten_tomatoes_plots
from mobiledl.deploy.text_encoder import OnnxEncoder

STEM = "nlp_minilm"
TASKS = ("rt-sentiment", "sms-spam")
LENGTH = 128
BATCHES = (1, 8)
HEADS_KEEP = 0.75
SCHEDULES: dict[str, tuple[dict[int, float], str]] = {
    "naive": ({1: 0.5}, "kept"),
    "cascade": ({1: 0.7, 2: 0.5, 3: 0.35}, "carry"),
    "cascade-deep": ({0: 0.8, 1: 0.6, 2: 0.45, 3: 0.3}, "carry"),
}
TOLERANCE = 0.01


@dataclass
class Variant:
    """One compressed encoder: how it is built and its results."""

    name: str
    schedule: str | None = None
    heads_keep: float = 1.0
    int8: bool = False
    results: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = harness.benchmark_parser(STEM, __doc__, threads=False, clock=True)
    parser.set_defaults(clock="thread")
    parser.add_argument("--samples", type=harness.positive_int("--samples"), default=None,
                        help="at most this many texts per split (smoke runs)")  # fmt: skip
    args = harness.parse(parser, argv)
    harness.resolve(args, {"samples": 48, "repeats": 3}, {"samples": None, "repeats": 15})
    return args


def variants(smoke: bool) -> list[Variant]:
    """fp32, int8, head pruning and every token schedule (a smoke run: one schedule); the
    combination comes later."""
    schedules = ["cascade"] if smoke else list(SCHEDULES)
    return [
        Variant("fp32"),
        Variant("int8", int8=True),
        Variant(f"heads {HEADS_KEEP:.0%}", heads_keep=HEADS_KEEP),
        *(Variant(f"tokens {name}", schedule=name) for name in schedules),
    ]


def build(base: SentenceEncoder, variant: Variant, calibration: list[dict]) -> SentenceEncoder:
    """The PyTorch encoder of a variant (before export)."""
    if variant.heads_keep < 1:
        encoder = prune_heads(base, variant.heads_keep, calibration)
    else:
        encoder = clone_module(base)
    schedule, pooling = SCHEDULES[variant.schedule] if variant.schedule else ({}, "carry")
    encoder.set_token_pruning(schedule, pooling)
    return encoder


def limited(task: TextTask, samples: int | None) -> TextTask:
    """``task`` with at most ``samples`` texts per split (smoke runs only)."""
    if samples is None:
        return task
    for split in task.inputs:
        task.inputs[split] = {k: v[:samples] for k, v in task.inputs[split].items()}
        task.labels[split] = task.labels[split][:samples]
    return task


def score(runner: OnnxEncoder, tasks: dict[str, TextTask]) -> dict[str, dict[str, Any]]:
    """Per task: probe accuracy on val and test, and the test embeddings."""
    out = {}
    for name, task in tasks.items():
        embedded = {split: embed(runner, task.inputs[split]) for split in ("train", "val", "test")}
        labels = {split: task.labels[split].numpy() for split in embedded}
        train = (embedded["train"], labels["train"])
        out[name] = {
            "val": probe_accuracy(train, (embedded["val"], labels["val"])),
            "test": probe_accuracy(train, (embedded["test"], labels["test"])),
            "embeddings": embedded["test"],
        }
    return out


def long_texts(batch: int) -> dict[str, torch.Tensor]:
    """``batch`` plot summaries that fill all ``LENGTH`` tokens."""
    tokenizer = Tokenizer(minilm_folder())
    encoded = tokenizer.encode(list(rotten_tomatoes_plots()), LENGTH)
    full = encoded["attention_mask"].sum(1) == LENGTH
    index = torch.nonzero(full).flatten()[:batch]
    return {k: v[index] for k, v in encoded.items()}


def timed(
    runners: dict[str, Callable[..., torch.Tensor]], args: argparse.Namespace
) -> dict[str, dict]:
    """``{variant: {batch: cell}}`` at every batch size, all variants interleaved."""
    cells: dict[str, dict] = {name: {} for name in runners}
    for batch in BATCHES:
        x = long_texts(batch)
        calls: dict[str, Callable[[], object]] = {
            name: functools.partial(runner, x["input_ids"], x["attention_mask"])
            for name, runner in runners.items()
        }
        for name, cell in harness.interleaved(
            calls, repeats=args.repeats, warmup=2, clock=args.clock, reference="fp32", threads=1
        ).items():
            cells[name][str(batch)] = cell
    return cells


def run_variant(
    variant: Variant,
    base: SentenceEncoder,
    tasks: dict[str, TextTask],
    folder: Path,
    cal: list,
    lengths: tuple[int, ...],
) -> Callable[..., torch.Tensor]:
    """Build, export and score one variant; its 1-thread runner of the 128-token graph."""
    encoder = build(base, variant, cal)
    deployed = OnnxEncoder.export(encoder, folder / variant.name.replace(" ", "_"), lengths,
                           int8=variant.int8, threads=None)  # fmt: skip
    variant.results = score(deployed, tasks)
    variant.results["size_bytes"] = deployed.file_bytes(LENGTH)
    return deployed.runner(LENGTH, threads=1)


def chosen_schedule(done: list[Variant]) -> str | None:
    """The fastest-by-design (latest-listed) schedule within ``TOLERANCE`` of fp32 on val."""
    fp32 = done[0].results
    ok = [
        v.schedule
        for v in done
        if v.schedule and all(v.results[t]["val"] >= fp32[t]["val"] - TOLERANCE for t in TASKS)
    ]
    return ok[-1] if ok else None


def rows_of(done: list[Variant], cells: dict[str, dict]) -> list[dict[str, Any]]:
    fp32 = done[0].results
    return [
        {
            "variant": v.name,
            "schedule": SCHEDULES[v.schedule][0] if v.schedule else None,
            "pooling": SCHEDULES[v.schedule][1] if v.schedule else None,
            "heads_keep": v.heads_keep,
            "int8": v.int8,
            "size_bytes": v.results["size_bytes"],
            **{f"{t}_{s}": v.results[t][s] for t in TASKS for s in ("val", "test")},
            **{
                f"{t}_cosine": mean_cosine(fp32[t]["embeddings"], v.results[t]["embeddings"])
                for t in TASKS
            },
            "latency": cells[v.name],
        }
        for v in done
    ]


def checks(rows: list[dict[str, Any]], chosen: str | None) -> dict[str, Any]:
    """The issue's bars, from the rows."""
    by = {r["variant"]: r for r in rows}
    fp32 = by["fp32"]

    def drop(row: dict, task: str) -> float:
        return fp32[f"{task}_test"] - row[f"{task}_test"]

    def speed(row: dict, batch: int = 8) -> float:
        return row["latency"][str(batch)]["speedup"]

    def bar(row: dict, speedup: float, drop_limit: float, **extra: Any) -> dict[str, Any]:
        drops = max(drop(row, t) for t in TASKS)
        met = speed(row) >= speedup and drops <= drop_limit and all(extra.values())
        return {"speedup_b8": speed(row), "max_drop": drops, "met": met}

    out: dict[str, Any] = {"chosen_schedule": chosen}
    if chosen:
        out["tokens"] = bar(by[f"tokens {chosen}"], 1.4, 0.01)
    out["heads"] = bar(by[f"heads {HEADS_KEEP:.0%}"], 1.0 + 1e-9, 0.01)
    int8 = by["int8"]
    cosine = min(int8[f"{t}_cosine"] for t in TASKS)
    out["int8"] = {**bar(int8, 2.0, 0.005, cosine=cosine >= 0.99), "min_cosine": cosine}
    if "int8+tokens" in by:
        out["int8_tokens"] = bar(by["int8+tokens"], 3.0, 0.015)
    return out


def markdown(report: dict[str, Any]) -> str:
    config, summary = report["config"], report["summary"]
    table = harness.markdown_table(
        ["variant", "RT test (val)", "SMS test (val)", "cos RT / SMS", "b1 ms (x)", "b8 ms (x)",
         "size MB"],
        [
            (r["variant"],
             f"{harness.pct(r['rt-sentiment_test'])} ({harness.pct(r['rt-sentiment_val'])})",
             f"{harness.pct(r['sms-spam_test'])} ({harness.pct(r['sms-spam_val'])})",
             f"{r['rt-sentiment_cosine']:.3f} / {r['sms-spam_cosine']:.3f}",
             *(f"{r['latency'][b]['median_ms']:.1f} ({r['latency'][b]['speedup']:.2f}x)"
               for b in ("1", "8")),
             f"{r['size_bytes'] / 1e6:.1f}")
            for r in report["rows"]
        ],
        align="lrrrrrr",
    )  # fmt: skip
    bars = [f"- {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in bar.items())
            for name, bar in summary.items() if isinstance(bar, dict)]  # fmt: skip
    schedules = [f"- {r['variant'].split()[1]}: keep {r['schedule']} (pooling {r['pooling']})"
                 for r in report["rows"] if r["schedule"] and not r["int8"]]  # fmt: skip
    lines = [
        "# all-MiniLM-L6-v2 compressed: token pruning, head pruning, int8 (ONNX Runtime)",
        "",
        "Probe: logistic regression on frozen embeddings, fitted on train; test (val) accuracy. "
        "Cosine to fp32 on the test texts. Latency: 128-token texts, 1 thread, median of "
        f"{config['repeats']} interleaved runs, {harness.clock_text(config['clock'])}; "
        "speed-up over fp32 ONNX Runtime."
        + (" SMOKE RUN: numbers are meaningless." if config["smoke"] else ""),  # fmt: skip
        "",
        *table,
        "",
        "Token schedules (layer index from 0: keep ratio of each text's tokens):",
        *schedules,
        "",
        f"Chosen schedule (fastest within 1 point of fp32 on val): {summary['chosen_schedule']}",
        "",
        *bars,
        "",
        harness.machine_line(report),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Build, score and time every variant; write JSON + markdown."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    tasks = {name: limited(build_task(name, seed=args.seed), args.samples) for name in TASKS}
    base = load_encoder(minilm_folder())
    cal = [b for b, _ in list(tasks[TASKS[0]].loader("train", 32))[:8]]
    done, timing = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        lengths = (LENGTH,) if args.smoke else (16, 32, 64, LENGTH)
        for variant in variants(args.smoke):
            timing[variant.name] = run_variant(variant, base, tasks, Path(tmp), cal, lengths)
            done.append(variant)
        chosen = chosen_schedule(done)
        if chosen:
            both = Variant("int8+tokens", schedule=chosen, int8=True)
            timing[both.name] = run_variant(both, base, tasks, Path(tmp), cal, lengths)
            done.append(both)
        cells = timed(timing, args)
    rows = rows_of(done, cells)
    return harness.write_results(args, rows, checks(rows, chosen), markdown,
                                 constants={"length": LENGTH, "heads_keep": HEADS_KEEP},
                                 packages=("onnxruntime", "torch"))  # fmt: skip
