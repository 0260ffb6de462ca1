"""Streaming a stateful per-frame graph through ONNX Runtime with I/O binding.

A per-frame model that carries state between frames (online TSM, Lin et al. 2019, Sec. 3.3:
``(frame, *caches) -> (logits, *new_caches)``, ``mobiledl.apps.video.OnlineTSM``) is exported
with its state as explicit inputs and outputs. ``FrameStream`` allocates the frame, the logits
and two sets of state buffers once and binds them to the session (ONNX Runtime I/O binding,
``run_with_iobinding``); the state a frame returns is the next frame's input without leaving
the bound buffers (ping-pong), so a frame costs one call and no per-call feed dict. A graph
without state (a plain 2D model) streams through the same path, which is how its per-frame
latency is compared with online TSM's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
from torch import Tensor

from mobiledl.errors import UserError


class FrameStream:
    """Frames in, logits out: one stream through a loaded per-frame ONNX Runtime graph.

    The graph takes ``(frame, *state)`` and returns ``(logits, *new_state)``, each new state of
    its state input's shape (an exported ``OnlineTSM``: ``state`` are the caches); a graph of
    one input and one output (a plain 2D model) has no state. ``runner`` is an ``OrtRunner``
    (what this engine's ``load`` returns); ``batch_size`` clips stream in lockstep. The stream
    starts from all-zero state (an online TSM's ``initial_caches``).

    Buffers for the frame, the logits and two sets of states are allocated once and bound to
    the session (ONNX Runtime I/O binding); frame ``t`` reads state set ``t % 2`` and writes
    set ``(t + 1) % 2``, so the state never goes through a feed dict or a new array. ``step``
    copies the frame into its buffer, runs, and returns a copy of the logits.
    """

    def __init__(self, runner: Any, batch_size: int = 1) -> None:
        session = getattr(runner, "session", None)
        if not isinstance(session, ort.InferenceSession):
            raise UserError(
                f"a frame stream runs an ONNX Runtime session; got {type(runner).__name__}"
            )
        self.session = session
        path = getattr(runner, "path", "the graph")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != len(outputs):
            raise UserError(
                f"{path}: a streamed graph returns logits and one new state per state "
                f"input; it has {len(inputs)} input(s) and {len(outputs)} output(s)"
            )
        feeds = [_zeros(spec, batch_size, path) for spec in inputs]
        first = session.run(None, {spec.name: a for spec, a in zip(inputs, feeds, strict=True)})
        for spec, state, new in zip(inputs[1:], feeds[1:], first[1:], strict=True):
            if new.shape != state.shape or new.dtype != state.dtype:
                raise UserError(
                    f"{path}: state '{spec.name}' is {list(state.shape)} but the graph "
                    f"returns {list(new.shape)} ({new.dtype}) for it"
                )
        self._frame = feeds[0]
        self._logits = np.zeros_like(first[0])
        self._states = (feeds[1:], [np.zeros_like(a) for a in feeds[1:]])
        frame_value = ort.OrtValue.ortvalue_from_numpy(self._frame)
        logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
        values = [[ort.OrtValue.ortvalue_from_numpy(a) for a in set_] for set_ in self._states]
        self._bindings = []
        for read in range(2 if len(inputs) > 1 else 1):
            binding = session.io_binding()
            binding.bind_ortvalue_input(inputs[0].name, frame_value)
            binding.bind_ortvalue_output(outputs[0].name, logits_value)
            for spec_in, spec_out, src, dst in zip(
                inputs[1:], outputs[1:], values[read], values[1 - read], strict=True
            ):
                binding.bind_ortvalue_input(spec_in.name, src)
                binding.bind_ortvalue_output(spec_out.name, dst)
            self._bindings.append(binding)
        self._values = values  # the bound OrtValues, backed by the state arrays
        self._turn = 0

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """The shape ``step`` takes: ``(batch, C, H, W)``."""
        return self._frame.shape

    @property
    def state(self) -> tuple[np.ndarray, ...]:
        """Copies of the state the next frame reads (empty for a graph without state)."""
        return tuple(a.copy() for a in self._states[self._turn])

    def reset(self) -> None:
        """Back to all-zero state: the next frame is the first of a clip."""
        for set_ in self._states:
            for array in set_:
                array.fill(0)
        self._turn = 0

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Logits ``(batch, K)`` of the next frame ``(batch, C, H, W)``."""
        if frame.shape != self._frame.shape:
            raise UserError(
                f"the stream takes frames of shape {list(self._frame.shape)}; "
                f"got {list(frame.shape)}"
            )
        np.copyto(self._frame, frame)
        self.session.run_with_iobinding(self._bindings[self._turn])
        self._turn = (self._turn + 1) % len(self._bindings)
        return self._logits.copy()

    def play(self, clips: np.ndarray | Tensor) -> np.ndarray:
        """Logits ``(N, T, K)`` of every frame of clips ``(N, T, C, H, W)``, from zero state
        (as ``online_frame_logits``)."""
        clips = clips.numpy() if isinstance(clips, Tensor) else np.asarray(clips)
        if clips.ndim != 5 or clips.shape[1] < 1:
            raise UserError(
                f"a stream plays (N, T, C, H, W) clips of >= 1 frame; got {list(clips.shape)}"
            )
        self.reset()
        return np.stack([self.step(clips[:, t]) for t in range(clips.shape[1])], axis=1)


def _zeros(spec: Any, batch_size: int, path: object) -> np.ndarray:
    """Zeros of an ONNX Runtime input's shape, ``batch_size`` for a dynamic batch."""
    if spec.type != "tensor(float)":
        raise UserError(
            f"{path}: a streamed graph takes float32 inputs; '{spec.name}' is {spec.type}"
        )
    shape = [batch_size if i == 0 else d for i, d in enumerate(spec.shape)]
    if isinstance(spec.shape[0], int) and spec.shape[0] != batch_size:
        raise UserError(
            f"{path}: '{spec.name}' has a fixed batch of {spec.shape[0]}, not {batch_size}"
        )
    if not all(isinstance(d, int) for d in shape):
        raise UserError(
            f"{path}: a streamed graph needs fixed frame and state shapes; "
            f"'{spec.name}' is {spec.shape}"
        )
    return np.zeros(shape, np.float32)
