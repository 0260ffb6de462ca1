"""Recipes: a YAML file naming a task, a model and the steps to apply, validated strictly.

A step is ``{step: KIND, name: LABEL, ...fields}``. KIND is a registered method (``train``,
``distill``, ``prune``, ``channel_prune``, ``factorize``, ``ptq``, ``qat``, ``kmeans``,
``binary``, ``ternary``, ``mixed_precision``, ``adapt``, ...) whose fields are exactly those of
its config class (``mobiledl.core.methods``), so a recipe reaches every option a method has and
nothing else; or one of the pipeline steps ``encode``, ``export``, ``benchmark``. The header is
checked with pydantic (unknown fields are errors) and every step's config is built before
anything runs. Errors are one-line ``UserError`` messages naming the step and field, e.g.
``recipe.yaml: steps[2] (factorize): unknown field 'rnk'``. Steps written in the format of
earlier versions are translated (``translate_legacy``).

Example::

    name: tucker-kd-int8
    task: {name: digits, image_size: 16}
    model: {arch: resnet20}
    steps:
      - {step: train, epochs: 20}
      - {step: factorize, decomposition: tucker2, macs_ratio: 0.5, round_to: 8}
      - {step: distill, feature: attention, train: {epochs: 5, lr: 0.01}}
      - {step: ptq}
      - {step: export}
      - {step: benchmark, batch_sizes: [1, 32]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from mobiledl.core.config import MethodConfig
from mobiledl.core.methods import get_method, list_methods
from mobiledl.data.prepare import parse_split
from mobiledl.errors import UserError
from mobiledl.fileio import check_file_name, check_relative_name


class Strict(BaseModel):
    """Base of every recipe section: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class TaskSpec(Strict):
    """A built-in task name, a path to user data or three ``.npz`` files ``TRAIN,VAL,TEST``
    (paths relative to the recipe), and its split: ``split: [0.7, 0.15, 0.15]`` (train, val,
    test fractions of each class; default 0.6, 0.2, 0.2)."""

    name: str
    image_size: int | tuple[int, int] | None = None
    seed: int = 0
    split: tuple[float, float, float] | None = None

    @field_validator("split")
    @classmethod
    def _fractions(cls, split: tuple[float, float, float] | None) -> Any:
        try:
            return None if split is None else parse_split(split)
        except UserError as exc:
            raise ValueError(str(exc)) from None


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


class EncodeStep(Strict):
    """Huffman coding of a k-means model (Deep Compression stage 3): measures storage."""

    step: Literal["encode"]
    name: str | None = None
    method: Literal["huffman"] = "huffman"
    conv_index_bits: int = Field(8, ge=1)
    fc_index_bits: int = Field(5, ge=1)


class ExportStep(Strict):
    """Write the deployable artifact (int8 for a quantized model) into the run dir."""

    step: Literal["export"]
    name: str | None = None
    file: str = "model.onnx"

    @field_validator("file")
    @classmethod
    def _inside_run_dir(cls, file: str) -> str:
        try:
            return check_relative_name(file, "the path")
        except UserError as exc:
            raise ValueError(str(exc)) from None


class BenchmarkStep(Strict):
    """Time the exported model at several batch sizes and thread counts."""

    step: Literal["benchmark"]
    name: str | None = None
    batch_sizes: list[Annotated[int, Field(ge=1)]] = [1]
    threads: list[Annotated[int, Field(ge=1)] | None] = [None]
    repeats: int = Field(50, ge=1)


#: Steps that measure or ship the model rather than apply a method to it.
PIPELINE_STEPS: dict[str, type[Strict]] = {
    "encode": EncodeStep,
    "export": ExportStep,
    "benchmark": BenchmarkStep,
}
#: Methods that train rather than compress (a KD teacher "uncompressed" is the model before
#: the first step that is not one of these).
TRAINING_METHODS = ("train", "distill", "adapt")


@dataclass(frozen=True)
class RecipeStep:
    """One validated step: its kind (a method name or a pipeline step), its label, its
    config (a ``MethodConfig`` for a method, else the pipeline step's settings) and the kind
    as the recipe wrote it (``finetune`` of an earlier version is the ``train`` method)."""

    kind: str
    name: str | None
    config: Any
    written_kind: str = ""

    @property
    def label(self) -> str:
        """The step's default name: the kind the recipe wrote."""
        return self.written_kind or self.kind

    @property
    def is_method(self) -> bool:
        return isinstance(self.config, MethodConfig)

    def spec(self) -> dict[str, Any]:
        """The step as plain JSON data (what a run records to detect changes)."""
        if self.is_method:
            fields = self.config.fields_dict()
        else:
            fields = self.config.model_dump(mode="json", exclude={"step", "name"})
        return {"step": self.kind, "name": self.name, **fields}


class Recipe(Strict):
    """A named task, model and ordered list of steps."""

    name: str
    description: str = ""
    task: TaskSpec
    model: ModelSpec
    measure: MeasureSpec = MeasureSpec()
    report: ReportSpec = ReportSpec()
    steps: list[dict[str, Any]] = Field(min_length=1)
    _parsed: list[RecipeStep] = PrivateAttr(default_factory=list)

    @property
    def parsed_steps(self) -> list[RecipeStep]:
        """The validated steps (``parse_recipe`` fills them)."""
        return self._parsed

    def step_names(self) -> list[str]:
        """Each step's name: its ``name``, else its kind (numbered if the kind repeats)."""
        names: list[str] = []
        labels = [step.label for step in self._parsed]
        for index, step in enumerate(self._parsed):
            name = step.name or step.label
            if step.name is None and name in names:
                name = f"{name}-{labels[:index].count(step.label) + 1}"
            names.append(name)
        return names

    def spec(self, index: int) -> dict[str, Any]:
        """Step ``index`` as plain JSON data (what a run records to detect changes)."""
        return self._parsed[index].spec()

    def header(self) -> dict[str, Any]:
        """Everything but the steps, as plain JSON data."""
        return self.model_dump(mode="json", include={"task", "model", "measure"})

    def fingerprint(self) -> str:
        """A short hash of the whole recipe."""
        data = {**self.header(), "steps": [step.spec() for step in self._parsed]}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


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
    """Validate already-parsed recipe data: the header with pydantic, each step against its
    method's config class (or the pipeline step's model)."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe must be a mapping with name, task, model and steps")
    steps = data.get("steps")
    if isinstance(steps, list) and not all(isinstance(step, dict) for step in steps):
        index = next(i for i, step in enumerate(steps) if not isinstance(step, dict))
        raise UserError(f"{source}: steps[{index}]: a step is a mapping with 'step' and fields")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {describe_error(exc.errors()[0], data)}") from None
    recipe._parsed = [parse_step(index, raw, source) for index, raw in enumerate(recipe.steps)]
    _check_names(recipe, source)
    return recipe


def parse_step(index: int, raw: dict[str, Any], source: str = "recipe") -> RecipeStep:
    """One step: ``{step: KIND, name: LABEL, ...fields}``; KIND is a method (see
    ``mobiledl.core.methods.list_methods``) or ``encode`` / ``export`` / ``benchmark``."""
    written = raw.get("step") if isinstance(raw.get("step"), str) else ""
    raw = translate_legacy(raw)
    kind = raw.get("step")
    known = isinstance(kind, str) and kind in step_kinds()
    where = f"{source}: steps[{index}]" + (f" ({kind})" if known else "")
    if not isinstance(kind, str):
        raise UserError(f"{where}: missing 'step' (one of {', '.join(step_kinds())})")
    name = raw.get("name")
    if name is not None:
        check_file_name(name, f"{where}: name")
    if kind in PIPELINE_STEPS:
        try:
            return RecipeStep(kind, name, PIPELINE_STEPS[kind].model_validate(raw), written)
        except ValidationError as exc:
            raise UserError(f"{where}: {_field_error(exc.errors()[0])}") from None
    if kind not in {method.name for method in list_methods()}:
        raise UserError(f"{where}: unknown step '{kind}'; choose one of {', '.join(step_kinds())}")
    fields = {k: v for k, v in raw.items() if k not in ("step", "name")}
    config = get_method(kind).config_type.from_fields(fields, where)
    return RecipeStep(kind, name, config, written)


def step_kinds() -> list[str]:
    """Every step kind a recipe accepts."""
    return sorted({method.name for method in list_methods()} | set(PIPELINE_STEPS))


def _field_error(error: dict[str, Any]) -> str:
    field = _path([part for part in error["loc"] if part not in PIPELINE_STEPS])
    if error["type"] == "extra_forbidden":
        return f"unknown field '{field}'"
    message = error["msg"].removeprefix("Value error, ")
    return f"{field}: {message}" if field else message


def _check_names(recipe: Recipe, source: str) -> None:
    names = recipe.step_names()
    for index, name in enumerate(names):
        if name in names[:index]:
            raise UserError(f"{source}: steps[{index}]: duplicate step name '{name}'")
    for index, step in enumerate(recipe.parsed_steps):
        teacher = getattr(step.config, "teacher", None)
        if isinstance(teacher, str) and teacher in names and names.index(teacher) >= index:
            raise UserError(f"{source}: steps[{index}]: teacher '{teacher}' is not an earlier step")


# ---------------------------------------------------------------- recipes of earlier versions


def translate_legacy(raw: dict[str, Any]) -> dict[str, Any]:
    """A step written in the recipe format before steps were method configs, in today's form:

    - ``finetune`` (default 5 epochs, lr 0.01, no warm-up) is ``train``, or ``distill`` with
      its ``kd`` block (``teacher``, ``alpha``, ``temperature``, ``feature``, ...);
    - ``quantize`` with ``method: ptq | qat`` is ``ptq`` or ``qat`` (``epochs``, ``lr`` and
      ``qat_method`` become the QAT training run and algorithm);
    - ``prune`` with ``granularity: channel`` is ``channel_prune``;
    - ``kmeans`` with ``conv_bits`` / ``fc_bits`` / ``finetune_epochs`` / ``lr`` is ``kmeans``
      with ``bits`` and a rule for the linear layers;
    - ``factorize``'s ``method`` is ``decomposition``.
    """
    kind = raw.get("step")
    translate = _LEGACY.get(kind) if isinstance(kind, str) else None
    return translate(dict(raw)) if translate else raw


def _legacy_finetune(raw: dict[str, Any]) -> dict[str, Any]:
    head = {k: raw.pop(k) for k in ("name",) if k in raw}
    raw.pop("step")
    kd = raw.pop("kd", None)
    training = {"epochs": 5, "lr": 0.01, "warmup_epochs": 0.0, **raw}
    if kd is None:
        return {"step": "train", **head, **training}
    if not isinstance(kd, dict):
        return {"step": "distill", **head, "kd": kd}  # fails validation with a clear field name
    kd = dict(kd)
    teacher = kd.pop("teacher", "uncompressed")
    return {"step": "distill", **head, "teacher": teacher, **kd, "train": training}


def _legacy_quantize(raw: dict[str, Any]) -> dict[str, Any]:
    method = raw.pop("method", "ptq")
    raw.pop("step")
    head = {k: raw.pop(k) for k in ("name",) if k in raw}
    if method != "qat":
        return {"step": method, **head, **raw}
    training = {"epochs": raw.pop("epochs", 3), "lr": raw.pop("lr", 0.005), "warmup_epochs": 0}
    algorithm = raw.pop("qat_method", "ste")
    return {"step": "qat", **head, "quant": raw, "algorithm": algorithm, "train": training}


def _legacy_prune(raw: dict[str, Any]) -> dict[str, Any]:
    if raw.get("granularity") != "channel":
        return raw
    raw.pop("granularity")
    if raw.get("schedule", "oneshot") == "oneshot":
        raw.pop("schedule", None)
    return {**raw, "step": "channel_prune"}


def _legacy_kmeans(raw: dict[str, Any]) -> dict[str, Any]:
    if not {"conv_bits", "fc_bits", "finetune_epochs", "lr"} & set(raw):
        return raw
    conv_bits, fc_bits = raw.pop("conv_bits", 8), raw.pop("fc_bits", 5)
    finetune = {"epochs": raw.pop("finetune_epochs", 0), "lr": raw.pop("lr", 0.01)}
    rules = [{"match": "type:Linear", "bits": fc_bits}]
    return {**raw, "bits": conv_bits, "overrides": rules, "finetune": finetune}


def _legacy_factorize(raw: dict[str, Any]) -> dict[str, Any]:
    if "method" in raw and "decomposition" not in raw:
        raw["decomposition"] = raw.pop("method")
    return raw


_LEGACY = {
    "finetune": _legacy_finetune,
    "quantize": _legacy_quantize,
    "prune": _legacy_prune,
    "kmeans": _legacy_kmeans,
    "factorize": _legacy_factorize,
}


def describe_error(error: dict[str, Any], data: dict[str, Any]) -> str:
    """One line for a pydantic error in the recipe's header: where (``task``) and what."""
    loc = list(error["loc"])
    kind, message = error["type"], error["msg"]
    where, field = (str(loc[0]), _path(loc[1:])) if loc else ("recipe", "")
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


def _path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
