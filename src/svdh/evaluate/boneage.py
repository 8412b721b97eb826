"""Bone-age figures, in months: MAE, RMSE, bias, and the bias by age band and by sex.

A bone-age model is judged by its mean absolute error in months, and by whether it is
fair across ages: a model pulled towards the mean age over-estimates the youngest children
and under-estimates the oldest, which a single MAE hides. :func:`boneage_figures` gives
both; bands are 3 years wide by default (0-3 y, 3-6 y, ... of the *true* bone age).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Width of an age band, in months (3 years).
BAND_MONTHS = 36
#: The bias a band may carry before the figures flag it (months).
BAND_BIAS_LIMIT = 12.0


def _band_label(lo: float, hi: float) -> str:
    return f"{lo / 12:g}-{hi / 12:g} y"


def _sex_values(male: Sequence[Any] | np.ndarray | None, n: int) -> np.ndarray | None:
    """+1 male, 0 female, NaN unknown (from booleans, 1/0, M/F or male/female)."""
    if male is None:
        return None
    s = pd.Series(np.asarray(male, dtype=object)).astype(str).str.strip().str.lower()
    v = s.map(
        {"true": 1.0, "1": 1.0, "1.0": 1.0, "m": 1.0, "male": 1.0}
        | {"false": 0.0, "0": 0.0, "0.0": 0.0, "f": 0.0, "female": 0.0}
    )
    return v.to_numpy(dtype=float) if len(v) == n else None


def _summary(err: np.ndarray) -> dict[str, float | int]:
    return {
        "n": int(len(err)),
        "mae": float(np.mean(np.abs(err))) if len(err) else float("nan"),
        "rmse": float(np.sqrt(np.mean(err**2))) if len(err) else float("nan"),
        "bias": float(np.mean(err)) if len(err) else float("nan"),
    }


def boneage_figures(
    y_true: Sequence[float] | np.ndarray,
    y_pred: Sequence[float] | np.ndarray,
    male: Sequence[Any] | np.ndarray | None = None,
    band_months: int = BAND_MONTHS,
) -> dict[str, Any]:
    """MAE, RMSE, bias (predicted - true), PCC, and the same by true-age band and by sex.

    Rows with a missing truth or prediction are left out. ``by_band`` lists every band that
    holds at least one image; ``max_band_bias`` is the largest absolute band bias, and
    ``bands_over_limit`` the bands whose bias exceeds :data:`BAND_BIAS_LIMIT` months.
    """
    t = np.asarray(y_true, dtype=float)
    p = np.asarray(y_pred, dtype=float)
    sex = _sex_values(male, len(t))
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    sex = sex[keep] if sex is not None else None
    err = p - t
    out: dict[str, Any] = {"unit": "months", **_summary(err)}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["pcc"] = (
            float(np.corrcoef(t, p)[0, 1])
            if len(t) > 1 and np.std(t) > 0 and np.std(p) > 0
            else float("nan")
        )
    out["within_12"] = float(np.mean(np.abs(err) <= 12)) if len(err) else float("nan")
    bands = []
    top = (
        max(band_months, int(np.ceil((t.max() + 1e-9) / band_months)) * band_months)
        if len(t)
        else 0
    )
    for lo in range(0, top, band_months):
        m = (t >= lo) & (t < lo + band_months)
        if m.any():
            bands.append(
                {"band": _band_label(lo, lo + band_months), "lo": lo, "hi": lo + band_months}
                | _summary(err[m])
            )
    out["by_band"] = bands
    biases = [abs(b["bias"]) for b in bands]
    out["max_band_bias"] = float(max(biases)) if biases else float("nan")
    out["bands_over_limit"] = [b["band"] for b in bands if abs(b["bias"]) > BAND_BIAS_LIMIT]
    if sex is not None and np.isfinite(sex).any():
        out["by_sex"] = {
            name: _summary(err[sex == v]) for name, v in (("male", 1.0), ("female", 0.0))
        }
    return out


def figures_of_table(df: pd.DataFrame) -> dict[str, Any]:
    """:func:`boneage_figures` of a prediction table (``y_true``, ``y_pred``, ``male``)."""
    return boneage_figures(
        df["y_true"].to_numpy(float),
        df["y_pred"].to_numpy(float),
        df["male"].to_numpy() if "male" in df.columns else None,
    )
