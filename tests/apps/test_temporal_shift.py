"""The temporal shift (Lin et al. 2019): which channels move where, zero padding at clip ends,
no parameters and no MACs (TSN and TSM profile the same), torch.fx and ONNX export, the
``temporal_shift`` method (TSN in, TSM out, kept by the model file) and both placements."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mobiledl import apply, report_of
from mobiledl.apps.video import (
    TemporalShift,
    TemporalShiftConfig,
    add_temporal_shift,
    temporal_shift,
)
from mobiledl.apps.video.shift import shifts_of
from mobiledl.deploy import get_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model
from mobiledl.profile import profile_model

pytestmark = pytest.mark.usefixtures("single_thread")
T, C = 4, 16  # fold = 2 channels each way


def frames(clips: int = 2) -> torch.Tensor:
    """Frames ``(clips*T, C, 1, 1)`` whose value says clip, frame and channel."""
    n, t, c = torch.meshgrid(torch.arange(clips), torch.arange(T), torch.arange(C), indexing="ij")
    return (1000 * n + 100 * (t + 1) + c).float().reshape(clips * T, C, 1, 1)


def clip_view(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, T, C)


def test_bidirectional_shift_moves_one_eighth_each_way_with_zero_padding() -> None:
    x = frames()
    y, x3 = clip_view(temporal_shift(x, T)), clip_view(x)
    assert torch.equal(y[:, 1:, :2], x3[:, :-1, :2])  # from the past
    assert torch.equal(y[:, :-1, 2:4], x3[:, 1:, 2:4])  # from the future
    assert torch.equal(y[:, 0, :2], torch.zeros(2, 2))
    assert torch.equal(y[:, -1, 2:4], torch.zeros(2, 2))
    assert torch.equal(y[:, :, 4:], x3[:, :, 4:])  # the rest stays


def test_unidirectional_shift_reads_only_the_past() -> None:
    x = frames()
    y, x3 = clip_view(temporal_shift(x, T, bidirectional=False)), clip_view(x)
    assert torch.equal(y[:, 1:, :2], x3[:, :-1, :2])
    assert torch.equal(y[:, 0, :2], torch.zeros(2, 2))
    assert torch.equal(y[:, :, 2:], x3[:, :, 2:])


def test_shift_does_not_touch_its_input_and_passes_gradients() -> None:
    x = frames().requires_grad_()
    before = x.detach().clone()
    temporal_shift(x, T).sum().backward()
    assert torch.equal(x.detach(), before)
    grad = clip_view(x.grad)
    assert torch.equal(grad[:, -1, :2], torch.zeros(2, 2))  # the last frame's past channels
    assert grad[:, :, 4:].eq(1).all()


def test_bad_frames_are_one_line_errors() -> None:
    with pytest.raises(UserError, match="are not clips of 4 frames"):
        temporal_shift(torch.zeros(6, C, 1, 1), T)
    with pytest.raises(UserError, match=r"needs frames \(N\*T, C, H, W\); got a 5-D"):
        temporal_shift(torch.zeros(1, T, C, 1, 1), T)
    with pytest.raises(UserError, match="clips of >= 1 frames"):
        TemporalShift(0)


def test_tsm_has_the_params_and_macs_of_tsn() -> None:
    clip = torch.randn(1, 8, 1, 16, 16)
    profiles = {
        name: profile_model(create_model(name, 4, 1, 16, n_segments=8), clip)
        for name in ("tsn_resnet8", "tsm_resnet8", "tsm_uni_resnet8")
    }
    assert len({(p.params, p.macs) for p in profiles.values()}) == 1
    shifts = [layer for layer in profiles["tsm_resnet8"].layers if layer.type == "TemporalShift"]
    assert len(shifts) == 3 and all(layer.macs == 0 and layer.params == 0 for layer in shifts)


def test_shift_changes_the_outputs_and_clip_order_matters() -> None:
    torch.manual_seed(0)
    tsn = create_model("tsn_resnet8", 4, 1, 16, n_segments=8).eval()
    tsm = copy.deepcopy(tsn)
    assert add_temporal_shift(tsm, 8) == 3  # the same weights, shifted
    clip = torch.randn(2, 8, 1, 16, 16)
    reversed_clip = clip.flip(1)
    with torch.no_grad():
        assert torch.allclose(tsn(clip), tsn(reversed_clip), atol=1e-5)  # a bag of frames
        assert not torch.allclose(tsm(clip), tsm(reversed_clip), atol=1e-3)


def test_add_temporal_shift_needs_residual_blocks() -> None:
    with pytest.raises(UserError, match="has no residual block to shift"):
        add_temporal_shift(create_model("lenet5", 10, 1, 16), 8)


def test_tsm_traces_with_fx_and_exports_to_onnx(tmp_path: Path) -> None:
    model = create_model("tsm_resnet8", 4, 1, 16, n_segments=8).eval()
    clips = torch.randn(3, 8, 1, 16, 16)
    traced = torch.fx.symbolic_trace(model)
    assert torch.allclose(traced(clips), model(clips), atol=1e-6)
    engine = get_engine("onnxruntime")
    path = engine.export(model, clips[:1], tmp_path / "tsm.onnx")
    assert engine.parity_check(model, path, clips) < 1e-5


def test_the_method_turns_tsn_into_tsm_and_the_file_keeps_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tsn = create_model("tsn_resnet8", 4, 1, 16, n_segments=8).eval()
    tsm = apply(tsn, TemporalShiftConfig(bidirectional=False))
    assert not shifts_of(tsn) and len(shifts_of(tsm)) == 3
    assert report_of(tsm).values == {"shifted_blocks": 3}
    clips = torch.randn(2, 8, 1, 16, 16)
    reference = create_model("tsm_uni_resnet8", 4, 1, 16, n_segments=8).eval()
    reference.load_state_dict(tsm.state_dict())
    with torch.no_grad():
        assert torch.equal(tsm.eval()(clips), reference(clips))
    loaded = load_model(save_model(tmp_path / "tsm.pt", tsm)).model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(clips), reference(clips))
    with pytest.raises(UserError, match="shifted already"):
        apply(tsm, TemporalShiftConfig())


def test_inplace_placement_shifts_the_block_input() -> None:
    model = create_model("tsn_resnet8", 4, 1, 16, n_segments=8)
    assert add_temporal_shift(model, 8, placement="inplace") == 3
    assert isinstance(model.backbone.features[1][0], TemporalShift)
    with pytest.raises(UserError, match="unknown shift placement 'middle'"):
        add_temporal_shift(model, 8, placement="middle")


def test_mobilenet_v2_shifts_its_residual_blocks() -> None:
    clip = torch.randn(1, 8, 1, 16, 16)
    tsn = profile_model(create_model("tsn_mobilenet_v2", 4, 1, 16, n_segments=8), clip)
    tsm_model = create_model("tsm_mobilenet_v2", 4, 1, 16, n_segments=8)
    tsm = profile_model(tsm_model, clip)
    assert (tsm.params, tsm.macs) == (tsn.params, tsn.macs) and len(shifts_of(tsm_model)) == 10
