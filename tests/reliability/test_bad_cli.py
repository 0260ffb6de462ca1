"""Bad command lines: each exits with 2 and one line naming the problem, and writes nothing.

Cases run ``mobiledl.cli.main`` in-process. An argv is written as one string split on
spaces; ``{out:NAME}`` is a path in the case's own folder, ``{existing}`` a file there that
must stay as it was, ``{in:NAME}`` one of the session's input files (``badinput.Inputs``),
``{long_name}`` a 300-character name, ``{long_path}`` a 6,000-character path, ``{empty}`` an
empty argument.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from badinput import Inputs, Refused, fill

TRAIN = "train --model lenet5 --task digits --out {existing}"
PROFILE = "profile lenet5 --no-latency"
PRUNE = "prune {model} --task digits --out {existing} --sparsity 0.5"
CHANNEL = "prune {model} --task digits --out {existing} --granularity channel"
QUANTIZE = "quantize {model} --task digits --out {existing}"
ADAPT = "adapt {model} --task digits --out {existing}"


def apply(method: str) -> str:
    return f"apply {method} {{model}} --task digits --out {{existing}}"


# (id, argv, regex the error line must match)
OUTPUT_PATHS = [
    ("export-out-dir", "export {model} --out {out:}", "is a directory"),
    ("export-long-name", "export {model} --out {out:{long_name}}", "300 characters"),
    ("export-long-path", "export {model} --out {long_path}", "characters; the limit is"),
    ("export-under-file", "export {model} --out {in:a_file}/x.onnx", "a_file is not a directory"),
    ("export-empty", "export {model} --out {empty}", "non-empty path"),
    ("train-out-dir", "train --model lenet5 --task digits --out {out:}", "is a directory"),
    ("train-long-name", "train --model lenet5 --task digits --out {long_name}", "characters"),
    ("prune-out-dir", "prune {model} --task digits --out {out:}", "is a directory"),
    ("prune-plot-dir", f"{PRUNE} --sensitivity-plot {{out:}}", "is a directory"),
    ("quantize-out-dir", "quantize {model} --task digits --out {out:}", "is a directory"),
    ("quantize-onnx-dir", f"{QUANTIZE} --onnx {{out:}}", "is a directory"),
    ("quantize-onnx-long", f"{QUANTIZE} --onnx {{long_name}}", "300 characters"),
    ("adapt-out-long", "adapt {model} --task digits --out {out:{long_name}}", "characters"),
    ("apply-artifact-file", f"{apply('ptq')} --artifact {{in:a_file}}/q.onnx", "not a directory"),
    ("run-out-file", "run {in:recipe.yaml} --out {existing}", "exists and is not a directory"),
    ("run-out-long", "run {in:recipe.yaml} --out {out:{long_name}}", "characters"),
    ("demo-out-file", "demo --out {existing}", "exists and is not a directory"),
    ("nas-extract-out-dir", "nas extract --supernet {model} --out {out:}", "is a directory"),
    (
        "nas-search-out-file",
        "nas search --supernet {model} --task digits --macs 1000 --out {existing}",
        "not a directory",
    ),
]

TRAINING_OPTIONS = [
    ("train-epochs-negative", f"{TRAIN} --epochs -1", "epochs must be >= 0"),
    ("train-epochs-text", f"{TRAIN} --epochs x", "invalid int value"),
    ("train-epochs-float", f"{TRAIN} --epochs 1.5", "invalid int value"),
    ("train-batch-zero", f"{TRAIN} --batch-size 0", "batch_size must be >= 1"),
    ("train-lr-nan", f"{TRAIN} --lr nan", "TrainConfig.lr must be a finite number"),
    ("train-lr-inf", f"{TRAIN} --lr inf", "lr must be a finite number"),
    ("train-lr-negative", f"{TRAIN} --lr -1", "lr must be a finite number >= 0"),
    ("train-lr-text", f"{TRAIN} --lr fast", "invalid float value"),
    (
        "train-smoothing-two",
        f"{TRAIN} --label-smoothing 2",
        r"label_smoothing must lie in \[0, 1\)",
    ),
    ("train-smoothing-negative", f"{TRAIN} --label-smoothing -0.1", "label_smoothing must lie"),
    ("train-smoothing-nan", f"{TRAIN} --label-smoothing nan", "label_smoothing must be a finite"),
    ("train-width-zero", f"{TRAIN} --width-mult 0", "width_mult must be a finite number > 0"),
    ("train-width-nan", f"{TRAIN} --width-mult nan", "width_mult must be a finite number"),
    ("train-width-inf", f"{TRAIN} --width-mult inf", "width_mult must be a finite number"),
    ("train-width-huge", f"{TRAIN} --width-mult 1e5", "parameters\\) needs about .* of memory"),
    ("train-image-zero", f"{TRAIN} --image-size 0", "image size must be a positive int"),
    ("train-image-negative", f"{TRAIN} --image-size -3", "image size must be a positive int"),
    ("train-image-text", f"{TRAIN} --image-size big", "invalid int value: 'big'"),
    ("train-image-huge", f"{TRAIN} --image-size 100000", "data resized to 100000x100000 needs"),
    ("train-seed-negative", f"{TRAIN} --seed -1", r"seed must be an integer in \[0, 4294967295\]"),
    ("train-seed-huge", f"{TRAIN} --seed {2**40}", r"seed must be an integer in \[0,"),
    ("train-seed-text", f"{TRAIN} --seed abc", "expected an integer seed"),
    ("train-optimizer", f"{TRAIN} --optimizer lion", "invalid choice: 'lion'"),
    ("train-model-unknown", "train --model gpt5 --task digits --out {existing}", "unknown model"),
    ("train-task-unknown", "train --model lenet5 --task nope --out {existing}", "unknown task"),
    ("train-teacher-missing", f"{TRAIN} --teacher {{out:none.pt}}", "model file not found"),
    ("train-memory-limit", f"{TRAIN} --image-size 512 --max-memory-gb 0.01", "limit of 0.01 GiB"),
    ("train-memory-limit-zero", f"{TRAIN} --max-memory-gb 0", "must be a finite number > 0"),
    ("train-memory-limit-nan", f"{TRAIN} --max-memory-gb nan", "max-memory-gb"),
    ("train-memory-limit-text", f"{TRAIN} --max-memory-gb lots", "expected a positive number"),
]

PROFILE_AND_BENCH_OPTIONS = [
    (
        "profile-shape-huge",
        f"{PROFILE} --input-shape 1,3,100000,100000",
        r"input shape \(1, 3, 100000, 100000\) needs about [\d.]+ GiB of memory",
    ),
    (
        "profile-shape-limit",
        f"{PROFILE} --input-shape 1,3,512,512 --max-memory-gb 0.001",
        "more than the limit of 0.001 GiB",
    ),
    ("profile-shape-zero", f"{PROFILE} --input-shape 1,3,0,8", "4 positive integers"),
    ("profile-shape-three", f"{PROFILE} --input-shape 1,3,8", "4 positive integers"),
    ("profile-shape-text", f"{PROFILE} --input-shape a,b,c,d", "must be integers"),
    ("profile-shape-and-task", f"{PROFILE} --input-shape 1,1,8,8 --task digits", "not both"),
    ("profile-file-and-shape", "profile {model} --input-shape 1,1,8,8", "sets its own input"),
    ("profile-file-and-task", "profile {model} --task digits", "sets its own input shape"),
    ("profile-classes-one", f"{PROFILE} --num-classes 1", "num_classes must be an integer >= 2"),
    ("profile-classes-huge", f"{PROFILE} --num-classes {10**9}", "parameters\\) needs about"),
    ("profile-bits-zero", f"{PROFILE} --bits 0", "bits must be a positive integer"),
    ("profile-threads-zero", "profile lenet5 --threads 0", r"threads must be an integer in \[1,"),
    ("profile-threads-huge", "profile lenet5 --threads 100000", "threads must be an integer"),
    ("profile-repeats-zero", "profile lenet5 --repeats 0", "repeats must be >= 1"),
    ("profile-onnx", "profile {onnx}", "bench times .onnx"),
    ("profile-unknown", "profile nosuchnet --no-latency", "unknown model 'nosuchnet'"),
    ("bench-batch-zero", "bench {onnx} --batch 0", "must be >= 1"),
    ("bench-batch-huge", f"bench {{onnx}} --batch {10**10}", "--batch 10000000000 needs about"),
    ("bench-threads-zero", "bench {onnx} --threads 0", "threads must be an integer"),
    ("bench-threads-huge", "bench {onnx} --threads 5000", "threads must be an integer"),
    ("bench-repeats-zero", "bench {onnx} --repeats 0", "must be >= 1"),
    ("bench-warmup-negative", "bench {onnx} --repeats 1 --warmup -1", "warmup must be >= 0"),
    ("bench-missing", "bench {out:none.onnx}", "no such ONNX file"),
    ("bench-pt-engine", "bench {model} --engine nope --repeats 1", "unknown engine 'nope'"),
    ("bench-corrupt", "bench {in:corrupt.onnx}", "not a valid ONNX model"),
    ("eval-seed-negative", "eval {model} --task digits --seed -4", "seed must be an integer"),
    ("eval-task-shape", "eval {model} --task mnist1d", "takes inputs shaped"),
    ("eval-onnx-task-shape", "eval {onnx} --task mnist1d", "takes inputs shaped"),
    ("export-engine", "export {model} --out {existing} --engine tensorrt", "unknown engine"),
]

METHOD_OPTIONS = [
    ("prune-sparsity-two", f"{CHANNEL} --sparsity 2", r"sparsity must lie in \[0, 1\)"),
    ("prune-sparsity-nan", f"{CHANNEL} --sparsity nan", "sparsity must be a finite number"),
    ("prune-sparsity-negative", f"{CHANNEL} --sparsity -0.1", "sparsity must lie in"),
    ("prune-macs-zero", f"{CHANNEL} --macs-ratio 0", r"macs_ratio must lie in \(0, 1\]"),
    ("prune-macs-big", f"{CHANNEL} --macs-ratio 1.5", "macs_ratio must lie in"),
    ("prune-both-targets", f"{CHANNEL} --sparsity 0.5 --macs-ratio 0.5", "not both"),
    ("prune-finetune-negative", f"{PRUNE} --finetune-epochs -1", "epochs must be >= 0"),
    ("prune-finetune-lr-nan", f"{PRUNE} --finetune-lr nan", "lr must be a finite number"),
    ("prune-finetune-momentum", f"{PRUNE} --finetune-momentum 1.5", r"momentum must be .*\[0, 1\]"),
    ("prune-granularity", f"{PRUNE} --granularity atoms", "atoms"),
    ("prune-criterion", f"{PRUNE} --criterion vibes", "vibes"),
    ("quantize-bits-zero", f"{QUANTIZE} --bits 0", r"weight_bits must be an integer in \[2, 8\]"),
    ("quantize-bits-huge", f"{QUANTIZE} --bits 99", "weight_bits must be an integer"),
    ("quantize-method", f"{QUANTIZE} --method fp4", "--method must be one of"),
    ("quantize-binary-bits", f"{QUANTIZE} --method binary --bits 4", "has 1-bit weights"),
    ("quantize-kmeans-bits", f"{QUANTIZE} --method kmeans --bits 0", "kmeans bits must lie"),
    ("quantize-observer", f"{QUANTIZE} --observer psychic", "psychic"),
    ("quantize-calibration", f"{QUANTIZE} --calibration-samples 0", "calibration_samples must be"),
    ("quantize-auto-samples", f"{QUANTIZE} --auto-samples 0", "auto_samples must be"),
    ("adapt-budget-negative", f"{ADAPT} --method sparse --memory-budget-kb -5", "must be > 0"),
    ("adapt-budget-nan", f"{ADAPT} --method tinytl --memory-budget-kb nan", "memory-budget-kb"),
    ("adapt-method", f"{ADAPT} --method magic", "magic"),
    ("adapt-lr-negative", f"{ADAPT} --lr -1", "lr must be a finite number >= 0"),
    ("adapt-lr-nan", f"{ADAPT} --lr nan", "--lr must be a finite number; got nan"),
    ("apply-unknown", "apply sharpen {model} --out {existing}", "invalid choice: 'sharpen'"),
    ("apply-factorize-zero", f"{apply('factorize')} --macs-ratio 0", "macs_ratio must lie in"),
    ("apply-factorize-energy", f"{apply('factorize')} --energy 2", "energy"),
    ("apply-layer-syntax", f"{apply('ptq')} --layer nonsense", "--layer"),
    ("apply-layer-nomatch", f"{apply('ptq')} --layer nope.*:weight_bits=4", "matches no"),
    ("apply-distill-temp", f"{apply('distill')} --temperature 0", "temperature must be > 0"),
    ("apply-distill-weight", f"{apply('distill')} --feature-weight -1", "feature_weight must"),
    ("apply-ternary-threshold", f"{apply('ternary')} --threshold -1", "threshold must be"),
    ("apply-train-seed", f"{apply('train')} --seed -2", "seed must be an integer"),
    ("apply-train-momentum", f"{apply('train')} --momentum -0.5", "momentum must be"),
    ("unknown-command", "fly", "invalid choice: 'fly'"),
    ("unknown-flag", "models --colour", "unrecognized arguments: --colour"),
    ("missing-required", "export {model}", "the following arguments are required: --out"),
]

NPZ3 = "{npz},{npz},{npz}"
SPLITS = [
    ("split-two-parts", f"{TRAIN} --split 0.8,0.2", "three positive fractions TRAIN,VAL,TEST"),
    ("split-four-parts", f"{TRAIN} --split 0.4,0.2,0.2,0.2", "three positive fractions"),
    ("split-zero", f"{TRAIN} --split 0.8,0.2,0", "three positive fractions"),
    ("split-negative", f"{TRAIN} --split 1.2,-0.1,-0.1", "three positive fractions"),
    ("split-text", f"{TRAIN} --split a,b,c", "three positive fractions"),
    ("split-sum-low", f"{TRAIN} --split 0.5,0.2,0.2", "must sum to 1; '0.5,0.2,0.2' sums to 0.9"),
    ("split-sum-high", f"{ADAPT} --split 0.6,0.3,0.2", "must sum to 1"),
    ("split-eval", "eval {model} --task digits --split 0.6,0.4", "three positive fractions"),
    ("split-files-two", "train --model lenet5 --task {npz},{npz} --out {existing}", "three paths"),
    (
        "split-files-missing",
        "train --model lenet5 --task {npz},{npz},{out:none.npz} --out {existing}",
        "a split file must be an existing .npz",
    ),
    (
        "split-files-and-split",
        f"train --model lenet5 --task {NPZ3} --split 0.6,0.2,0.2 --out {{existing}}",
        "--split does not apply to separate",
    ),
]

CASES = OUTPUT_PATHS + TRAINING_OPTIONS + PROFILE_AND_BENCH_OPTIONS + METHOD_OPTIONS + SPLITS


def argv_of(text: str, inputs: Inputs, tmp_path: Path) -> list[str]:
    """The case's argv: ``text`` split on spaces, placeholders filled in."""
    long_name, long_path = "n" * 300, "/".join(["d" * 200] * 30)
    words = [
        w.replace("{long_name}", long_name).replace("{long_path}", long_path) for w in text.split()
    ]
    return fill([w.replace("{empty}", "") for w in words], inputs, tmp_path)


@pytest.mark.parametrize(("argv", "match"), [pytest.param(a, m, id=c) for c, a, m in CASES])
def test_bad_command_line(
    refused: Refused, inputs: Inputs, tmp_path: Path, argv: str, match: str
) -> None:
    refused(argv_of(argv, inputs, tmp_path), match)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(refused: Refused, inputs: Inputs, tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        refused(["export", str(inputs.model), "--out", str(folder / "m.onnx")], "not writable")
    finally:
        folder.chmod(0o700)
