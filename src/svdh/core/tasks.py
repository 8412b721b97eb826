"""The kinds of model svdh trains: one ``Task`` enum instead of bare strings.

``Task`` is a ``StrEnum``: a member equals its string (``Task.REGRESSION == "regression"``), so
configuration files, run directories and bundles keep storing plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class Task(StrEnum):
    REGRESSION = "regression"  # SvdH score (hand or patient total)
    CLASSIFICATION = "classification"  # severity classes, cross-entropy
    ORDINAL = "ordinal"  # severity classes, CORAL
    BONEAGE = "boneage"  # bone age in months (pretraining)

    @property
    def is_class(self) -> bool:
        """Predicts severity classes (with probabilities)."""
        return self in (Task.CLASSIFICATION, Task.ORDINAL)

    @property
    def scores_svdh(self) -> bool:
        """Predicts (or derives) an SvdH score, as opposed to bone age."""
        return self is not Task.BONEAGE


TASKS: tuple[str, ...] = tuple(t.value for t in Task)
CLASS_TASKS: tuple[str, ...] = (Task.CLASSIFICATION.value, Task.ORDINAL.value)
