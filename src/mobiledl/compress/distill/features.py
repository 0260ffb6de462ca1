"""Feature distillation: the losses and the feature distiller the trainer adds as a loss term.

- Hints (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): a learned
  regressor — here a 1x1 convolution (a linear layer for flat features) — maps a student
  feature to the teacher's channel count, and ``1/2 ||teacher - adapter(student)||^2``
  (averaged over elements) pulls it toward the teacher. FitNets trains the hint in a
  separate first stage; here it is a term added to the fine-tuning loss.
- Attention transfer (Zagoruyko and Komodakis, "Paying More Attention to Attention", ICLR
  2017): the spatial attention map ``Q = sum_c |A_c|^p`` (p = 2) of a feature, flattened and
  L2-normalized, is matched between student and teacher; channel counts may differ. The
  loss is ``beta/2 * sum_layers mean((Q_s - Q_t)^2)`` with ``beta = 1000`` as in the
  paper's experiments.

``FeatureDistiller`` captures the chosen features with forward hooks and is passed to
``train(..., extra_loss=distiller)``; being an ``nn.Module``, its adapters train with the
student.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.errors import UserError

FeatureKind = Literal["hint", "attention"]
FEATURE_KINDS = ("hint", "attention")
DEFAULT_WEIGHTS = {"hint": 1.0, "attention": 1000.0}


def attention_map(features: Tensor, p: float = 2.0) -> Tensor:
    """``normalize(flatten(mean_c |A_c|^p))`` of ``(N, C, H, W)`` features: ``(N, H*W)``.

    The channel mean (rather than sum) only rescales a map that is normalized anyway.
    """
    if features.dim() != 4:
        raise UserError(f"attention maps need (N, C, H, W) features; got {list(features.shape)}")
    return F.normalize(features.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student: Tensor, teacher: Tensor, p: float = 2.0) -> Tensor:
    """``mean((Q_s - Q_t)^2)`` of one pair of feature maps with equal spatial size."""
    if student.shape[-2:] != teacher.shape[-2:]:
        raise UserError(
            f"attention transfer needs equal spatial sizes; student {list(student.shape[-2:])} "
            f"vs teacher {list(teacher.shape[-2:])}"
        )
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


class HintAdapter(nn.Module):
    """The FitNets regressor: student channels to teacher channels (1x1 conv or linear)."""

    def __init__(self, student_channels: int, teacher_channels: int, spatial: bool) -> None:
        super().__init__()
        self.map: nn.Module = (
            nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
            if spatial
            else nn.Linear(student_channels, teacher_channels, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.map(x)


def hint_loss(student: Tensor, teacher: Tensor, adapter: nn.Module) -> Tensor:
    """``1/2 * mean((teacher - adapter(student))^2)`` (Romero et al. 2015)."""
    guided = adapter(student)
    if guided.shape != teacher.shape:
        raise UserError(
            f"hint: adapted student feature {list(guided.shape)} does not match the teacher's "
            f"{list(teacher.shape)}"
        )
    return 0.5 * (guided - teacher).pow(2).mean()


def default_feature_layers(model: nn.Module, example_input: Tensor) -> list[str]:
    """The last module of each resolution stage of ``model.features`` (or of ``model``).

    These are the group outputs attention transfer uses (Zagoruyko and Komodakis 2017); for
    a model without spatial features it is the last module of the trunk.
    """
    trunk = model.features if isinstance(getattr(model, "features", None), nn.Module) else model
    prefix = "features." if trunk is not model else ""
    children = list(trunk.named_children())
    if not children:
        raise UserError("cannot pick feature layers: the model has no sub-modules")
    shapes = _output_shapes(model, {f"{prefix}{n}": m for n, m in children}, example_input)
    names = [name for name in shapes if shapes[name] is not None]
    stages = [
        name
        for name, after in zip(names, [*names[1:], None], strict=True)
        if after is None or shapes[after][2:] != shapes[name][2:]
    ]
    return [name for name in stages if len(shapes[name]) == 4] or [names[-1]]


def _output_shapes(
    model: nn.Module, modules: Mapping[str, nn.Module], example_input: Tensor
) -> dict[str, tuple[int, ...] | None]:
    shapes: dict[str, tuple[int, ...] | None] = dict.fromkeys(modules)

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor):
                shapes[name] = tuple(output.shape)

        return record

    handles = [module.register_forward_hook(hook(n)) for n, module in modules.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


class FeatureDistiller(nn.Module):
    """Feature KD from ``teacher`` to ``student`` as a trainer ``extra_loss``.

    ``layers`` maps student module names to teacher module names (a list means the same
    names in both; default: :func:`default_feature_layers` of the teacher). ``kind`` is
    ``"hint"`` (FitNets, with one learned adapter per pair) or ``"attention"`` (AT).
    ``weight`` multiplies the summed loss (default 1 for hints, ``beta = 1000`` for AT,
    which is then halved as in the paper).

    Forward hooks capture the features whenever the models run; calling the distiller
    as ``distiller(student, x, logits)`` after the student's forward returns the loss,
    running the teacher on ``x`` itself unless ``LogitDistillation`` already did for this batch.
    Use it as a context manager (or call ``close``) to remove the hooks.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        example_input: Tensor,
        kind: FeatureKind = "attention",
        layers: Sequence[str] | Mapping[str, str] | None = None,
        weight: float | None = None,
    ) -> None:
        super().__init__()
        if kind not in FEATURE_KINDS:
            raise UserError(f"unknown feature distillation '{kind}'; choose hint or attention")
        self.kind = kind
        self.weight = DEFAULT_WEIGHTS[kind] if weight is None else weight
        self.teacher = [teacher]  # a list keeps the teacher out of this module's parameters
        self.pairs = _pairs(teacher, example_input, layers)
        self._student_features: dict[str, Tensor] = {}
        self._teacher_features: dict[str, Tensor] = {}
        self._teacher_input: Tensor | None = None
        self._handles = [
            *_capture(student, list(self.pairs), self._student_features),
            *_capture(teacher, list(self.pairs.values()), self._teacher_features, self._seen),
        ]
        self.adapters = nn.ModuleDict()
        if kind == "hint":
            self._build_adapters(student, teacher, example_input)

    def _seen(self, inputs: tuple) -> None:
        self._teacher_input = inputs[0] if inputs else None

    def _build_adapters(self, student: nn.Module, teacher: nn.Module, example: Tensor) -> None:
        s_shapes = _output_shapes(student, _modules(student, self.pairs), example)
        t_shapes = _output_shapes(teacher, _modules(teacher, self.pairs.values()), example)
        for s_name, t_name in self.pairs.items():
            s_shape, t_shape = s_shapes[s_name], t_shapes[t_name]
            if s_shape is None or t_shape is None or s_shape[2:] != t_shape[2:]:
                raise UserError(
                    f"hint layers '{s_name}' (student {s_shape}) and '{t_name}' (teacher "
                    f"{t_shape}) must give tensors with equal spatial sizes"
                )
            adapter = HintAdapter(s_shape[1], t_shape[1], spatial=len(s_shape) == 4)
            self.adapters[str(len(self.adapters))] = adapter.to(example.device)

    def forward(self, student: nn.Module, x: Tensor, logits: Tensor) -> Tensor:
        """The weighted feature loss for the batch ``x`` the student just ran on."""
        del student, logits
        if self._teacher_input is not x:
            teacher = self.teacher[0]
            teacher.eval()
            with torch.no_grad():
                teacher(x)
        terms = []
        for index, (s_name, t_name) in enumerate(self.pairs.items()):
            s_feat, t_feat = self._student_features[s_name], self._teacher_features[t_name]
            if self.kind == "hint":
                terms.append(hint_loss(s_feat, t_feat.detach(), self.adapters[str(index)]))
            else:
                terms.append(attention_transfer_loss(s_feat, t_feat.detach()))
        self._teacher_input = None
        scale = self.weight / 2 if self.kind == "attention" else self.weight
        return scale * torch.stack(terms).sum()

    def close(self) -> None:
        """Remove the forward hooks from both models."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureDistiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pairs(
    teacher: nn.Module, example: Tensor, layers: Sequence[str] | Mapping[str, str] | None
) -> dict[str, str]:
    if layers is None:
        layers = default_feature_layers(teacher, example)
    pairs = dict(layers) if isinstance(layers, Mapping) else {name: name for name in layers}
    if not pairs:
        raise UserError("feature distillation needs at least one layer")
    return pairs


def _modules(model: nn.Module, names: Sequence[str] | Mapping[str, str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise UserError(f"feature distillation: the model has no module '{unknown[0]}'")
    return {name: modules[name] for name in names}


def _capture(
    model: nn.Module,
    names: list[str],
    store: dict[str, Tensor],
    on_input: Callable[[tuple], None] | None = None,
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks storing each named module's output in ``store`` (and, optionally, reporting
    the model's input to ``on_input``)."""
    handles = []
    for name, module in _modules(model, names).items():

        def record(module: nn.Module, args: tuple, output: Tensor, name: str = name) -> None:
            store[name] = output

        handles.append(module.register_forward_hook(record))
    if on_input is not None:
        handles.append(model.register_forward_pre_hook(lambda module, args: on_input(args)))
    return handles
