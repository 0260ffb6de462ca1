"""Video: the temporal shift module (TSM, Lin, Gan, Han, ICCV 2019), offline and online.

- ``temporal_shift`` / ``TemporalShift``: move a fraction of the channels one frame along time
  (a memory move: zero parameters, zero MACs).
- ``add_temporal_shift``: put a shift at the start of every residual branch of a per-frame
  classifier (the paper's residual shift; or in place), bi- or uni-directional (past only);
  ``TemporalShiftConfig`` does it through ``mobiledl.apply`` (TSN in, TSM out).
- ``VideoClassifier``: a 2D backbone run on every frame, logits averaged over time (TSN, Wang
  et al. 2016, when nothing is shifted); zoo models ``tsn_resnet8``, ``tsm_resnet8``,
  ``tsm_uni_resnet8`` and the 3D-conv baseline ``c3d_small``.
- ``OnlineTSM``: frame-by-frame inference of a uni-directional TSM that caches the shifted
  channels of the previous frame, exportable to ONNX with the caches as inputs and outputs;
  ``FrameStream`` streams the exported graph through ONNX Runtime with the caches kept in
  bound buffers between frames.
"""

from mobiledl.apps.video.methods import TemporalShiftConfig
from mobiledl.apps.video.models import C3D, VideoClassifier
from mobiledl.apps.video.online import OnlineTSM, online_frame_logits
from mobiledl.apps.video.shift import TemporalShift, add_temporal_shift, temporal_shift

__all__ = [
    "C3D",
    "OnlineTSM",
    "TemporalShift",
    "TemporalShiftConfig",
    "VideoClassifier",
    "add_temporal_shift",
    "online_frame_logits",
    "temporal_shift",
]
