"""Recipes: a YAML file naming a task, a model and the steps to apply, validated strictly.

A recipe is checked with pydantic (every model forbids unknown fields), then each step's
method config (``PruneConfig``, ``FactorizeConfig``, ``QuantConfig``, ``TrainConfig``) is
built once, so a bad value fails before anything runs. Errors become one-line
``UserError`` messages naming the step and field, e.g.
``recipe.yaml: steps[2] (factorize): unknown field 'rnk'``.

Example::

    name: tucker-kd-int8
    task: {name: digits, image_size: 16}
    model: {arch: resnet20}
    steps:
      - {step: train, epochs: 20}
      - {step: factorize, method: tucker2, macs_ratio: 0.5, round_to: 8}
      - {step: finetune, epochs: 5, lr: 0.01, kd: {feature: attention}}
      - {step: quantize, method: ptq}
      - {step: export}
      - {step: benchmark, batch_sizes: [1, 32]}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mobiledl.errors import UserError

COMPRESSION_STEPS = ("prune", "factorize", "quantize", "kmeans")


class Strict(BaseModel):
    """Base of every recipe section: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class TaskSpec(Strict):
    """A built-in task name or a path to user data (relative to the recipe)."""

    name: str
    image_size: int | tuple[int, int] | None = None
    seed: int = 0


class ModelSpec(Strict):
    """Either a zoo architecture built fresh (``arch``) or a model file (``file``)."""

    arch: str | None = None
    file: str | None = None
    width_mult: float = Field(1.0, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.arch is None) == (self.file is None):
            raise ValueError("set exactly one of 'arch' and 'file'")
        return self


class MeasureSpec(Strict):
    """How each step's ``Measurement`` is taken (ONNX Runtime latency settings)."""

    latency: bool = True
    batch_size: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    repeats: int = Field(30, ge=1)


class ReportSpec(Strict):
    """The HTML report; ``sensitivity``: sparsities of the per-layer analysis ([] = none)."""

    sensitivity: list[Annotated[float, Field(ge=0, lt=1)]] = [0.3, 0.5, 0.7, 0.9]


class TrainFields(Strict):
    """Training hyper-parameters shared by ``train``, ``finetune`` and method fine-tuning."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0

    def train_config(self, progress: bool = False, **overrides: Any) -> Any:
        """The ``TrainConfig`` these fields describe."""
        from mobiledl.train import TrainConfig

        fields = self.model_dump(include=set(TrainFields.model_fields))
        return TrainConfig(**{**fields, "progress": progress, **overrides})


class KDSpec(Strict):
    """Knowledge distillation for a fine-tuning step.

    ``teacher``: ``uncompressed`` (the model before the first compression step), the name
    of an earlier step, or a model file. ``alpha``/``temperature``: Hinton logit KD
    (``alpha = 0`` turns it off). ``feature``: ``hint`` (FitNets) or ``attention`` (AT).
    """

    teacher: str = "uncompressed"
    alpha: float = Field(0.9, ge=0, le=1)
    temperature: float = Field(4.0, gt=0)
    feature: Literal["none", "hint", "attention"] = "none"
    feature_weight: float | None = Field(None, ge=0)
    layers: list[str] | None = None


class StepBase(Strict):
    """``name`` labels the step in logs, reports and ``kd.teacher`` (default: the kind)."""

    name: str | None = None

    def config(self) -> Any:
        """The method config this step runs with (built at validation to check values)."""
        return None

    @model_validator(mode="after")
    def _check_config(self) -> StepBase:
        try:
            self.config()
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self


class TrainStep(StepBase, TrainFields):
    """Train the model (from scratch or further) on the task."""

    step: Literal["train"]

    def config(self) -> Any:
        return self.train_config()


class FinetuneStep(StepBase, TrainFields):
    """Fine-tune, optionally with knowledge distillation (``kd``)."""

    step: Literal["finetune"]
    epochs: int = Field(5, ge=0)
    lr: float | None = Field(0.01, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    kd: KDSpec | None = None

    def config(self) -> Any:
        if self.kd is None:
            return self.train_config()
        return self.train_config(kd_alpha=self.kd.alpha, kd_temperature=self.kd.temperature)


class PruneStep(StepBase):
    """``mobiledl.compress.prune.prune`` with a ``PruneConfig`` of these fields."""

    step: Literal["prune"]
    granularity: str = "element"
    criterion: str = "l1"
    sparsity: float | dict[str, float] | None = None
    macs_ratio: float | None = None
    scope: str | None = None
    schedule: str = "oneshot"
    steps: int = 5
    round_to: int = 8
    exclude: list[str] = []
    finetune: TrainFields | None = None

    def config(self) -> Any:
        from mobiledl.compress.prune import PruneConfig

        fields = self.model_dump(exclude={"name", "step", "finetune"})
        finetune = (self.finetune or TrainFields(epochs=0)).train_config()
        return PruneConfig(**{**fields, "exclude": tuple(self.exclude), "finetune": finetune})


class FactorizeStep(StepBase):
    """``mobiledl.compress.factorize.factorize`` with a ``FactorizeConfig`` of these fields."""

    step: Literal["factorize"]
    method: str | list[str] = "tucker2"
    energy: float | None = None
    macs_ratio: float | None = None
    vbmf: bool = False
    ranks: dict[str, int | list[int]] | None = None
    round_to: int = 1
    min_saving: float = 0.0
    layers: list[str] | None = None
    exclude: list[str] = []
    iterations: int = 50
    data_aware: bool = True
    calibration_samples: int = 512
    recalibrate_bn: bool = True

    def config(self) -> Any:
        from mobiledl.compress.factorize import FactorizeConfig

        return FactorizeConfig(**self.model_dump(exclude={"name", "step"}))


class QuantizeStep(StepBase):
    """Linear int8-style quantization: ``ptq`` (calibration) or ``qat`` (``epochs`` of QAT)."""

    step: Literal["quantize"]
    method: Literal["ptq", "qat"] = "ptq"
    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    observer: str = "minmax"
    calibration_samples: int = 512
    qat_method: str = "ste"
    epochs: int = Field(3, ge=0)
    lr: float = Field(0.005, gt=0)

    def config(self) -> Any:
        from mobiledl.compress.quantize import QuantConfig

        fields = self.model_dump(exclude={"name", "step", "method", "epochs", "lr"})
        return QuantConfig(**fields)


class KMeansStep(StepBase):
    """K-means weight sharing (Deep Compression stage 2), then centroid fine-tuning."""

    step: Literal["kmeans"]
    conv_bits: int = Field(8, ge=1, le=8)
    fc_bits: int = Field(5, ge=1, le=8)
    finetune_epochs: int = Field(0, ge=0)
    lr: float = Field(0.01, gt=0)


class EncodeStep(StepBase):
    """Huffman coding of a k-means model (Deep Compression stage 3): measures storage."""

    step: Literal["encode"]
    method: Literal["huffman"] = "huffman"
    conv_index_bits: int = Field(8, ge=1)
    fc_index_bits: int = Field(5, ge=1)


class ExportStep(StepBase):
    """Write the deployable ONNX file (int8 QDQ for a quantized model) into the run dir."""

    step: Literal["export"]
    file: str = "model.onnx"


class BenchmarkStep(StepBase):
    """Time the exported model in ONNX Runtime at several batch sizes and thread counts."""

    step: Literal["benchmark"]
    batch_sizes: list[Annotated[int, Field(ge=1)]] = [1]
    threads: list[Annotated[int, Field(ge=1)] | None] = [None]
    repeats: int = Field(50, ge=1)


Step = Annotated[
    TrainStep
    | FinetuneStep
    | PruneStep
    | FactorizeStep
    | QuantizeStep
    | KMeansStep
    | EncodeStep
    | ExportStep
    | BenchmarkStep,
    Field(discriminator="step"),
]
STEP_KINDS = (
    "train",
    "finetune",
    "prune",
    "factorize",
    "quantize",
    "kmeans",
    "encode",
    "export",
    "benchmark",
)


class Recipe(Strict):
    """A named task, model and ordered list of steps."""

    name: str
    description: str = ""
    task: TaskSpec
    model: ModelSpec
    measure: MeasureSpec = MeasureSpec()
    report: ReportSpec = ReportSpec()
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_steps(self) -> Recipe:
        names = self.step_names()
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"steps[{index}]: duplicate step name '{name}'")
        for index, step in enumerate(self.steps):
            kd = getattr(step, "kd", None)
            if kd is not None and kd.teacher in names and names.index(kd.teacher) >= index:
                raise ValueError(f"steps[{index}]: kd.teacher '{kd.teacher}' is not earlier")
        return self

    def step_names(self) -> list[str]:
        """Each step's name: its ``name``, else its kind (numbered if the kind repeats)."""
        names: list[str] = []
        for index, step in enumerate(self.steps):
            name = step.name or step.step
            if step.name is None and name in names:
                name = f"{name}-{[s.step for s in self.steps[:index]].count(step.step) + 1}"
            names.append(name)
        return names

    def spec(self, index: int) -> dict[str, Any]:
        """Step ``index`` as plain JSON data (what a run records to detect changes)."""
        return self.steps[index].model_dump(mode="json")

    def header(self) -> dict[str, Any]:
        """Everything but the steps, as plain JSON data."""
        return self.model_dump(mode="json", include={"task", "model", "measure"})

    def fingerprint(self) -> str:
        """A short hash of the whole recipe."""
        data = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(data).hexdigest()[:16]


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe; ``UserError`` with one line naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_recipe(data, source=str(path))


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate already-parsed recipe data."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a mapping with name, task, model and steps")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {describe_error(exc.errors()[0], data)}") from None


def describe_error(error: dict[str, Any], data: dict[str, Any]) -> str:
    """One line for a pydantic error: where (``steps[2] (factorize)``) and what."""
    loc = list(error["loc"])
    kind, message = error["type"], error["msg"]
    where, field = _where(loc, data)
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag")
        return f"{where}: unknown step '{tag}'; choose one of {', '.join(STEP_KINDS)}"
    if kind == "union_tag_not_found":
        return f"{where}: missing 'step' (one of {', '.join(STEP_KINDS)})"
    if kind in ("extra_forbidden", "missing") and not field:
        where, field = "recipe", where
    if kind == "extra_forbidden":
        return f"{where}: unknown field '{field}'"
    if kind == "missing":
        return f"{where}: missing field '{field}'"
    message = message.removeprefix("Value error, ")
    if not loc:
        return message
    return f"{where}: {field}: {message}" if field else f"{where}: {message}"


def _where(loc: list[Any], data: dict[str, Any]) -> tuple[str, str]:
    """``(where, field)``: the section (``steps[2] (factorize)``, ``task``) and the field path."""
    if loc and loc[0] == "steps" and len(loc) > 1 and isinstance(loc[1], int):
        index = loc[1]
        rest = loc[2:]
        if rest and rest[0] in STEP_KINDS:
            rest = rest[1:]
        step = data.get("steps", [])[index] if index < len(data.get("steps", [])) else {}
        kind = step.get("step") if isinstance(step, dict) else None
        where = f"steps[{index}] ({kind})" if kind in STEP_KINDS else f"steps[{index}]"
        return where, _path(rest)
    if not loc:
        return "recipe", ""
    return str(loc[0]), _path(loc[1:])


def _path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
