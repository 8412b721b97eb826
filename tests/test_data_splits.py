"""Patient-grouped, stratified, reproducible folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from svdh.core.errors import BadConfigError
from svdh.data.splits import assign_folds


def _cohort(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """Two hands per patient; a zero-inflated, long-tailed score like an RA cohort."""
    rng = np.random.default_rng(seed)
    patient = rng.exponential(25, n) * (rng.random(n) > 0.3)
    rows = []
    for i, s in enumerate(patient):
        for side in "LR":
            rows.append(
                {
                    "patient_id": f"P{i:03d}",
                    "side": side,
                    "svdh": float(np.round(s / 2 + rng.integers(0, 3))),
                }
            )
    return pd.DataFrame(rows)


def test_no_patient_in_two_folds_and_folds_balanced() -> None:
    df = _cohort()
    out = assign_folds(df, n_folds=5, seed=3)
    assert out.groupby("patient_id")["fold"].nunique().max() == 1
    sizes = out.groupby("fold")["patient_id"].nunique()
    assert set(sizes.index) == {0, 1, 2, 3, 4} and sizes.max() - sizes.min() <= 1
    assert len(out) == len(df) and out.index.equals(df.index)


def test_stratified_by_score() -> None:
    df = _cohort(200, seed=1)
    out = assign_folds(df, n_folds=5, seed=0)
    per_fold = out.groupby("fold")["svdh"]
    overall_mean = df["svdh"].mean()
    assert (per_fold.mean() - overall_mean).abs().max() < 0.2 * overall_mean
    high = df["svdh"] >= df["svdh"].quantile(0.9)  # the rare severe hands reach every fold
    assert out[high]["fold"].nunique() == 5
    # against chance: an unstratified split spreads fold means more widely
    spread = per_fold.mean().std()
    plain = assign_folds(df, n_folds=5, seed=0, stratify=None).groupby("fold")["svdh"].mean().std()
    assert spread < plain


def test_seed_reproducible_and_different_seeds_differ() -> None:
    df = _cohort()
    a = assign_folds(df, 5, seed=7)["fold"]
    assert a.equals(assign_folds(df.copy(), 5, seed=7)["fold"])
    assert not a.equals(assign_folds(df, 5, seed=8)["fold"])


def test_held_out_test_split() -> None:
    df = _cohort(100)
    out = assign_folds(df, n_folds=4, seed=0, test_fraction=0.2)
    test_patients = out.loc[out["fold"] == -1, "patient_id"].unique()
    assert len(test_patients) == 20
    assert not set(test_patients) & set(out.loc[out["fold"] >= 0, "patient_id"])
    assert sorted(out["fold"].unique()) == [-1, 0, 1, 2, 3]
    test_mean = out.loc[out["fold"] == -1, "svdh"].mean()
    assert abs(test_mean - df["svdh"].mean()) < 0.3 * df["svdh"].mean()


def test_other_targets_missing_values_and_small_cohorts() -> None:
    df = pd.DataFrame(
        {"patient_id": [str(i) for i in range(30)], "boneage": np.linspace(1, 228, 30)}
    )
    df.loc[[3, 4], "boneage"] = np.nan
    out = assign_folds(df, n_folds=3, seed=0, stratify="boneage")
    assert out["fold"].between(0, 2).all()
    ra2 = pd.DataFrame({"patient_id": ["A", "A", "B", "B", "C", "C"], "svdh": [19, 20, 2, 0, 0, 0]})
    assert sorted(assign_folds(ra2, n_folds=3)["fold"].unique()) == [0, 1, 2]
    with pytest.raises(BadConfigError, match="3 patients cannot fill 5 folds"):
        assign_folds(ra2, n_folds=5)
    with pytest.raises(BadConfigError, match="cannot stratify by 'grade'"):
        assign_folds(ra2, n_folds=2, stratify="grade")
    with pytest.raises(BadConfigError, match="leaves"):
        assign_folds(ra2, n_folds=3, test_fraction=0.5)
