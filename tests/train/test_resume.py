"""Epoch checkpoints: training interrupted after (or inside) any epoch resumes and ends with
exactly the weights and result of an uninterrupted run; a checkpoint of another run, or a
damaged one, is refused with one line."""

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import mobiledl.train.trainer as trainer
from mobiledl.cli import main
from mobiledl.data.task import Task
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model
from mobiledl.pipeline import run_recipe
from mobiledl.train import TrainConfig, train
from mobiledl.train.resume import (
    CheckpointError,
    checkpoint_epoch,
    epoch_checkpoints,
    read_checkpoint,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = TrainConfig(epochs=5, batch_size=16, optimizer="adamw", progress=False)


class Interrupted(Exception):
    """Stands in for a kill: raised in the middle of training."""


def blob_task(n: int = 150) -> Task:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.arange(n) % 3
    x = (centers[y] + 0.8 * torch.randn(n, 2, generator=g)).view(n, 1, 1, 2)
    third = n // 3
    parts = [x[:third], y[:third], x[third : 2 * third], y[third : 2 * third]]
    return Task("blobs", 3, *parts, x[2 * third :], y[2 * third :])


class Penalty(nn.Module):
    """A loss term with a parameter of its own (it trains, so its state is checkpointed)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return 0.01 * self.scale**2 * logits.pow(2).mean() + 0.01 * (self.scale - 1) ** 2


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # dropout draws from the global generator the checkpoint restores
    return nn.Sequential(
        nn.Flatten(), nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)
    )


def run(checkpoint: Path | None = None, seed: int = 0, config: TrainConfig = CONFIG):
    model, term = net(seed), Penalty()
    result = train(model, blob_task(), config, extra_loss=[term], checkpoint=checkpoint)
    return model, term, result


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def interrupt_after_epoch(
    monkeypatch: pytest.MonkeyPatch, epoch: int, error: type[BaseException] = Interrupted
) -> None:
    """The run stops right after epoch ``epoch``'s checkpoint is written."""
    save = trainer.save_checkpoint

    def save_then_stop(*args, **kwargs) -> None:
        save(*args, **kwargs)
        if args[-1].epoch == epoch:
            raise error

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """The run stops in the middle of an epoch, after ``steps`` optimizer steps in all."""
    check = trainer.check_loss
    seen = []

    def count(*args) -> None:
        seen.append(1)
        if len(seen) > steps:
            raise Interrupted
        check(*args)

    monkeypatch.setattr(trainer, "check_loss", count)


def interrupted_run(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, stop: Callable[[pytest.MonkeyPatch], None]
) -> None:
    """``run(ckpt)`` stopped by ``stop`` (one of the interrupt helpers above)."""
    with monkeypatch.context() as patch:
        stop(patch)
        with pytest.raises(Interrupted):
            run(ckpt)


@pytest.fixture(scope="module")
def uninterrupted():
    return run()


@pytest.mark.parametrize("epoch", [0, 2, 4])
def test_resume_after_an_epoch_equals_an_uninterrupted_run(
    epoch: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted, caplog
) -> None:
    ckpt = tmp_path / "m.ckpt"
    interrupted_run(ckpt, monkeypatch, lambda patch: interrupt_after_epoch(patch, epoch))
    assert checkpoint_epoch(ckpt) == epoch
    caplog.set_level(logging.INFO, logger="mobiledl")
    model, term, result = run(ckpt)
    assert f"{epoch + 1} of 5 epochs done" in caplog.text
    reference, reference_term, reference_result = uninterrupted
    assert same_weights(model, reference) and same_weights(term, reference_term)
    assert result == reference_result
    assert [h["epoch"] for h in result.history] == list(range(5))
    again = run(ckpt)  # a finished checkpoint: the same result at once
    assert same_weights(again[0], reference) and again[2] == reference_result


def test_resume_inside_an_epoch_redoes_only_that_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted
) -> None:
    ckpt = tmp_path / "m.ckpt"
    # 4 steps per epoch: stops inside epoch 3
    interrupted_run(ckpt, monkeypatch, lambda patch: interrupt_at_step(patch, 3 * 4 + 2))
    assert checkpoint_epoch(ckpt) == 2
    model, term, result = run(ckpt)
    assert same_weights(model, uninterrupted[0]) and result == uninterrupted[2]


def test_a_checkpoint_of_another_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "m.ckpt"
    interrupted_run(ckpt, monkeypatch, lambda patch: interrupt_after_epoch(patch, 1))
    before = ckpt.read_bytes()
    other = TrainConfig(epochs=5, batch_size=16, optimizer="adamw", lr=1e-2, progress=False)
    with pytest.raises(CheckpointError, match=r"different training run \(its training config"):
        run(ckpt, config=other)
    with pytest.raises(CheckpointError, match=r"its initial weights differ\); delete it"):
        run(ckpt, seed=1)
    with pytest.raises(UserError, match="its loss terms differ"):
        train(net(), blob_task(), CONFIG, checkpoint=ckpt)
    assert ckpt.read_bytes() == before  # refused, not replaced
    quiet = TrainConfig(epochs=5, batch_size=16, optimizer="adamw", progress=True)
    run(ckpt, config=quiet)  # showing progress or not is the same run


def test_a_damaged_checkpoint_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "m.ckpt"
    interrupted_run(ckpt, monkeypatch, lambda patch: interrupt_after_epoch(patch, 1))
    data = ckpt.read_bytes()
    payload = torch.load(ckpt, weights_only=True)
    for damage in (("best_state", "x"), ("best_accuracy", None), ("rng", {"torch": 1})):
        torch.save({**payload, damage[0]: damage[1]}, ckpt)
        with pytest.raises(CheckpointError, match="not a readable training checkpoint"):
            run(ckpt)
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m.ckpt is not a readable training checkpoint"):
        run(ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable training checkpoint"):
        run(ckpt)
    torch.save({"format": "something else"}, ckpt)
    with pytest.raises(CheckpointError, match="not a mobiledl training checkpoint"):
        read_checkpoint(ckpt)
    with pytest.raises(UserError, match="checkpoint must be a path"):
        train(net(), blob_task(), CONFIG, checkpoint=123)


def test_epoch_checkpoints_resume_each_training_of_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """Two trainings in a row (like prune-then-fine-tune rounds), interrupted in the second."""
    short = TrainConfig(epochs=3, batch_size=16, seed=1, progress=False)

    def step() -> nn.Module:
        model = net()
        train(model, blob_task(), CONFIG)
        with torch.no_grad():
            model[1].weight.mul_(0.5)
        train(model, blob_task(), short)
        return model

    reference = step()
    folder = tmp_path / "01-step.epochs"
    with monkeypatch.context() as patch, epoch_checkpoints(folder):
        interrupt_after_epoch(patch, 1)
        with pytest.raises(Interrupted):
            step()
    files = sorted(folder.glob("train-*.pt"))
    assert sorted(checkpoint_epoch(f) for f in files) == [1]
    caplog.set_level(logging.INFO, logger="mobiledl")
    with monkeypatch.context() as patch, epoch_checkpoints(folder):
        interrupt_after_epoch(patch, 1)  # now in the second training
        with pytest.raises(Interrupted):
            step()
    assert sorted(checkpoint_epoch(f) for f in folder.glob("train-*.pt")) == [1, 4]
    with epoch_checkpoints(folder):
        resumed = step()
    assert "5 of 5 epochs done" in caplog.text and "2 of 3 epochs done" in caplog.text
    assert same_weights(resumed, reference)


# ---------------------------------------------------------------- mobiledl train --resume


def cli_train(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "lenet300",
        "--task",
        "digits",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--json",
        *extra,
    ]


def test_cli_train_resumes_and_refuses_without_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(cli_train(tmp_path / "a.pt")) == 0
    reference = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "a.pt.ckpt").exists()

    out = tmp_path / "b.pt"
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 0, KeyboardInterrupt)  # Ctrl-C keeps the checkpoint
        assert main(cli_train(out)) == 130
    capsys.readouterr()
    assert checkpoint_epoch(tmp_path / "b.pt.ckpt") == 0 and not out.exists()

    assert main(cli_train(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mobiledl train: error: {out}.ckpt holds an interrupted training run; pass --resume "
        "to continue it or delete it to start over"
    ]
    assert main([*cli_train(out), "--lr", "0.01", "--resume"]) == 2
    assert "is a checkpoint of a different training run" in capsys.readouterr().err
    assert (tmp_path / "b.pt.ckpt").exists()

    assert main([*cli_train(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "1 of 3 epochs done" in captured.err
    resumed = json.loads(captured.out)
    assert {**resumed, "extra": {**resumed["extra"], "out": None}} == {
        **reference,
        "extra": {**reference["extra"], "out": None},
    }
    assert same_weights(load_model(out).model, load_model(tmp_path / "a.pt").model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no .ckpt, .partial


def test_cli_train_resume_without_a_checkpoint_starts_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*cli_train(tmp_path / "m.pt"), "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_a_diverged_cli_run_leaves_no_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    assert main([*cli_train(out), "--lr", "1e6"]) == 2
    assert "diverged" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- mobiledl run --resume


RECIPE = {
    "name": "tiny-resume",
    "task": {"name": "digits"},
    "model": {"arch": "lenet300"},
    "measure": {"latency": False},
    "report": {"sensitivity": []},
    "steps": [
        {"step": "train", "epochs": 3},
        {
            "step": "prune",
            "granularity": "element",
            "criterion": "l1",
            "sparsity": 0.5,
            "finetune": {"epochs": 3, "lr": 0.01},
        },
    ],
}


def test_a_recipe_step_resumes_after_its_last_finished_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    reference = run_recipe(recipe, tmp_path / "a", progress=False)

    out = tmp_path / "b"
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 1)  # in step 0 (train)
        with pytest.raises(Interrupted):
            run_recipe(recipe, out, progress=False)
    assert [checkpoint_epoch(p) for p in out.glob("checkpoints/01-train.epochs/*.pt")] == [1]
    with monkeypatch.context() as patch:
        interrupt_after_epoch(patch, 0)  # in step 1 (the pruned model's fine-tuning)
        with pytest.raises(Interrupted):
            run_recipe(recipe, out, resume=True, progress=False)
    assert not (out / "checkpoints/01-train.epochs").exists()
    assert [checkpoint_epoch(p) for p in out.glob("checkpoints/02-prune.epochs/*.pt")] == [0]
    caplog.set_level(logging.INFO, logger="mobiledl")
    measurements = run_recipe(recipe, out, resume=True, progress=False)
    assert "1 of 3 epochs done" in caplog.text
    assert measurements == reference
    for name in ("01-train.pt", "02-prune.pt"):
        a = load_model(tmp_path / "a" / "checkpoints" / name).model
        assert same_weights(load_model(out / "checkpoints" / name).model, a)
    assert not list(out.glob("checkpoints/*.epochs"))


def test_a_model_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    save_model(tmp_path / "m.pt", create_model("lenet300", 10, 1, 8))
    with pytest.raises(CheckpointError, match="not a mobiledl training checkpoint"):
        read_checkpoint(tmp_path / "m.pt")
