"""What the web app shows about its model: name, task, score range, classes, model card."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from svdh.scoring import SeverityBins


@dataclass
class ModelInfo:
    """A view of the bundle for pages and ``GET /api/v1/model`` (plain data, no tensors)."""

    name: str
    task: str
    score_scope: str  # "hand" (0-140 per image) or "patient" (0-280 per image)
    bins: SeverityBins
    interval_level: float | None
    has_subscores: bool
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.summary.get("card") or {})

    @property
    def max_score(self) -> float:
        return float(self.bins.max_score)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "score_scope": self.score_scope,
            "score_range": [0, self.max_score],
            "interval_level": self.interval_level,
            "severity_classes": [
                {"class": k, "label": lab} for k, lab in enumerate(self.bins.labels)
            ],
            "has_erosion_jsn": self.has_subscores,
            **{k: v for k, v in self.summary.items() if k not in ("bins",)},
        }


def model_info(predictor: Any) -> ModelInfo:
    """Read the model's description from ``predictor.bundle`` (a :class:`svdh.bundle.Bundle`)."""
    bundle = getattr(predictor, "bundle", None)
    if bundle is None:
        raise TypeError("the predictor has no .bundle to describe the model")
    summary = bundle.summary()
    card = bundle.card
    conformal = bundle.conformal or {}
    level = conformal.get("level")
    name = card.get("name") or (bundle.path.stem if getattr(bundle, "path", None) else "svdh model")
    return ModelInfo(
        name=str(name),
        task=bundle.task,
        score_scope=bundle.score_scope,
        bins=bundle.bins,
        interval_level=float(level) if level is not None else None,
        has_subscores=bool(bundle.has_subscores),
        summary=summary,
    )
