"""Logit distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
Network", 2015): the student matches the teacher's temperature-softened class distribution;
the KL term is scaled by ``T^2`` so its gradients keep their magnitude.

``LogitDistillation`` is the term the trainer adds to its loss (``train(..., extra_loss=...)``,
see ``mobiledl.train.trainer.ExtraLoss``): the training loss becomes
``alpha * KD + (1 - alpha) * task loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.core.inputs import Inputs, call_model
from mobiledl.validate import check_number, expect_module


def logit_distillation_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float
) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class LogitDistillation:
    """Hinton KD from ``teacher`` as a trainer loss term: ``alpha * KD`` of every batch, with
    the task's loss scaled by ``task_weight = 1 - alpha``.

    Not an ``nn.Module``: the trainer trains the parameters of module terms, and the teacher
    stays frozen (it runs in eval mode without gradients).
    """

    def __init__(self, teacher: nn.Module, alpha: float = 0.9, temperature: float = 4.0) -> None:
        self.teacher = expect_module(teacher, "logit distillation", "teacher").eval()
        self.alpha = check_number(alpha, "kd alpha", 0.0, 1.0)
        self.temperature = check_number(temperature, "kd temperature", 0.0, low_open=True)
        self.task_weight = 1.0 - alpha

    def __call__(self, model: nn.Module, inputs: Inputs, logits: Tensor) -> Tensor:
        with torch.no_grad():
            teacher_logits = call_model(self.teacher, inputs)
        return self.alpha * logit_distillation_loss(logits, teacher_logits, self.temperature)
