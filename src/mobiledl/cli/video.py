"""``mobiledl video stream MODEL --task TASK [--clip I] [--threads N] [--json]``: play one test
clip frame by frame through the engine as online TSM (Lin et al. 2019, Sec. 3.3).

MODEL is a uni-directional TSM model file (``tsm_uni_resnet8``, or any clip model shifted
with ``temporal_shift --no-bidirectional``). It is exported as ``OnlineTSM`` (the caches of the
shifted channels are explicit inputs and outputs), streamed through ONNX Runtime by
``FrameStream`` (the caches stay in bound buffers from frame to frame) and each frame's
prediction and latency are printed; ``--json`` gives the list.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from mobiledl.cli.support import add_command, add_task_args, task_for_model
from mobiledl.errors import UserError


def add_video_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl video`` with its ``stream`` sub-command."""
    video = commands.add_parser(
        "video",
        help="video models: stream a clip through online TSM",
        description="Video: temporal shift module (Lin et al. 2019) tools.",
    )
    actions = video.add_subparsers(dest="video_command", required=True, metavar="ACTION")
    sub = add_command(
        actions, "stream", "stream one test clip frame by frame through online TSM", _cmd_stream
    )
    sub.add_argument("model", type=Path, help="a uni-directional TSM .pt file")
    add_task_args(sub, required=True)
    sub.add_argument("--clip", type=int, default=0, help="index of the test clip (default 0)")
    sub.add_argument("--threads", type=int, default=1, help="engine threads (default 1)")


def _cmd_stream(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    from mobiledl.apps.video import OnlineTSM
    from mobiledl.deploy import FrameStream, get_engine
    from mobiledl.models import load_model

    loaded = load_model(args.model)
    task = task_for_model(args.task, loaded.arch, args.seed, args.model, args.split)
    x, y = task.split("test")
    if not 0 <= args.clip < len(x):
        raise UserError(f"--clip must lie in [0, {len(x)}); got {args.clip}")
    clip = x[args.clip]
    online = OnlineTSM(loaded.model, tuple(clip.shape[1:])).eval()
    engine = get_engine()
    with tempfile.TemporaryDirectory(prefix="mobiledl-stream-") as tmp:
        path = engine.export(
            online, online.example_inputs(1), Path(tmp) / "online.onnx", online.input_specs()
        )
        frames = _stream(FrameStream(engine.load(path, threads=args.threads)), clip.numpy())
    names = getattr(task, "class_names", None) or [str(i) for i in range(task.num_classes)]
    label = int(y[args.clip])
    rows = [
        {**row, "class": names[row["prediction"]], "label": label, "label_class": names[label]}
        for row in frames
    ]
    if args.json:
        return rows
    for row in rows:
        print(
            f"frame {row['frame']}: {row['class']} ({row['latency_ms']:.3f} ms)"
            f"{'  <- label ' + row['label_class'] if row['frame'] == len(rows) - 1 else ''}"
        )
    return None


def _stream(stream: Any, clip: Any) -> list[dict[str, Any]]:
    """Each frame's arg-max class and wall latency (ms) of ``stream.step``, which carries the
    caches along."""
    rows = []
    for t in range(len(clip)):
        frame = clip[t : t + 1]
        started = time.perf_counter()
        logits = stream.step(frame)
        elapsed = 1000 * (time.perf_counter() - started)
        rows.append({"frame": t, "prediction": int(logits[0].argmax()), "latency_ms": elapsed})
    return rows
