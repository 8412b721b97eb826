"""What the web app shows about its model: name, task, score range, classes, model card."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from svdh.core.scoring import SeverityBins

#: Model card keys shown first, in this order; the rest follow alphabetically.
CARD_ORDER = (
    "warning",
    "intended_use",
    "training_data",
    "metrics",
    "interval_coverage",
    "localisation",
    "versions",
    "created",
    "source_dir",
)
#: Keys the page shows elsewhere (title, members table).
CARD_HIDDEN = ("name", "kind")
CARD_TITLES = {
    "interval_coverage": "Interval coverage reached (cross-validation)",
    "source_dir": "Trained in",
    "training_data": "Training data",
    "intended_use": "Intended use",
}
#: Readable names of metrics and summary fields on the model card page.
FIELD_LABELS = {
    "pcc": "Pearson correlation (PCC)",
    "rmse": "RMSE (score points)",
    "mae": "MAE (score points)",
    "ccc": "Lin's concordance (CCC)",
    "r2": "R²",
    "icc": "ICC(2,1)",
    "qwk": "quadratic-weighted kappa (classes)",
    "accuracy": "class accuracy",
    "balanced_accuracy": "balanced class accuracy",
    "class_mae": "class MAE (class steps)",
    "n": "images",
    "n_images": "images",
    "n_patients": "patients",
    "n_folds": "cross-validation folds",
    "n_test_images": "held-out test images",
    "p90": "90th percentile",
    "fraction_zero": "fraction scored 0",
    "phantom": "synthetic phantoms",
}


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
    #: the model scores hands turned fingers-up and shown as left hands (canonical stage)
    canonical: bool = False

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.summary.get("card") or {})

    @property
    def max_score(self) -> float:
        return float(self.bins.max_score)

    def card_sections(self) -> list[tuple[str, str, Any]]:
        """The model card as (key, title, value), most important first, empty ones left out."""
        card = {k: v for k, v in self.card.items() if v not in (None, "", [], {})}
        out: list[tuple[str, str, Any]] = []
        for key in (*CARD_ORDER, *sorted(card)):
            if key in card and key not in CARD_HIDDEN and key not in (k for k, _, _ in out):
                out.append(
                    (key, CARD_TITLES.get(key, key.replace("_", " ").capitalize()), card[key])
                )
        return out

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
    """Read the model's description from ``predictor.bundle`` (a :class:`svdh.inference.bundle.Bundle`)."""
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
        canonical=bool((getattr(bundle, "preprocess", None) or {}).get("canonical")),
    )
