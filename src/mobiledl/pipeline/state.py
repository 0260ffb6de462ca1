"""The run directory's ``state.json``: which steps finished, their model files and measurements.

The runner writes a step's model file first (``save_model``, atomic) and then the state
(atomic), so after a crash or ``kill -9`` the state only ever lists steps whose model file is
complete. ``running`` names the step that was in progress; it is informational only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobiledl.errors import UserError
from mobiledl.fileio import write_json_atomic
from mobiledl.profile import Measurement

STATE_FILE = "state.json"
FORMAT = "mobiledl-run"
VERSION = 1


@dataclass
class StepRecord:
    """One finished step. ``model`` is the model file after it, relative to the run dir."""

    index: int
    name: str
    kind: str
    spec: dict[str, Any]
    model: str
    measurement: dict[str, Any]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_measurement(self) -> Measurement:
        return Measurement(**self.measurement)


@dataclass
class RunState:
    """Everything a run needs to resume, as JSON."""

    recipe: str
    fingerprint: str
    header: dict[str, Any]
    input_model: str
    steps: list[StepRecord] = field(default_factory=list)
    running: dict[str, Any] | None = None

    def save(self, out_dir: Path) -> None:
        data = {"format": FORMAT, "version": VERSION, **asdict(self)}
        write_json_atomic(out_dir / STATE_FILE, data)

    @classmethod
    def load(cls, out_dir: Path) -> RunState | None:
        """The state in ``out_dir``, ``None`` if there is none."""
        path = out_dir / STATE_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.pop("format", None) != FORMAT or data.pop("version", 0) > VERSION:
                raise ValueError("not a mobiledl run state")
            data["steps"] = [StepRecord(**step) for step in data["steps"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{path} is not a readable run state ({exc})") from None

    def record(self, name: str) -> StepRecord | None:
        """The finished step called ``name``."""
        return next((step for step in self.steps if step.name == name), None)

    def model_before(self, index: int) -> str:
        """The model file that step ``index`` started from."""
        return self.steps[index - 1].model if index > 0 else self.input_model

    def last_artifact(self, key: str) -> str | None:
        """The newest artifact of kind ``key`` written by a finished step."""
        for step in reversed(self.steps):
            if key in step.artifacts:
                return step.artifacts[key]
        return None
