"""Online TSM (Lin et al. 2019, Sec. 3.3): streaming one frame at a time with cached shifted
channels gives the offline uni-directional model's frame logits, in PyTorch and ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobiledl.apps.video import OnlineTSM, online_frame_logits
from mobiledl.deploy import get_engine
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
