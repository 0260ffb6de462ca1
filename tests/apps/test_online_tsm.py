"""Online TSM (Lin et al. 2019, Sec. 3.3): streaming one frame at a time with cached shifted
channels gives the offline uni-directional model's frame logits, in PyTorch and ONNX Runtime
(a numpy feed per frame, and ``FrameStream``, which keeps the caches in bound buffers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from mobiledl.apps.video import OnlineTSM, online_frame_logits
from mobiledl.deploy import FrameStream, get_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")
FRAME = (1, 16, 16)


@pytest.fixture(scope="module")
def uni() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("tsm_uni_resnet8", 4, 1, 16, n_segments=8)
    with torch.no_grad():  # non-trivial batch-norm statistics
        model.train()(torch.randn(4, 8, *FRAME))
    return model.eval()


@pytest.fixture(scope="module")
def online_runner(uni: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory):
    """The exported ``OnlineTSM`` loaded in ONNX Runtime (1 thread)."""
    online = OnlineTSM(uni, FRAME).eval()
    engine = get_engine("onnxruntime")
    path = tmp_path_factory.mktemp("online") / "online.onnx"
    engine.export(online, online.example_inputs(1), path, online.input_specs())
    return engine.load(path, threads=1)


def test_online_equals_offline_frame_by_frame(uni: torch.nn.Module) -> None:
    clips = torch.randn(3, 8, *FRAME)
    online = OnlineTSM(uni, FRAME)
    assert online.cache_shapes == [(2, 16, 16), (2, 16, 16), (4, 8, 8)]
    with torch.no_grad():
        offline = uni.frame_logits(clips)
    assert (online_frame_logits(online, clips) - offline).abs().max() <= 1e-5


def test_online_onnx_streams_with_caches_as_inputs_and_outputs(
    uni: torch.nn.Module, tmp_path: Path
) -> None:
    clip = torch.randn(1, 8, *FRAME)
    online = OnlineTSM(uni, FRAME).eval()
    engine = get_engine("onnxruntime")
    example = (clip[:, 0], *online.initial_caches(1))
    path = engine.export(online, example, tmp_path / "online.onnx", online.input_specs())
    runner = engine.load(path, threads=1)
    assert [spec.name for spec in runner.input_specs] == ["frame", "cache_0", "cache_1", "cache_2"]
    caches = [c.numpy() for c in online.initial_caches(1)]
    streamed = []
    for t in range(8):
        logits, *caches = runner.run_all((clip[:, t].numpy(), *caches))
        streamed.append(logits)
    with torch.no_grad():
        offline = uni.frame_logits(clip).numpy()
    assert np.abs(np.stack(streamed, axis=1) - offline).max() <= 1e-5


@pytest.mark.parametrize("name", ["tsm_resnet8", "tsn_resnet8"])
def test_online_needs_a_unidirectional_shift(name: str) -> None:
    model = create_model(name, 4, 1, 16, n_segments=8)
    with pytest.raises(UserError, match="online TSM needs a"):
        OnlineTSM(model, FRAME)


def test_online_refuses_bad_clips_and_caches(uni: torch.nn.Module) -> None:
    online = OnlineTSM(uni, FRAME)
    with pytest.raises(UserError, match="clips of >= 1 frame"):
        online_frame_logits(online, torch.zeros(1, 0, *FRAME))
    with pytest.raises(UserError, match="takes 3 caches; got 1"):
        online(torch.zeros(1, *FRAME), torch.zeros(1, 2, 16, 16))


def test_the_exported_shift_has_constant_bounds(uni: torch.nn.Module, online_runner) -> None:
    online = OnlineTSM(uni, FRAME)
    assert [shift.fold for shift in online.shifts] == [s[0] for s in online.cache_shapes]
    ops = {node.op_type for node in onnx.load(str(online_runner.path)).graph.node}
    assert "Slice" in ops and "Concat" in ops
    assert not ops & {"Shape", "Gather", "Div"}  # the fold is no run-time shape computation


def test_frame_stream_equals_offline_and_resets(uni: torch.nn.Module, online_runner) -> None:
    clips = torch.randn(2, 8, *FRAME)
    with torch.no_grad():
        offline = uni.frame_logits(clips).numpy()
    stream = FrameStream(online_runner, batch_size=2)
    assert stream.frame_shape == (2, *FRAME)
    first = stream.play(clips)
    assert first.shape == (2, 8, 4)
    assert np.abs(first - offline).max() <= 1e-5
    np.testing.assert_array_equal(stream.play(clips), first)  # play starts from zero state


def test_frame_stream_state_is_the_caches_the_graph_returns(
    uni: torch.nn.Module, online_runner
) -> None:
    """The caches kept in the bound buffers are exactly the ones a numpy round trip gives."""
    clip = torch.randn(1, 5, *FRAME).numpy()
    online = OnlineTSM(uni, FRAME)
    stream = FrameStream(online_runner)
    assert [a.shape for a in stream.state] == [(1, *s) for s in online.cache_shapes]
    assert all(not a.any() for a in stream.state)
    caches = [c.numpy() for c in online.initial_caches(1)]
    for t in range(clip.shape[1]):
        logits, *caches = online_runner.run_all((clip[:, t], *caches))
        np.testing.assert_array_equal(stream.step(clip[:, t]), logits)
        for kept, returned in zip(stream.state, caches, strict=True):
            np.testing.assert_array_equal(kept, returned)
    stream.reset()
    assert all(not a.any() for a in stream.state)


def test_frame_stream_runs_a_graph_without_state(tmp_path: Path) -> None:
    """A plain 2D model streams through the same path (how the latency baseline is timed)."""
    torch.manual_seed(0)
    plain = create_model("resnet8", 4, 1, 16).eval()
    engine = get_engine("onnxruntime")
    path = engine.export(plain, torch.zeros(1, *FRAME), tmp_path / "resnet8.onnx")
    runner = engine.load(path, threads=1)
    stream = FrameStream(runner)
    assert stream.state == ()
    frames = torch.randn(3, 1, *FRAME).numpy()
    for frame in frames:
        np.testing.assert_array_equal(stream.step(frame), runner.run(frame))


def test_frame_stream_refuses_bad_frames_and_graphs(online_runner, tmp_path: Path) -> None:
    stream = FrameStream(online_runner)
    with pytest.raises(UserError, match=r"frames of shape \[1, 1, 16, 16\]; got \[2, 1, 16, 16\]"):
        stream.step(np.zeros((2, *FRAME), np.float32))
    with pytest.raises(UserError, match="plays \\(N, T, C, H, W\\) clips"):
        stream.play(np.zeros((1, *FRAME), np.float32))
    with pytest.raises(UserError, match="runs an ONNX Runtime session"):
        FrameStream(object())

    class TwoIn(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    engine = get_engine("onnxruntime")
    path = engine.export(TwoIn(), (torch.zeros(1, 3), torch.zeros(1, 3)), tmp_path / "two.onnx")
    with pytest.raises(UserError, match="2 input\\(s\\) and 1 output\\(s\\)"):
        FrameStream(engine.load(path, threads=1))
