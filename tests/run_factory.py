"""Fabricate run directories in the documented layout from known arrays.

Test data, not a stub: the arrays are chosen by each test (truth, bias, noise), written
with the same writer the ensemble uses (``svdh.runs.write_run``), and read back through
the same validating reader every consumer uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from svdh.core.scoring import SeverityBins
from svdh.runs.tables import write_run


def cohort(
    n_patients: int = 60, n_folds: int = 5, seed: int = 0, reader2: bool = False
) -> pd.DataFrame:
    """Two hand images per patient, skewed per-hand scores (0-140), patient-grouped folds."""
    rng = np.random.default_rng(seed)
    severity = rng.gamma(0.8, 18.0, n_patients)
    rows = []
    folds = rng.permutation(n_patients) % n_folds
    for i in range(n_patients):
        pid = f"P{i:03d}"
        for side in "LR":
            s = float(np.clip(np.round(severity[i] * rng.uniform(0.7, 1.3)), 0, 140))
            rows.append(
                {
                    "image": f"/nonexistent/{pid}-{side}H.png",
                    "image_id": f"{pid}-{side}H",
                    "patient_id": pid,
                    "side": side,
                    "fold": int(folds[i]),
                    "y_true": s,
                }
            )
    df = pd.DataFrame(rows)
    if reader2:
        df["reader2"] = np.clip(np.round(df["y_true"] + rng.normal(0, 4, len(df))), 0, 140)
    return df


def class_probs(
    classes: np.ndarray, k: int, sharpness: float, rng: np.random.Generator
) -> np.ndarray:
    """Probabilities peaked around given classes (noisy, rows summing to 1)."""
    logits = -sharpness * (np.arange(k)[None, :] - classes[:, None]) ** 2 + rng.normal(
        0, 0.5, (len(classes), k)
    )
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def make_run(
    out: Path,
    base: pd.DataFrame,
    *,
    task: str = "regression",
    bias: float = 0.0,
    noise: float = 5.0,
    scale: float = 1.0,
    seed: int = 1,
    backbone: str = "resnet18",
    init: str = "imagenet",
    scheme: str = "full",
    extra_config: dict | None = None,
    test: pd.DataFrame | None = None,
) -> Path:
    """A run whose y_pred = scale * y_true + bias + N(0, noise), in the layout of `svdh train`."""
    rng = np.random.default_rng(seed)
    bins = SeverityBins.hand()

    def predict(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        pred = np.clip(
            scale * df["y_true"].to_numpy() + bias + rng.normal(0, noise, len(df)), 0, 140
        )
        df["class_true"] = bins.to_class(df["y_true"].to_numpy())
        if task in ("classification", "ordinal"):
            p = class_probs(np.asarray(bins.to_class(pred)), bins.n_classes, 1.5, rng)
            for k in range(bins.n_classes):
                df[f"p_{k}"] = p[:, k]
            df["class_pred"] = p.argmax(axis=1)
            df["y_pred"] = bins.expected_score(p)
        else:
            df["y_pred"] = pred
            df["class_pred"] = bins.to_class(pred)
        return df

    config = {
        "task": task,
        "backbone": backbone,
        "init": init,
        "scheme": scheme,
        "image_size": 64,
        "bins": bins.to_dict(),
        "score_scope": "hand",
        "n_folds": int(base["fold"].nunique()),
        "seed": seed,
        **(extra_config or {}),
    }
    write_run(
        out,
        config,
        predict(base),
        predict(test) if test is not None else None,
        {"overall": {"note": "fabricated by tests/run_factory.py"}},
    )
    return out
