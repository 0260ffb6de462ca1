"""Recipe validation: an unknown step or field, or a bad value, is one line naming it."""

from pathlib import Path

import pytest

from mobiledl.errors import UserError
from mobiledl.pipeline import load_recipe, parse_recipe

BASE = {
    "name": "r",
    "task": {"name": "digits"},
    "model": {"arch": "lenet300"},
    "steps": [{"step": "train", "epochs": 1}],
}


def with_(**changes: object) -> dict:
    return {**BASE, **changes}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            with_(steps=[{"step": "train"}, {"step": "factorize", "rnk": 3, "energy": 0.9}]),
            "steps[1] (factorize): unknown field 'rnk'",
        ),
        (with_(steps=[{"step": "distil"}]), "steps[0]: unknown step 'distil'; choose one of"),
        (with_(steps=[{"epochs": 1}]), "steps[0]: missing 'step'"),
        (
            with_(steps=[{"step": "factorize", "macs_ratio": 1.5}]),
            "steps[0] (factorize): macs_ratio must lie in (0, 1]; got 1.5",
        ),
        (
            with_(steps=[{"step": "prune", "sparsity": 0.5, "finetune": {"lrr": 1}}]),
            "steps[0] (prune): unknown field 'finetune.lrr'",
        ),
        (
            with_(steps=[{"step": "finetune", "kd": {"feature": "gram"}}]),
            "steps[0] (distill): DistillConfig.feature must be one of 'none', 'hint'",
        ),
        (
            with_(steps=[{"step": "ptq", "weight_bits": 12}]),
            "steps[0] (ptq): weight_bits must be an integer in [2, 8]; got 12",
        ),
        (with_(task={"nme": "digits"}), "task: missing field 'name'"),
        (
            with_(task={"name": "digits", "split": [0.5, 0.2, 0.2]}),
            "task: split: split fractions must sum",
        ),
        (with_(model={"arch": "a", "file": "b"}), "model: set exactly one of 'arch' and 'file'"),
        (with_(extra=1), "recipe: unknown field 'extra'"),
        (
            with_(steps=[{"step": "train"}, {"step": "train", "name": "train"}]),
            "steps[1]: duplicate step name 'train'",
        ),
        (
            with_(
                steps=[
                    {"step": "finetune", "kd": {"teacher": "later"}},
                    {"step": "train", "name": "later"},
                ]
            ),
            "steps[0]: teacher 'later' is not an earlier step",
        ),
    ],
)
def test_errors_name_the_step_and_field(data: dict, message: str) -> None:
    with pytest.raises(UserError) as error:
        parse_recipe(data, "r.yaml")
    text = str(error.value)
    assert text == f"r.yaml: {message}" or text.startswith(f"r.yaml: {message}")
    assert "\n" not in text


def test_yaml_errors_give_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsteps: [\n  {step: train\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_recipe(path)
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_shipped_recipes_are_valid() -> None:
    recipes = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    kinds = {path.name: [s.kind for s in load_recipe(path).parsed_steps] for path in recipes}
    assert any(k[-4:] == ["kmeans", "encode", "export", "benchmark"] for k in kinds.values())
    assert sum("distill" in k and "ptq" in k for k in kinds.values()) >= 2


def test_step_names_default_to_kinds_numbered_on_repeat() -> None:
    recipe = parse_recipe(with_(steps=[{"step": "train"}, {"step": "ptq"}, {"step": "ptq"}]))
    assert recipe.step_names() == ["train", "ptq", "ptq-2"]


@pytest.mark.parametrize(
    ("legacy", "kind", "fields"),
    [
        ({"step": "finetune", "epochs": 2}, "train", {"epochs": 2, "lr": 0.01}),
        (
            {"step": "finetune", "kd": {"alpha": 0.5, "feature": "attention"}},
            "distill",
            {"alpha": 0.5, "feature": "attention", "teacher": "uncompressed"},
        ),
        ({"step": "quantize", "method": "ptq", "observer": "mse"}, "ptq", {"observer": "mse"}),
        ({"step": "quantize", "method": "qat", "qat_method": "lsq"}, "qat", {"algorithm": "lsq"}),
        ({"step": "prune", "granularity": "channel", "macs_ratio": 0.5}, "channel_prune", {}),
        ({"step": "kmeans", "conv_bits": 6, "fc_bits": 4}, "kmeans", {"bits": 6}),
        ({"step": "factorize", "method": "svd", "energy": 0.9}, "factorize", {}),
    ],
)
def test_recipes_of_earlier_versions_still_run(legacy: dict, kind: str, fields: dict) -> None:
    step = parse_recipe(with_(steps=[legacy])).parsed_steps[0]
    assert step.kind == kind
    data = step.config.fields_dict()
    assert {k: data[k] for k in fields} == fields


def test_cli_reports_a_bad_recipe_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from mobiledl.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(
        "name: r\ntask: {name: digits}\nmodel: {arch: lenet300}\n"
        "steps:\n  - {step: factorize, macs_ratio: 0.5, rnk: 8}\n",
        encoding="utf-8",
    )
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert error.startswith(
        f"mobiledl run: error: {path}: steps[0] (factorize): unknown field 'rnk'"
    )


def test_recipe_task_split_splits_the_data() -> None:
    from mobiledl.pipeline.runner import _task

    recipe = parse_recipe(
        {
            "name": "split",
            "task": {"name": "digits", "split": [0.8, 0.1, 0.1]},
            "model": {"arch": "lenet5"},
            "steps": [{"step": "train", "epochs": 0}],
        }
    )
    task = _task(recipe, Path("."))
    assert recipe.task.split == (0.8, 0.1, 0.1)
    assert len(task.x_train) / 1797 == pytest.approx(0.8, abs=0.01)
