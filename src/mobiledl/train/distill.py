"""Knowledge distillation losses.

Logit distillation follows Hinton, Vinyals and Dean, "Distilling the Knowledge in a
Neural Network" (2015): the student matches the teacher's temperature-softened class
distribution; the KL term is scaled by T^2 so its gradients keep their magnitude.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
