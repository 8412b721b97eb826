"""Losses of the four tasks.

* ``mse``, ``huber`` and ``l1`` (regression, bone age) on the standardised, transformed target,
* ``ce``: cross-entropy with optional class weights (against the imbalance of RA cohorts,
  where most patients fall in the lowest classes) and label smoothing,
* ``coral``: the CORAL ordinal loss of Cao, Mirjalili and Raschka (2020), taken from the
  authors' package ``coral-pytorch`` rather than re-implemented.

CORN (conditional ordinal) is not offered: its logits mean P(y > k | y > k-1), not the
CORAL P(y > k) that the model contract (``docs/architecture.md``) promises downstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from coral_pytorch.dataset import levels_from_labelbatch
from coral_pytorch.losses import coral_loss
from torch import nn

from svdh.core.errors import BadConfigError

LOSSES = {
    "regression": ("mse", "huber", "l1"),
    "boneage": ("mse", "huber", "l1"),
    "classification": ("ce",),
    "ordinal": ("coral",),
}
DEFAULT_LOSS = {"regression": "mse", "boneage": "huber", "classification": "ce", "ordinal": "coral"}


def class_weights_from_labels(labels: Sequence[int] | np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") class weights, n / (K_present * count_k).

    Classes absent from ``labels`` get weight 1 (they have no samples to weight), so the
    weights stay finite on small folds.
    """
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.ones(n_classes, dtype=np.float64)
    if present.any():
        w[present] = len(y) / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


class OrdinalLoss(nn.Module):
    """CORAL loss on ``B x (K-1)`` logits against integer class labels."""

    def __init__(self, n_classes: int, importance_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.n_classes = int(n_classes)
        if importance_weights is not None:
            self.register_buffer("importance", importance_weights.float())
        else:
            self.importance = None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        levels = levels_from_labelbatch(labels.long().cpu(), self.n_classes).to(logits)
        return coral_loss(logits, levels, importance_weights=self.importance)


def make_loss(
    task: str,
    name: str | None = None,
    n_classes: int = 7,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    huber_delta: float = 1.0,
) -> nn.Module:
    """The loss module of ``task`` (``name`` defaults per task, see ``DEFAULT_LOSS``).

    Regression losses compare standardised values (``huber_delta`` is in standard
    deviations of the transformed target); class losses take integer labels.
    """
    name = name or DEFAULT_LOSS[task]
    if name not in LOSSES.get(task, ()):
        raise BadConfigError(
            f"loss {name!r} does not fit task {task!r}; choose one of: {', '.join(LOSSES[task])}"
        )
    if name == "mse":
        return nn.MSELoss()
    if name == "huber":
        return nn.HuberLoss(delta=huber_delta)
    if name == "l1":  # the mean absolute error itself
        return nn.L1Loss()
    if name == "ce":
        if not 0.0 <= label_smoothing < 1.0:
            raise BadConfigError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    return OrdinalLoss(n_classes)
