"""Task heads on top of a backbone's pooled features, and target transforms.

A head maps ``B x F`` features to the task's raw output:

* ``regression``: ``B x 1`` (total) or ``B x 2`` (erosion, JSN: the total is their sum),
* ``boneage``: ``B x 1`` (months), optionally with the sex of the child as an input,
* ``classification``: ``B x K`` logits,
* ``ordinal``: ``B x (K-1)`` CORAL logits, one shared weight vector and K-1 ordered biases
  (``coral_pytorch.layers.CoralLayer``), which makes the predicted P(y > k) rank-consistent.

Regression outputs are learnt in a standardised, optionally transformed space
(``z = (T(y) - shift) / scale``); ``SvdhNet`` inverts this inside ``forward`` so users and
later stages only ever see scores and months.
"""

from __future__ import annotations

import torch
from coral_pytorch.layers import CoralLayer
from torch import nn

from svdh.core.errors import BadConfigError

TASKS = ("regression", "classification", "ordinal", "boneage")

#: Forward and inverse target transforms. log1p spreads the many low SvdH scores of an RA
#: cohort and compresses the long tail; expm1 maps predictions back to the score scale.
TRANSFORMS = {
    "none": (lambda t: t, lambda t: t),
    "log1p": (torch.log1p, torch.expm1),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise BadConfigError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    return task


def check_transform(name: str) -> str:
    if name not in TRANSFORMS:
        raise BadConfigError(
            f"unknown target transform {name!r}; choose one of: {', '.join(TRANSFORMS)}"
        )
    return name


def n_raw_outputs(task: str, n_classes: int, extra_heads: bool) -> int:
    """Width of the head's raw output for a task."""
    if task == "regression":
        return 2 if extra_heads else 1
    if task == "boneage":
        return 1
    if task == "classification":
        return n_classes
    return n_classes - 1  # ordinal (CORAL)


class Head(nn.Module):
    """Dropout and the task's output layer; ``sex`` (B, +1 male / -1 female / 0 unknown)
    enters through a small embedding concatenated to the image features (bone age)."""

    SEX_DIM = 16

    def __init__(
        self,
        n_features: int,
        task: str,
        n_classes: int = 7,
        extra_heads: bool = False,
        use_sex: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.task = check_task(task)
        self.use_sex = bool(use_sex)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.sex_embed = (
            nn.Sequential(nn.Linear(1, self.SEX_DIM), nn.ReLU()) if self.use_sex else None
        )
        width = n_features + (self.SEX_DIM if self.use_sex else 0)
        if task == "ordinal":
            if n_classes < 2:
                raise BadConfigError("an ordinal task needs at least 2 classes")
            self.out: nn.Module = CoralLayer(width, n_classes)
        else:
            self.out = nn.Linear(width, n_raw_outputs(task, n_classes, extra_heads))

    def forward(self, feats: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.dropout(feats)
        if self.sex_embed is not None:
            if sex is None:
                sex = torch.zeros(feats.shape[0], device=feats.device, dtype=feats.dtype)
            s = self.sex_embed(sex.reshape(-1, 1).to(feats.dtype))
            feats = torch.cat([feats, s], dim=1)
        return self.out(feats)
