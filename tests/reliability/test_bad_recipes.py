"""Bad recipes: refused before any step runs, with one line naming the step and field, and
nothing written outside (or, for a fresh run, inside) the run's --out directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from badinput import Refused

HEADER = {
    "name": "r",
    "task": {"name": "digits"},
    "model": {"arch": "lenet5"},
    "measure": {"latency": False},
    "report": {"sensitivity": []},
}
TRAIN = {"step": "train", "epochs": 0}


def recipe(*steps: dict, **header: object) -> dict:
    return {**HEADER, **header, "steps": list(steps) or [TRAIN]}


def export(file: str) -> dict:
    return recipe(TRAIN, {"step": "export", "file": file})


# (id, recipe data or YAML text, regex of the error line)
CASES = [
    ("export-parent", export("../x.onnx"), "steps\\[1\\] \\(export\\): file: the path '../x.onnx'"),
    ("export-deep-parent", export("a/../../x.onnx"), "must be a relative path inside the run"),
    ("export-absolute", export("/tmp/x.onnx"), "no leading '/', drive or '..'"),
    ("export-windows-parent", export("..\\x.onnx"), "must be a relative path"),
    ("export-drive", export("C:x.onnx"), "must be a relative path"),
    ("export-empty", export(""), "must be a non-empty relative path"),
    ("export-symlink", export("link/x.onnx"), "leads outside .* \\(through a symlink\\)"),
    ("name-parent", recipe({**TRAIN, "name": "../../evil"}), "name '../../evil' must be 1-100"),
    ("name-slash", recipe({**TRAIN, "name": "a/b"}), "without '/'"),
    ("name-hidden", recipe({**TRAIN, "name": ".hidden"}), "leading '.'"),
    ("name-long", recipe({**TRAIN, "name": "s" * 150}), "must be 1-100 printable"),
    ("name-int", recipe({**TRAIN, "name": 5}), "name must be a string; got int"),
    ("name-duplicate", recipe(TRAIN, {**TRAIN, "name": "train"}), "duplicate step name 'train'"),
    ("image-size-huge", recipe(task={"name": "digits", "image_size": 100000}), "needs about"),
    ("image-size-zero", recipe(task={"name": "digits", "image_size": 0}), "image size"),
    ("task-unknown", recipe(task={"name": "nope"}), "unknown task 'nope'"),
    ("task-seed-negative", recipe(task={"name": "digits", "seed": -1}), "seed must be"),
    ("task-missing", {k: v for k, v in recipe().items() if k != "task"}, "missing field 'task'"),
    ("model-both", recipe(model={"arch": "lenet5", "file": "m.pt"}), "exactly one of"),
    ("model-neither", recipe(model={}), "exactly one of 'arch' and 'file'"),
    ("model-unknown", recipe(model={"arch": "gpt5"}), "unknown model 'gpt5'"),
    ("model-file-missing", recipe(model={"file": "none.pt"}), "model file not found"),
    ("model-width-zero", recipe(model={"arch": "lenet5", "width_mult": 0}), "width_mult"),
    ("steps-empty", {**HEADER, "steps": []}, "steps"),
    ("steps-mapping", {**HEADER, "steps": {"step": "train"}}, "steps"),
    ("step-not-mapping", {**HEADER, "steps": ["train"]}, "a step is a mapping"),
    ("step-missing-kind", recipe({"epochs": 1}), "missing 'step'"),
    ("step-unknown", recipe({"step": "sharpen"}), "unknown step 'sharpen'"),
    ("field-unknown", recipe({"step": "train", "epoch": 1}), "unknown field 'epoch'"),
    ("train-lr-nan", recipe({"step": "train", "lr": float("nan")}), "lr must be a finite number"),
    ("train-lr-text", recipe({"step": "train", "lr": "fast"}), "lr must be float"),
    ("train-epochs-negative", recipe({"step": "train", "epochs": -1}), "epochs must be >= 0"),
    ("train-seed-huge", recipe({"step": "train", "seed": 2**40}), "seed must be"),
    ("prune-sparsity", recipe({"step": "prune", "sparsity": 2}), "sparsity must lie"),
    ("ptq-bits", recipe({"step": "ptq", "weight_bits": 0}), "weight_bits must be an integer"),
    ("finetune-lr", recipe({"step": "channel_prune", "finetune": {"lr": -1}}), "lr must be"),
    (
        "teacher-later",
        recipe({"step": "distill", "teacher": "later"}, {**TRAIN, "name": "later"}),
        "not an earlier step",
    ),
    ("measure-batch", recipe(measure={"batch_size": 0}), "batch_size"),
    ("measure-threads", recipe(measure={"threads": 0}), "threads"),
    ("benchmark-batch", recipe(TRAIN, {"step": "benchmark", "batch_sizes": [0]}), "batch_sizes"),
    ("sensitivity", recipe(report={"sensitivity": [1.5]}), "sensitivity"),
    ("not-mapping", "- just\n- a list\n", "a recipe must be a mapping"),
    ("invalid-yaml", "name: x\nsteps: [\n  {step: train\n", "not valid YAML at line"),
    ("yaml-object", "!!python/object/apply:os.system ['true']", "not valid YAML"),
]


@pytest.mark.parametrize(("data", "match"), [pytest.param(d, m, id=c) for c, d, m in CASES])
def test_bad_recipe(refused: Refused, tmp_path: Path, data: dict | str, match: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    (run / "link").symlink_to(tmp_path.parent)
    refused(["run", str(path), "--out", str(run)], match)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path.parent / "x.onnx").exists()


def test_missing_recipe(refused: Refused, tmp_path: Path) -> None:
    refused(["run", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out")], "not found")


def test_symlinked_out_folder_is_followed_only_inside(refused: Refused, tmp_path: Path) -> None:
    """An export whose target inside the run directory is a symlink to elsewhere."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(export("model.onnx")), encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    refused(["run", str(path), "--out", str(run)], "leads outside")
