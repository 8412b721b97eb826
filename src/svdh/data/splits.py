"""Patient-grouped, score-stratified cross-validation folds and a held-out test split.

All images of a patient land in one fold (a model is never validated on a hand whose other
hand it trained on). Patients are stratified by their score so every fold sees the whole
range, including the rare severe cases. The same seed gives the same folds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from svdh.core.errors import BadConfigError, BadDatasetError


def assign_folds(
    df: pd.DataFrame,
    n_folds: int = 5,
    seed: int = 0,
    stratify: str | None = "svdh",
    test_fraction: float = 0.0,
) -> pd.DataFrame:
    """Return a copy of ``df`` with an integer column ``fold``: 0..n_folds-1, or -1 for test.

    ``stratify``: a numeric column (``svdh``, ``patient_svdh``, ``boneage``...) averaged per
    patient and cut into rank-quantile strata; None (or a column without values) gives plain
    shuffled patient-grouped folds. ``test_fraction``: share of patients held out (fold -1),
    stratified the same way.
    """
    if "patient_id" not in df:
        raise BadDatasetError("assign_folds needs a patient_id column")
    if int(n_folds) < 2:
        raise BadConfigError(f"n_folds must be at least 2, got {n_folds}")
    if not 0.0 <= test_fraction < 1.0:
        raise BadConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_folds = int(n_folds)
    out = df.copy()
    patients = pd.Index(pd.unique(out["patient_id"].astype(str)))
    values = _patient_values(out, patients, stratify)

    test, pool = _test_split(patients, values, n_folds, seed, test_fraction)
    if len(pool) < n_folds:
        raise BadConfigError(
            f"{len(pool)} patients cannot fill {n_folds} folds; use --folds {max(2, len(pool))} or more data"
        )
    fold_of: dict[str, int] = {p: -1 for p in test}
    fold_of.update(_cv_folds(patients, values, pool, n_folds, seed))
    out["fold"] = out["patient_id"].astype(str).map(fold_of).astype(int)
    return out


def _test_split(
    patients: pd.Index, values: np.ndarray, n_folds: int, seed: int, test_fraction: float
) -> tuple[set[str], np.ndarray]:
    """The held-out test patients and the indices of the rest (the pool the folds split)."""
    from sklearn.model_selection import train_test_split

    pool = np.arange(len(patients))
    if test_fraction <= 0:
        return set(), pool
    n_test = int(round(test_fraction * len(patients)))
    if n_test < 1 or len(patients) - n_test < n_folds:
        raise BadConfigError(
            f"test_fraction {test_fraction} of {len(patients)} patients leaves "
            f"{len(patients) - n_test} for {n_folds} folds (and {n_test} for test); "
            "use fewer folds, a smaller fraction or more data"
        )
    strata = _strata(values, min(n_test, len(patients) - n_test), 2)
    train_idx, test_idx = train_test_split(
        pool,
        test_size=n_test,
        random_state=seed,
        shuffle=True,
        stratify=strata if strata is not None else None,
    )
    return set(patients[test_idx]), np.sort(train_idx)


def _cv_folds(
    patients: pd.Index, values: np.ndarray, pool: np.ndarray, n_folds: int, seed: int
) -> dict[str, int]:
    """Fold of each patient of ``pool``: stratified by value, else shuffled round robin."""
    from sklearn.model_selection import StratifiedKFold

    fold_of: dict[str, int] = {}
    strata = _strata(values[pool], 10, n_folds)
    if strata is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pool))
        for k, i in enumerate(order):
            fold_of[patients[pool[i]]] = k % n_folds
    else:
        skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, val) in enumerate(skf.split(np.zeros(len(pool)), strata)):
            for i in val:
                fold_of[patients[pool[i]]] = k
    return fold_of


def _patient_values(df: pd.DataFrame, patients: pd.Index, column: str | None) -> np.ndarray:
    if not column:
        return np.full(len(patients), np.nan)
    if column not in df:
        raise BadConfigError(f"cannot stratify by {column!r}: the manifest has no such column")
    per = pd.to_numeric(df[column], errors="coerce").groupby(df["patient_id"].astype(str)).mean()
    return per.reindex(patients).to_numpy(dtype=np.float64)


def _strata(values: np.ndarray, max_bins: int, min_size: int) -> np.ndarray | None:
    """Rank-quantile strata of at least ``min_size`` members, at most ``max_bins`` (or 10).

    Ranks break ties, so a cohort where most patients score 0 still gets strata; patients
    without a value form a stratum of their own when there are enough of them. None when
    there are too few values to stratify.
    """
    n = len(values)
    finite = np.isfinite(values)
    n_bins = int(min(10, max_bins, finite.sum() // max(min_size, 1)))
    if n_bins < 2:
        return None
    strata = np.full(n, -1, dtype=np.int64)
    ranks = pd.Series(values[finite]).rank(method="first").to_numpy()
    strata[finite] = np.minimum((ranks - 1) * n_bins // finite.sum(), n_bins - 1).astype(np.int64)
    missing = ~finite
    if 0 < missing.sum() < min_size:
        strata[missing] = 0  # too few to stand alone: join the lowest stratum
    return strata
