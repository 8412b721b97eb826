"""Agreement and classification metrics, bootstrap confidence intervals, conformal intervals.

What a maintained library computes comes from it: Pearson's r (scipy), RMSE, MAE, R²,
accuracy, balanced accuracy, quadratic-weighted kappa and the confusion matrix (scikit-learn),
the percentile bootstrap of unclustered data (``scipy.stats.bootstrap``). Written here, because
neither library has them: Lin's concordance correlation coefficient, ICC(2,1), Bland-Altman
limits, the patient-clustered bootstrap (two hands of one patient are not independent), and
split-conformal intervals with the finite-sample quantile.

Classes from scores always go through :class:`svdh.core.scoring.SeverityBins`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

from svdh.core import hands
from svdh.core.errors import BadConfigError, BadRunError
from svdh.core.scoring import SeverityBins

DEFAULT_SDC = 5.0
DEFAULT_ALPHA = 0.1
#: Fewest resampling units (rows, or patients when clustered) for a bootstrap CI.
MIN_BOOT_UNITS = 10


# --------------------------------------------------------------------------- agreement of scores


def _f(x: Any) -> float:
    return float(x) if x is not None and np.isfinite(x) else float("nan")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (scipy); NaN where it is undefined (fewer than 2 rows, a constant array)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def lin_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient (Lin 1989, population moments).

    ``2 cov(x, y) / (var x + var y + (mean x - mean y)^2)``: Pearson's r penalised for
    any systematic difference, so a biased but well-correlated scorer scores lower.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return float("nan")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    den = vx + vy + (mx - my) ** 2
    return float(2 * cov / den) if den > 0 else float("nan")


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) of Shrout and Fleiss (1979): two-way random effects, absolute agreement,
    single rater. ``ratings`` is n targets x k raters (here: true score and prediction).
    """
    r = np.asarray(ratings, float)
    if r.ndim != 2 or r.shape[0] < 2 or r.shape[1] < 2:
        return float("nan")
    n, k = r.shape
    grand = r.mean()
    ss_rows = k * ((r.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((r.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((r - grand) ** 2).sum() - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    den = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / den) if den > 0 else float("nan")


def bland_altman(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Bland-Altman bias (mean of prediction - truth) and 95% limits of agreement
    (bias +/- 1.96 SD of the differences, SD with n-1)."""
    d = np.asarray(y_pred, float) - np.asarray(y_true, float)
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def _pearson_axis(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Vectorised Pearson r along ``axis`` (for the bootstrap's thousands of resamples)."""
    xm = x - x.mean(axis=axis, keepdims=True)
    ym = y - y.mean(axis=axis, keepdims=True)
    num = (xm * ym).sum(axis=axis)
    den = np.sqrt((xm**2).sum(axis=axis) * (ym**2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def bootstrap_ci(
    statistic: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*arrays, axis=-1)`` (vectorised, paired rows).

    Without ``groups``: ``scipy.stats.bootstrap``. With ``groups`` (patient ids): a cluster
    bootstrap that resamples whole patients, hand-written because scipy has none; two hands
    of one patient are correlated, and resampling them as independent rows makes the CI
    too narrow. Fewer than :data:`MIN_BOOT_UNITS` rows (or patients) give NaN: a bootstrap
    of a handful of units spans the whole range and says nothing.
    """
    arrays = [np.asarray(a, float) for a in arrays]
    n = len(arrays[0])
    if n < MIN_BOOT_UNITS or n_boot < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                tuple(arrays),
                statistic,
                paired=True,
                vectorized=True,
                n_resamples=n_boot,
                batch=100,  # bounds memory: n_boot x n resamples are never held at once
                confidence_level=level,
                method="percentile",
                rng=rng,
            )
        return _f(res.confidence_interval.low), _f(res.confidence_interval.high)
    codes, uniq = pd.factorize(pd.Series(np.asarray(groups)).astype(str))
    n_groups = len(uniq)
    if n_groups < MIN_BOOT_UNITS:
        return float("nan"), float("nan")
    # Rows sorted by group: group g occupies order[starts[g] : starts[g] + sizes[g]], so the
    # rows of a resample of groups are gathered with vectorised index arithmetic.
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    vals = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, n_groups, n_groups)
        sz = sizes[pick]
        offsets = np.arange(sz.sum()) - np.repeat(np.cumsum(sz) - sz, sz)
        idx = order[np.repeat(starts[pick], sz) + offsets]
        vals[b] = statistic(*(a[idx] for a in arrays), axis=-1)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(vals, [tail, 100 - tail])
    return float(lo), float(hi)


def score_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    bins: SeverityBins | None = None,
    sdc: float = DEFAULT_SDC,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement of predicted with true scores (see module docstring for the sources)."""
    t = np.asarray(y_true, float)
    p = np.asarray(y_pred, float)
    if len(t) != len(p):
        raise BadRunError(f"y_true has {len(t)} rows but y_pred {len(p)}")
    n = len(t)
    err = p - t
    out: dict[str, Any] = {"n": n}
    out["pcc"] = pearson(t, p)
    out["pcc_ci"] = list(
        bootstrap_ci(_pearson_axis, (t, p), groups=groups, n_boot=n_boot, seed=seed)
    )
    out["rmse"] = float(math.sqrt(skm.mean_squared_error(t, p))) if n else float("nan")
    out["mae"] = float(skm.mean_absolute_error(t, p)) if n else float("nan")
    out["r2"] = float(skm.r2_score(t, p)) if n > 1 and np.ptp(t) > 0 else float("nan")
    out["ccc"] = lin_ccc(t, p)
    out["icc"] = icc_2_1(np.column_stack([t, p]))
    out["bland_altman"] = bland_altman(t, p) if n else {}
    out["sdc"] = float(sdc)
    out["within_sdc"] = float(np.mean(np.abs(err) <= sdc)) if n else float("nan")
    if bins is not None and n:
        cls = np.asarray(bins.to_class(t)).reshape(-1)
        rows = []
        for k in range(bins.n_classes):
            m = cls == k
            if not m.any():
                continue
            e = err[m]
            rows.append(
                {
                    "class": k,
                    "range": bins.labels[k],
                    "n": int(m.sum()),
                    "mae": float(np.abs(e).mean()),
                    "rmse": float(np.sqrt((e**2).mean())),
                    "bias": float(e.mean()),
                    "within_sdc": float(np.mean(np.abs(e) <= sdc)),
                }
            )
        out["by_range"] = rows
    return out


# --------------------------------------------------------------------------- classes


def class_metrics(c_true: np.ndarray, c_pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, balanced accuracy, MAE/RMSE in class steps, PCC, QWK, confusion matrix."""
    t = np.asarray(c_true, int)
    p = np.asarray(c_pred, int)
    labels = list(range(n_classes))
    steps = (p - t).astype(float)
    with warnings.catch_warnings():
        # sklearn warns (and returns NaN/0) where a class is absent; NaN is the honest answer.
        warnings.simplefilter("ignore")
        bal = skm.balanced_accuracy_score(t, p) if len(t) else float("nan")
        qwk = (
            skm.cohen_kappa_score(t, p, labels=labels, weights="quadratic")
            if len(t)
            else float("nan")
        )
    return {
        "accuracy": float(skm.accuracy_score(t, p)) if len(t) else float("nan"),
        "balanced_accuracy": _f(bal),
        "class_mae": float(np.abs(steps).mean()) if len(t) else float("nan"),
        "class_rmse": float(np.sqrt((steps**2).mean())) if len(t) else float("nan"),
        "class_pcc": pearson(t, p),
        "qwk": _f(qwk),
        "confusion": skm.confusion_matrix(t, p, labels=labels).tolist(),
    }


# --------------------------------------------------------------------------- conformal intervals


def conformal_quantile(abs_residuals: np.ndarray, alpha: float = DEFAULT_ALPHA) -> float:
    """Split-conformal quantile: the ceil((n+1)(1-alpha))-th smallest absolute residual.

    With exchangeable calibration and test rows, ``|y - y_hat| <= q`` holds for a new row
    with probability >= 1 - alpha. ``inf`` where n is too small for that level.
    """
    if not 0 < alpha < 1:
        raise BadConfigError(f"conformal alpha must lie in (0, 1), got {alpha}")
    r = np.sort(np.abs(np.asarray(abs_residuals, float)))
    n = len(r)
    k = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or k > n:
        return float("inf")
    return float(r[k - 1])


@dataclass
class ConformalModel:
    """Split-conformal score intervals from out-of-fold absolute residuals.

    ``method='absolute'``: one quantile, a constant width. ``method='mondrian'`` (default):
    one quantile per stratum of *predicted* severity class, neighbouring classes merged
    until each stratum holds at least ``min_group`` calibration rows. SvdH scores are
    skewed (most patients near 0, a long tail), so errors grow with the score and a
    constant width is too wide for mild and too narrow for severe disease; Mondrian
    conformal keeps the coverage guarantee within each stratum.
    """

    alpha: float
    method: str
    q: float
    n: int
    strata: list[dict[str, Any]] = field(default_factory=list)
    bins: SeverityBins | None = None
    max_score: float | None = None

    @classmethod
    def fit(
        cls,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        *,
        alpha: float = DEFAULT_ALPHA,
        bins: SeverityBins | None = None,
        method: str = "mondrian",
        min_group: int = 30,
    ) -> ConformalModel:
        if method not in ("absolute", "mondrian"):
            raise BadConfigError(
                f"conformal method must be 'absolute' or 'mondrian', got {method!r}"
            )
        t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
        res = np.abs(t - p)
        q = conformal_quantile(res, alpha)
        model = cls(
            alpha, method, q, len(t), [], bins, bins.max_score if bins is not None else None
        )
        if method == "mondrian" and bins is not None:
            cls_pred = np.asarray(bins.to_class(p)).reshape(-1)
            counts = np.bincount(cls_pred, minlength=bins.n_classes)
            groups: list[list[int]] = []
            cur: list[int] = []
            for k in range(bins.n_classes):
                cur.append(k)
                if counts[cur].sum() >= min_group:
                    groups.append(cur)
                    cur = []
            if cur:
                if groups:
                    groups[-1].extend(cur)
                else:
                    groups.append(cur)
            for g in groups:
                m = np.isin(cls_pred, g)
                model.strata.append(
                    {
                        "classes": [g[0], g[-1]],
                        "scores": [bins.bounds(g[0])[0], bins.bounds(g[-1])[1]],
                        "n": int(m.sum()),
                        "q": conformal_quantile(res[m], alpha),
                    }
                )
        else:
            model.method = "absolute"
        return model

    def half_width(self, y_pred: np.ndarray) -> np.ndarray:
        p = np.asarray(y_pred, float)
        if self.method != "mondrian" or not self.strata or self.bins is None:
            return np.full(p.shape, self.q)
        cls_pred = np.asarray(self.bins.to_class(p)).reshape(p.shape)
        hw = np.full(p.shape, self.q)
        for s in self.strata:
            lo, hi = s["classes"]
            hw[(cls_pred >= lo) & (cls_pred <= hi)] = s["q"]
        return hw

    def interval(self, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds, clipped to the score scale (the truth lies on it)."""
        p = np.asarray(y_pred, float)
        hw = self.half_width(p)
        lo = np.maximum(p - hw, 0.0)
        hi = p + hw
        if self.max_score is not None:
            hi = np.minimum(hi, self.max_score)
        return lo, hi

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None  # JSON has no inf: null = unbounded

        return {
            "alpha": self.alpha,
            "level": 1 - self.alpha,
            "method": self.method,
            "n": self.n,
            "q": num(self.q),
            "strata": [{**s, "q": num(s["q"])} for s in self.strata],
            "bins": self.bins.to_dict() if self.bins is not None else None,
            "max_score": self.max_score,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalModel:
        def num(x: Any) -> float:
            return float("inf") if x is None else float(x)

        bins = SeverityBins.from_dict(d["bins"]) if d.get("bins") else None
        strata = [{**s, "q": num(s.get("q"))} for s in d.get("strata", [])]
        return cls(
            float(d["alpha"]),
            str(d["method"]),
            num(d.get("q")),
            int(d.get("n", 0)),
            strata,
            bins,
            None if d.get("max_score") is None else float(d["max_score"]),
        )


def crossfit_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    folds: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    bins: SeverityBins | None = None,
    method: str = "mondrian",
    min_group: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Honest intervals for out-of-fold rows: fold f's rows get quantiles calibrated on the
    other folds only, so the coverage measured on them is not coverage by construction."""
    t, p, f = np.asarray(y_true, float), np.asarray(y_pred, float), np.asarray(folds)
    lo, hi = np.empty_like(p), np.empty_like(p)
    for fold in np.unique(f):
        m = f == fold
        model = ConformalModel.fit(
            t[~m], p[~m], alpha=alpha, bins=bins, method=method, min_group=min_group
        )
        lo[m], hi[m] = model.interval(p[m])
    return lo, hi


def interval_metrics(
    y_true: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: SeverityBins | None = None
) -> dict[str, Any]:
    """Coverage reached and width of intervals, overall and by true score range."""
    t = np.asarray(y_true, float)
    inside = (t >= lo) & (t <= hi)
    width = np.asarray(hi, float) - np.asarray(lo, float)
    out: dict[str, Any] = {
        "n": len(t),
        "coverage": float(inside.mean()) if len(t) else float("nan"),
        "mean_width": float(np.mean(width)) if len(t) else float("nan"),
        "median_width": float(np.median(width)) if len(t) else float("nan"),
    }
    if bins is not None and len(t):
        cls = np.asarray(bins.to_class(t)).reshape(-1)
        out["by_range"] = [
            {
                "class": k,
                "range": bins.labels[k],
                "n": int((cls == k).sum()),
                "coverage": float(inside[cls == k].mean()),
                "mean_width": float(width[cls == k].mean()),
            }
            for k in range(bins.n_classes)
            if (cls == k).any()
        ]
    return out


# --------------------------------------------------------------------------- whole prediction tables


def patient_bins(hand_bins: SeverityBins) -> SeverityBins:
    """Bins for a patient's hands-and-wrists total given the per-hand bins (edges doubled):
    :func:`svdh.core.hands.patient_bins`."""
    return hands.patient_bins(hand_bins)


def patient_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per-patient sums of ``y_true``, ``y_pred`` (and ``reader2``) over the L and R hands,
    for patients (per visit, where a ``visit`` column exists) with exactly one image of each hand
    (the rule of :mod:`svdh.core.hands`, as for ``svdh predict``'s patient totals).
    """
    if "side" not in df.columns:
        return pd.DataFrame(columns=["patient_id", "y_true", "y_pred"])
    d = df.assign(_side=[hands.side_or_none(s) for s in df["side"].fillna("")])
    d = d[d["_side"].isin(["L", "R"])]
    keys = ["patient_id"] + (["visit"] if "visit" in d.columns else [])
    if "visit" in d.columns:
        d = d.assign(visit=d["visit"].fillna("").astype(str))
    rows = []
    for key, g in d.groupby(keys, sort=True):
        if not hands.is_left_right_pair(list(g["_side"])):
            continue
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        for col in ("y_true", "y_pred", "reader2"):
            if col in g.columns:
                total = hands.sum_hands(g[col].astype(float))
                row[col] = float("nan") if total is None else total
        rows.append(row)
    return pd.DataFrame(
        rows, columns=[*keys, "y_true", "y_pred", *(["reader2"] if "reader2" in d.columns else [])]
    )


def predicted_classes(
    df: pd.DataFrame, task: str, bins: SeverityBins
) -> tuple[np.ndarray, np.ndarray, str]:
    """True and predicted classes of a table, and where the predicted ones came from."""
    c_true = np.asarray(bins.to_class(df["y_true"].to_numpy(float))).reshape(-1)
    pcols = [f"p_{k}" for k in range(bins.n_classes)]
    if task in ("classification", "ordinal"):
        if "class_pred" in df.columns and df["class_pred"].notna().all():
            return c_true, df["class_pred"].to_numpy(int), "model classes"
        if all(c in df.columns for c in pcols):
            return c_true, df[pcols].to_numpy(float).argmax(axis=1), "most probable class"
    return (
        c_true,
        np.asarray(bins.to_class(df["y_pred"].to_numpy(float))).reshape(-1),
        "binned scores",
    )


def evaluate_table(
    df: pd.DataFrame,
    *,
    task: str,
    bins: SeverityBins | None,
    sdc: float = DEFAULT_SDC,
    n_boot: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    intervals: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Every figure of one prediction table (score agreement, classes, intervals)."""
    t = df["y_true"].to_numpy(float)
    p = df["y_pred"].to_numpy(float)
    out = score_metrics(t, p, bins=bins, sdc=sdc, groups=groups, n_boot=n_boot, seed=seed)
    if bins is not None:
        c_true, c_pred, source = predicted_classes(df, task, bins)
        out.update(class_metrics(c_true, c_pred, bins.n_classes))
        out["classes_from"] = source
        out["class_labels"] = list(bins.labels)
    if intervals is not None:
        out["interval"] = interval_metrics(t, intervals[0], intervals[1], bins)
    return out


def _human(
    df: pd.DataFrame,
    task: str,
    bins: SeverityBins | None,
    sdc: float,
    n_boot: int,
    seed: int,
    groups: np.ndarray | None,
) -> dict[str, Any] | None:
    if "reader2" not in df.columns:
        return None
    r2 = pd.to_numeric(df["reader2"], errors="coerce")
    m = r2.notna().to_numpy()
    if m.sum() < 2:
        return None
    sub = df[m]
    g = groups[m] if groups is not None else None
    model = evaluate_table(sub, task=task, bins=bins, sdc=sdc, n_boot=n_boot, seed=seed, groups=g)
    human = evaluate_table(
        sub.assign(y_pred=r2[m].to_numpy(float)).drop(columns=["class_pred"], errors="ignore"),
        task="regression",
        bins=bins,
        sdc=sdc,
        n_boot=n_boot,
        seed=seed,
        groups=g,
    )
    return {"n": int(m.sum()), "model": model, "reader2": human}


def _pseudo_folds(patients: pd.Series, k: int = 5, seed: int = 0) -> np.ndarray:
    """Patient-grouped folds for tables without any (a bare CSV), for cross-fit intervals."""
    codes, uniq = pd.factorize(patients.astype(str))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    return perm[codes] % k


def evaluate_run(
    run: Any,
    *,
    sdc: float = DEFAULT_SDC,
    alpha: float | None = None,
    conformal_method: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a :class:`svdh.runs.Run`: out-of-fold figures at the top level, plus
    ``patient`` (per-patient sums of both hands), ``human`` (reader2 vs truth beside the
    model), ``interval`` (conformal coverage), ``test`` (held-out split) where present."""
    bins = run.bins
    oof = run.oof
    conf = dict(run.conformal or {})
    alpha = float(alpha if alpha is not None else conf.get("alpha", DEFAULT_ALPHA))
    method = conformal_method or conf.get("method", "mondrian")
    if bins is None:
        method = "absolute"  # no score ranges (bone age): one width
    # Cluster the bootstrap on patients when a patient contributes several images.
    groups = oof["patient_id"].to_numpy() if oof["patient_id"].duplicated().any() else None
    folds = oof["fold"].to_numpy()
    if len(np.unique(folds)) < 2:
        folds = _pseudo_folds(oof["patient_id"], seed=seed)
    lo, hi = crossfit_intervals(
        oof["y_true"], oof["y_pred"], folds, alpha=alpha, bins=bins, method=method
    )
    out: dict[str, Any] = {
        "run": str(run.path),
        "task": run.task,
        "score_scope": run.score_scope,
        "level": "image",
    }
    out.update(
        evaluate_table(
            oof,
            task=run.task,
            bins=bins,
            sdc=sdc,
            n_boot=n_boot,
            seed=seed,
            groups=groups,
            intervals=(lo, hi),
        )
    )
    out["n_patients"] = int(oof["patient_id"].nunique())
    out["interval"].update(_interval_info(alpha, method, "cross-fit over folds"))
    human = _human(oof, run.task, bins, sdc, n_boot, seed, groups)
    if human:
        out["human"] = human
    if run.score_scope == "hand" and bins is not None:
        patient = _patient_level(oof, bins, sdc, n_boot, seed)
        if patient is not None:
            out["patient"] = patient
    if run.test is not None and len(run.test):
        out["test"] = _test_level(run, alpha, method, sdc, n_boot, seed)
    if run.task == "boneage":  # months: MAE, RMSE, bias by age band and by sex
        from svdh.evaluate.boneage import figures_of_table

        out["boneage"] = figures_of_table(oof)
        if "test" in out:
            out["test"]["boneage"] = figures_of_table(run.test)
    if run.localisation:
        out["localisation"] = run.localisation
    out["warnings"] = _run_warnings(run)
    return out


def _run_warnings(run: Any) -> list[str]:
    warn: list[str] = []
    if run.prediction_kind != "oof":
        warn.append(
            "predictions are in-fold (the model saw these patients): figures are optimistic"
        )
    if run.is_phantom:
        warn.append("phantom data: these results are not a clinical validation")
    return warn


def _interval_info(alpha: float, method: str, calibration: str) -> dict[str, Any]:
    return {"alpha": alpha, "level": 1 - alpha, "method": method, "calibration": calibration}


def _patient_level(
    oof: pd.DataFrame, bins: SeverityBins, sdc: float, n_boot: int, seed: int
) -> dict[str, Any] | None:
    """Figures on the per-patient sums of both hands (None with fewer than two patients)."""
    pt = patient_table(oof)
    if len(pt) < 2:
        return None
    pb = patient_bins(bins)
    out = {
        "level": "patient",
        **evaluate_table(pt, task="regression", bins=pb, sdc=sdc, n_boot=n_boot, seed=seed),
    }
    ph = _human(pt, "regression", pb, sdc, n_boot, seed, None)
    if ph:
        out["human"] = ph
    return out


def _test_level(
    run: Any, alpha: float, method: str, sdc: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Figures on the held-out split, with intervals calibrated on all out-of-fold rows."""
    oof, test, bins = run.oof, run.test, run.bins
    final = ConformalModel.fit(oof["y_true"], oof["y_pred"], alpha=alpha, bins=bins, method=method)
    tg = test["patient_id"].to_numpy() if test["patient_id"].duplicated().any() else None
    out = {
        "level": "image",
        **evaluate_table(
            test,
            task=run.task,
            bins=bins,
            sdc=sdc,
            n_boot=n_boot,
            seed=seed,
            groups=tg,
            intervals=final.interval(test["y_pred"]),
        ),
    }
    out["interval"].update(_interval_info(alpha, method, "all out-of-fold rows"))
    out["n_patients"] = int(test["patient_id"].nunique())
    return out


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The figures of the paper's comparison table from an :func:`evaluate_run` result
    (or a training run's ``metrics.json``, whose out-of-fold figures sit under ``overall``)."""
    if "pcc" not in m and isinstance(m.get("overall"), dict):
        m = m["overall"]
    return {k: m.get(k) for k in ("n", "pcc", "rmse", "mae", "accuracy", "qwk", "ccc", "class_mae")}
