"""The built-in video tasks: clips (N, 8, 1, S, S) from the digits images, deterministic per
seed, and time order decides the temporal tasks' class:
a clip reversed in time is a clip of another class (made of the same frames)."""

from __future__ import annotations

import pytest
import torch

from mobiledl.core.inputs import CLIP
from mobiledl.core.task import TensorTask
from mobiledl.data import build_task
from mobiledl.data.video import (
    FRAMES,
    ROTATION_STEP,
    motion_clip,
    place,
    rotation_clip,
)
from mobiledl.errors import UserError

pytestmark = pytest.mark.usefixtures("single_thread")
TASKS = {"video-motion": 4, "video-rotation": 2, "video-digit": 10}


@pytest.fixture(scope="module", params=list(TASKS))
def task(request: pytest.FixtureRequest) -> TensorTask:
    return build_task(request.param, image_size=16)


def test_clips_have_the_clip_shape_and_every_class(task: TensorTask) -> None:
    assert task.input_kind == CLIP and task.num_classes == TASKS[task.name]
    assert [spec.describe() for spec in task.input_specs()] == [
        f"clip: float32 [batch, {FRAMES}, 1, 16, 16]"
    ]
    for split in ("train", "val", "test"):
        x, y = task.split(split)
        assert x.shape[1:] == (FRAMES, 1, 16, 16) and len(x) == len(y)
        assert set(y.tolist()) == set(range(task.num_classes))
    assert task.num_samples("train") + task.num_samples("val") + task.num_samples("test") == 1797


def test_tasks_are_deterministic_per_seed(task: TensorTask) -> None:
    again = build_task(task.name, image_size=16)
    assert torch.equal(again.x_train, task.x_train) and torch.equal(again.y_test, task.y_test)
    other = build_task(task.name, image_size=16, seed=1)
    assert not torch.equal(other.x_train, task.x_train)


def test_default_frames_are_32_pixels() -> None:
    assert build_task("video-digit").x_test.shape[1:] == (FRAMES, 1, 32, 32)


def test_control_frames_are_static(task: TensorTask) -> None:
    x = task.x_test
    static = torch.equal(x, x[:, :1].expand_as(x))
    assert static == (task.name == "video-digit")


def test_a_reversed_motion_clip_moves_the_other_way() -> None:
    digit = torch.rand(8, 8)
    right = motion_clip(digit, 16, direction=0, top=3, left=0, step=1)
    left = motion_clip(digit, 16, direction=1, top=3, left=FRAMES - 1, step=1)
    down = motion_clip(digit, 16, direction=2, top=0, left=5, step=1)
    up = motion_clip(digit, 16, direction=3, top=FRAMES - 1, left=5, step=1)
    assert torch.equal(right.flip(0), left) and torch.equal(down.flip(0), up)
    assert not torch.equal(right, left)


def test_a_reversed_rotation_clip_turns_the_other_way() -> None:
    canvas = place(torch.rand(6, 6), 16, 5, 9)[None]
    clockwise = rotation_clip(canvas, start=40.0, sign=1)
    end = 40.0 + (FRAMES - 1) * ROTATION_STEP
    counter = rotation_clip(canvas, start=end, sign=-1)
    assert torch.allclose(clockwise.flip(0), counter, atol=1e-5)
    assert not torch.allclose(clockwise, counter, atol=1e-2)


@pytest.mark.parametrize("size", [8, (16, 24)])
def test_bad_frame_sizes_are_one_line_errors(size: object) -> None:
    with pytest.raises(UserError, match="needs square frames of >= 16 px"):
        build_task("video-motion", image_size=size)
