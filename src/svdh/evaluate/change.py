"""Change between visits: change scores with calibrated intervals, the smallest detectable
change (SDC), progression calls, and the figures trials report for pairs of films.

Input is a per-image prediction table (a run's out-of-fold rows, or ``svdh predict``'s rows)
with ``patient_id``, ``side`` (L/R), ``visit``, ``y_pred`` and, where known, ``y_true``,
``erosion_true``/``erosion_pred``, ``jsn_true``/``jsn_pred`` and ``fold``. Several films of one
patient, visit and side are repeat films (no true change between them); the first one in the
table (or the lowest ``film``) is the visit's film for change scores.

* :func:`visit_scores`: per patient, visit and film, the hand and patient (L + R, 0-280) scores.
* :func:`change_pairs`: every pair of consecutive visits of a patient, true and predicted change.
* :func:`repeat_changes`: changes measured twice (film 1 -> film 1 and film 2 -> film 2 of the
  same two visits) and repeat films of one visit (true change 0).
* SDC as in the literature (Bruynesteyn et al. 2004; Lassere et al., OMERACT):
  :func:`sdc_of_differences` = 1.96 SD(d) / sqrt(2) for differences between two measurements of
  the same change; :func:`sdc_from_errors` = 1.96 SD(predicted - true change) where the change
  is known (the same quantity: SD(d) = sqrt(2) SD(error)).
* :class:`ChangeCalibration`: split-conformal intervals for change, from out-of-fold change
  residuals (not the sum of two single-visit intervals), and the probability that the true
  change exceeds the SDC, from the same residuals.
* :func:`change_metrics`: PCC, ICC, RMSE of change, the model's SDC against the readers',
  progression AUC / sensitivity / specificity and the share of non-progressors, each with a
  bootstrap CI over patients (:func:`svdh.evaluate.metrics.bootstrap_ci`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from svdh.core.errors import BadConfigError
from svdh.core.visits import order_visits, years_between
from svdh.evaluate.metrics import (
    DEFAULT_ALPHA,
    DEFAULT_SDC,
    bland_altman,
    bootstrap_ci,
    conformal_quantile,
    icc_2_1,
    pearson,
)

#: Readers' SDC anchors (SvdH units); the 0-448 figures also scaled to the 0-280 hands scale.
READERS_SDC: dict[str, Any] = {
    "individual_0_280": [4.0, 6.0],
    "individual_source": "1.3-2.2% of the maximum score (Bruynesteyn et al., J Clin Epidemiol 2004)",
    "same_readers_0_448": 11.0,
    "any_two_readers_0_448": 15.5,
    "same_readers_0_280": round(11.0 * 280 / 448, 1),
    "any_two_readers_0_280": round(15.5 * 280 / 448, 1),
    "group_source": "Lassere et al., OMERACT: 52 early-RA patients, one-year pairs",
    "intra_reader_icc_change": 0.84,
}
MEASURES = ("y", "erosion", "jsn")
SCOPES = ("L", "R", "P")  # left hand, right hand, patient (L + R)


# --------------------------------------------------------------------------- tables


def _measure_columns(df: pd.DataFrame) -> dict[str, tuple[str | None, str]]:
    """measure -> (true column or None, predicted column), for the measures the table has."""
    out: dict[str, tuple[str | None, str]] = {}
    for m in MEASURES:
        pred = "y_pred" if m == "y" else f"{m}_pred"
        true = "y_true" if m == "y" else f"{m}_true"
        if pred in df.columns and pd.to_numeric(df[pred], errors="coerce").notna().any():
            has_true = true in df.columns and pd.to_numeric(df[true], errors="coerce").notna().any()
            out[m] = (true if has_true else None, pred)
    return out


def visit_scores(df: pd.DataFrame) -> pd.DataFrame:
    """One row per patient, visit and film: ``{measure}_{L,R,P}_{true,pred}`` (P = L + R).

    Rows without a visit, or of a side other than L/R, are left out; a patient score needs
    both hands of the same visit and film.
    """
    need = {"patient_id", "side", "visit", "y_pred"}
    if not need <= set(df.columns):
        return pd.DataFrame(columns=["patient_id", "visit", "film"])
    d = df.copy()
    d["patient_id"] = d["patient_id"].astype(str)
    d["visit"] = d["visit"].fillna("").astype(str)
    d["_side"] = d["side"].fillna("").astype(str).str.upper().str[:1]
    d = d[(d["visit"] != "") & d["_side"].isin(["L", "R"])]
    if "film" in d.columns:
        d = d.sort_values("film", kind="stable")
    d["film"] = d.groupby(["patient_id", "visit", "_side"], sort=False).cumcount() + 1
    keys = ["patient_id", "visit", "film"]
    cols = _measure_columns(d)
    out = d.groupby(keys, sort=False).size().rename("_n").reset_index()[keys]
    if "fold" in d.columns:
        out = out.merge(d.groupby(keys, sort=False)["fold"].first().reset_index(), on=keys)
    wide = d.set_index([*keys, "_side"])
    for m, (tc, pc) in cols.items():
        for kind, c in (("true", tc), ("pred", pc)):
            if c is None:
                v = pd.DataFrame(
                    np.nan, index=wide.index.droplevel("_side").unique(), columns=["L", "R"]
                )
            else:
                v = pd.to_numeric(wide[c], errors="coerce").unstack("_side")
                v = v.reindex(columns=["L", "R"])
            v = v.rename(columns={"L": f"{m}_L_{kind}", "R": f"{m}_R_{kind}"})
            v[f"{m}_P_{kind}"] = v[f"{m}_L_{kind}"] + v[f"{m}_R_{kind}"]
            out = out.merge(v.reset_index(), on=keys, how="left")
    return out


def _visit_rank(vs: pd.DataFrame) -> np.ndarray:
    """Each row's visit's position in its patient's time order."""
    rank: dict[tuple[str, str], int] = {}
    for pid, g in vs.groupby("patient_id", sort=False):
        for k, v in enumerate(order_visits(g["visit"], where=f"patient {pid}")):
            rank[(str(pid), v)] = k
    return np.array([rank[(p, v)] for p, v in zip(vs["patient_id"], vs["visit"], strict=True)])


def change_pairs(df: pd.DataFrame, *, film: int = 1) -> pd.DataFrame:
    """Consecutive visit pairs of every patient with two or more visits (film ``film`` of each).

    Columns: ``patient_id``, ``visit_from``, ``visit_to``, ``years`` (NaN unless the visits are
    dates), ``fold`` (where known), and ``d{measure}_{L,R,P}_{true,pred}`` plus the baseline's
    ``base_P_true``/``base_P_pred``.
    """
    vs = visit_scores(df)
    if vs.empty:
        return pd.DataFrame(columns=["patient_id", "visit_from", "visit_to"])
    vs = vs[vs["film"] == film].copy()
    vs["_rank"] = _visit_rank(vs)
    vs = vs.sort_values(["patient_id", "_rank"], kind="stable").reset_index(drop=True)
    score_cols = [c for c in vs.columns if c.endswith(("_true", "_pred"))]
    nxt = vs.groupby("patient_id", sort=False).shift(-1)
    ok = nxt["visit"].notna().to_numpy()
    a, b = vs[ok].reset_index(drop=True), nxt[ok].reset_index(drop=True)
    out = pd.DataFrame(
        {
            "patient_id": a["patient_id"],
            "visit_from": a["visit"],
            "visit_to": b["visit"],
            "years": [years_between(x, y) for x, y in zip(a["visit"], b["visit"], strict=True)],
        }
    )
    if "fold" in vs.columns:
        out["fold"] = a["fold"].astype(int)
    for c in score_cols:
        out["d" + c] = b[c].astype(float) - a[c].astype(float)
    out["base_P_true"] = a["y_P_true"].astype(float) if "y_P_true" in a else np.nan
    out["base_P_pred"] = a["y_P_pred"].astype(float)
    return out


def repeat_changes(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Repeat measurements: ``changes`` (the same visit pair through films 1 and 2:
    ``dy_P_pred_1``, ``dy_P_pred_2``) and ``films`` (two films of one visit: ``y_P_pred_1``,
    ``y_P_pred_2``), patient scale."""
    vs = visit_scores(df)
    empty = {"changes": pd.DataFrame(), "films": pd.DataFrame()}
    if vs.empty or (vs["film"] < 2).all():
        return empty
    one, two = vs[vs["film"] == 1], vs[vs["film"] == 2]
    films = one.merge(two, on=["patient_id", "visit"], suffixes=("_1", "_2"))
    films = films[["patient_id", "visit", "y_P_pred_1", "y_P_pred_2"]].dropna()
    c1, c2 = change_pairs(df, film=1), change_pairs(df, film=2)
    changes = pd.DataFrame()
    if len(c1) and len(c2):
        changes = c1.merge(c2, on=["patient_id", "visit_from", "visit_to"], suffixes=("_1", "_2"))
        changes = changes[
            ["patient_id", "visit_from", "visit_to", "dy_P_pred_1", "dy_P_pred_2"]
        ].dropna()
    return {"changes": changes.reset_index(drop=True), "films": films.reset_index(drop=True)}


# --------------------------------------------------------------------------- SDC


def sdc_of_differences(d: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """SDC = 1.96 SD(d) / sqrt(2), ``d`` = differences between two measurements of the same
    change (two readers, or two film pairs of the same visits); SD with n - 1."""
    d = np.asarray(d, float)
    if d.shape[axis] < 2:
        return float("nan")
    return 1.96 * np.std(d, axis=axis, ddof=1) / math.sqrt(2.0)


def sdc_from_errors(pred_change: np.ndarray, true_change: np.ndarray, axis: int = -1) -> Any:
    """SDC = 1.96 SD(predicted - true change): one change measurement against a known change
    (repeat films of one visit: true change 0)."""
    e = np.asarray(pred_change, float) - np.asarray(true_change, float)
    if e.shape[axis] < 2:
        return float("nan")
    return 1.96 * np.std(e, axis=axis, ddof=1)


# --------------------------------------------------------------------------- calibration


@dataclass
class ChangeCalibration:
    """Split-conformal change intervals and progression probabilities from out-of-fold pairs.

    ``residuals`` are ``true - predicted`` patient changes of calibration pairs (sorted);
    ``q`` is their split-conformal absolute quantile at ``1 - alpha``; ``sdc`` the model's own
    SDC (:func:`sdc_from_errors`); ``threshold`` the change that counts as progression.
    """

    alpha: float
    q: float
    n: int
    residuals: np.ndarray
    sdc: float
    threshold: float = DEFAULT_SDC
    logit: tuple[float, float] | None = None  # P(progression) = sigmoid(a + b x predicted change)

    @classmethod
    def fit(
        cls,
        true_change: np.ndarray,
        pred_change: np.ndarray,
        *,
        alpha: float = DEFAULT_ALPHA,
        threshold: float = DEFAULT_SDC,
    ) -> ChangeCalibration:
        t, p = np.asarray(true_change, float), np.asarray(pred_change, float)
        ok = np.isfinite(t) & np.isfinite(p)
        if ok.sum() < 2:
            raise BadConfigError(
                f"change calibration needs at least 2 pairs with known change, got {int(ok.sum())}"
            )
        r = np.sort(t[ok] - p[ok])
        q = conformal_quantile(np.abs(r), alpha)
        sdc = float(sdc_from_errors(p[ok], t[ok]))
        return cls(alpha, q, int(ok.sum()), r, sdc, threshold, _logit(p[ok], t[ok] > threshold))

    def interval(self, pred_change: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(pred_change, float)
        return p - self.q, p + self.q

    def p_progression(self, pred_change: np.ndarray) -> np.ndarray:
        """P(true change > threshold | predicted change): a logistic regression of progression
        on the predicted change, fitted on the calibration pairs; where those hold only one
        class, the share of calibration residuals above ``threshold - predicted`` (add-one
        smoothed, so never exactly 0 or 1)."""
        p = np.asarray(pred_change, float)
        if self.logit is not None:
            a, b = self.logit
            return 1.0 / (1.0 + np.exp(-(a + b * p)))
        above = len(self.residuals) - np.searchsorted(
            self.residuals, self.threshold - p, side="right"
        )
        return (above + 1.0) / (len(self.residuals) + 2.0)

    def to_dict(self, max_residuals: int = 201) -> dict[str, Any]:
        r = self.residuals
        if len(r) > max_residuals:  # quantiles keep the bundle small
            r = np.quantile(r, np.linspace(0, 1, max_residuals))
        return {
            "alpha": self.alpha,
            "level": 1 - self.alpha,
            "q": self.q if math.isfinite(self.q) else None,
            "n": self.n,
            "sdc": self.sdc,
            "threshold": self.threshold,
            "residuals": [round(float(x), 4) for x in r],
            "logit": list(self.logit) if self.logit is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChangeCalibration:
        q = d.get("q")
        return cls(
            float(d["alpha"]),
            float("inf") if q is None else float(q),
            int(d["n"]),
            np.sort(np.asarray(d.get("residuals", []), float)),
            float(d.get("sdc", math.nan)),
            float(d.get("threshold", DEFAULT_SDC)),
            tuple(float(x) for x in d["logit"]) if d.get("logit") else None,  # type: ignore[arg-type]
        )


def _logit(pred: np.ndarray, progressed: np.ndarray) -> tuple[float, float] | None:
    """Intercept and slope of a logistic regression (scikit-learn) of progression on the
    predicted change; None where the pairs hold one class only."""
    y = np.asarray(progressed, bool)
    if y.all() or not y.any():
        return None
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=100.0).fit(np.asarray(pred, float).reshape(-1, 1), y)
    return float(lr.intercept_[0]), float(lr.coef_[0, 0])


def crossfit_change(
    true_change: np.ndarray,
    pred_change: np.ndarray,
    folds: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    threshold: float = DEFAULT_SDC,
) -> dict[str, np.ndarray]:
    """Honest intervals and progression probabilities for out-of-fold pairs: the pairs of fold
    f are calibrated on the other folds' pairs only."""
    t, p, f = (np.asarray(a) for a in (true_change, pred_change, folds))
    t, p = t.astype(float), p.astype(float)
    lo, hi, prob = np.full_like(p, np.nan), np.full_like(p, np.nan), np.full_like(p, np.nan)
    for fold in np.unique(f):
        m = f == fold
        if (~m).sum() < 2:
            continue
        cal = ChangeCalibration.fit(t[~m], p[~m], alpha=alpha, threshold=threshold)
        lo[m], hi[m] = cal.interval(p[m])
        prob[m] = cal.p_progression(p[m])
    return {"lo": lo, "hi": hi, "p_progression": prob}


# --------------------------------------------------------------------------- figures


def _stat(name: str, threshold: float):
    """Statistics ``f(true, pred, axis=-1)`` for :func:`bootstrap_ci` (1-D resamples)."""

    def pcc(t: np.ndarray, p: np.ndarray, axis: int = -1) -> float:
        return pearson(t, p)

    def icc(t: np.ndarray, p: np.ndarray, axis: int = -1) -> float:
        return icc_2_1(np.column_stack([t, p]))

    def rmse(t: np.ndarray, p: np.ndarray, axis: int = -1) -> float:
        return float(np.sqrt(np.mean((p - t) ** 2)))

    def sdc(t: np.ndarray, p: np.ndarray, axis: int = -1) -> float:
        return float(sdc_from_errors(p, t))

    def auc(t: np.ndarray, s: np.ndarray, axis: int = -1) -> float:
        y = t > threshold
        return float(skm.roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")

    def sens(t: np.ndarray, p: np.ndarray, axis: int = -1) -> float:
        y = t > threshold
        return float(np.mean(p[y] > threshold)) if y.any() else float("nan")

    def spec(t: np.ndarray, p: np.ndarray, axis: int = -1) -> float:
        y = t > threshold
        return float(np.mean(p[~y] <= threshold)) if (~y).any() else float("nan")

    def share(t: np.ndarray, axis: int = -1) -> float:
        return float(np.mean(t <= threshold))

    return {
        "pcc": pcc,
        "icc": icc,
        "rmse": rmse,
        "sdc": sdc,
        "auc": auc,
        "sensitivity": sens,
        "specificity": spec,
        "share": share,
    }[name]


def _with_ci(name: str, arrays: tuple[np.ndarray, ...], groups: np.ndarray, **kw: Any) -> dict:
    f = _stat(name, kw.pop("threshold"))
    value = f(*arrays)
    lo, hi = bootstrap_ci(f, arrays, groups=groups, **kw)
    return {"value": float(value), "ci": [lo, hi]}


def _folds_of(pairs: pd.DataFrame, seed: int) -> np.ndarray:
    from svdh.evaluate.metrics import _pseudo_folds

    if "fold" in pairs.columns and pairs["fold"].nunique() >= 2:
        return pairs["fold"].to_numpy()
    return _pseudo_folds(pairs["patient_id"], seed=seed)


def agreement_figures(
    t: np.ndarray, p: np.ndarray, groups: np.ndarray, *, threshold: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """PCC, ICC, RMSE (with CIs), Bland-Altman and the SDC of predicted against true change."""
    kw = {"n_boot": n_boot, "seed": seed, "threshold": threshold}
    return {
        "n": int(len(t)),
        "mean_true": float(np.mean(t)),
        "mean_pred": float(np.mean(p)),
        "pcc": _with_ci("pcc", (t, p), groups, **kw),
        "icc": _with_ci("icc", (t, p), groups, **kw),
        "rmse": _with_ci("rmse", (t, p), groups, **kw),
        "bland_altman": bland_altman(t, p),
        "sdc": _with_ci("sdc", (t, p), groups, **kw),
    }


def progression_figures(
    t: np.ndarray,
    p: np.ndarray,
    prob: np.ndarray,
    groups: np.ndarray,
    *,
    threshold: float,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Progression (true change > threshold): AUC of the predicted change (the probability is
    monotone in it within one calibration; cross-fitted probabilities of several folds are
    not, so they are not ranked), sensitivity and specificity of the call (predicted change >
    threshold), shares of non-progressors, and the mean probability against the observed rate."""
    kw = {"n_boot": n_boot, "seed": seed, "threshold": threshold}
    ok = np.isfinite(prob)
    return {
        "threshold": threshold,
        "n_progressors": int((t > threshold).sum()),
        "auc": _with_ci("auc", (t, p), groups, **kw),
        "mean_p_progression": float(np.mean(prob[ok])) if ok.any() else float("nan"),
        "sensitivity": _with_ci("sensitivity", (t, p), groups, **kw),
        "specificity": _with_ci("specificity", (t, p), groups, **kw),
        "non_progressors_true": _with_ci("share", (t,), groups, **kw),
        "non_progressors_pred": _with_ci("share", (p,), groups, **kw),
    }


def repeat_figures(df: pd.DataFrame, *, n_boot: int, seed: int) -> dict[str, Any] | None:
    """The model's SDC from repeat films: changes measured twice, and films of one visit."""
    rep = repeat_changes(df)
    out: dict[str, Any] = {}
    ch, films = rep["changes"], rep["films"]
    if len(ch) >= 2:
        d = ch["dy_P_pred_2"].to_numpy() - ch["dy_P_pred_1"].to_numpy()
        g = ch["patient_id"].to_numpy()
        lo, hi = bootstrap_ci(sdc_of_differences, (d,), groups=g, n_boot=n_boot, seed=seed)
        out["changes_measured_twice"] = {
            "n": int(len(d)),
            "sdc": {"value": float(sdc_of_differences(d)), "ci": [lo, hi]},
            "bland_altman": bland_altman(ch["dy_P_pred_1"], ch["dy_P_pred_2"]),
            "formula": "1.96 SD(change_film2 - change_film1) / sqrt(2)",
        }
    if len(films) >= 2:
        d = films["y_P_pred_2"].to_numpy() - films["y_P_pred_1"].to_numpy()
        g = films["patient_id"].to_numpy()
        lo, hi = bootstrap_ci(
            lambda x, axis=-1: sdc_from_errors(x, np.zeros_like(x)),
            (d,),
            groups=g,
            n_boot=n_boot,
            seed=seed,
        )
        out["films_of_one_visit"] = {
            "n": int(len(d)),
            "sdc": {"value": float(sdc_from_errors(d, np.zeros_like(d))), "ci": [lo, hi]},
            "bias": float(np.mean(d)),
            "formula": "1.96 SD(film2 - film1) (a change measurement whose true change is 0)",
        }
    return out or None


def change_metrics(
    df: pd.DataFrame,
    *,
    threshold: float = DEFAULT_SDC,
    alpha: float = DEFAULT_ALPHA,
    n_boot: int = 1000,
    seed: int = 0,
    calibration: ChangeCalibration | None = None,
) -> dict[str, Any] | None:
    """Every pair figure of a per-image table with visits and true scores (None without pairs).

    Intervals and progression probabilities come from ``calibration`` (fitted on other, e.g.
    out-of-fold, pairs: for a held-out test table) or else are cross-fitted over the table's
    folds (its own out-of-fold pairs).
    """
    pairs = change_pairs(df)
    if len(pairs) < 2 or "dy_P_true" not in pairs.columns:
        return None
    pairs = pairs[np.isfinite(pairs["dy_P_true"]) & np.isfinite(pairs["dy_P_pred"])]
    if len(pairs) < 2:
        return None
    t, p = pairs["dy_P_true"].to_numpy(), pairs["dy_P_pred"].to_numpy()
    g = pairs["patient_id"].to_numpy()
    if calibration is not None:
        lo, hi = calibration.interval(p)
        cf = {"lo": lo, "hi": hi, "p_progression": calibration.p_progression(p)}
        alpha, threshold = calibration.alpha, calibration.threshold
        how = f"split-conformal on {calibration.n} other pairs' change residuals"
    else:
        cf = crossfit_change(t, p, _folds_of(pairs, seed), alpha=alpha, threshold=threshold)
        how = "split-conformal on out-of-fold change residuals, cross-fit over folds"
    ok = np.isfinite(cf["lo"])
    inside = (t[ok] >= cf["lo"][ok]) & (t[ok] <= cf["hi"][ok])
    out: dict[str, Any] = {
        "level": "patient change (0-280), consecutive visits",
        "n_pairs": int(len(pairs)),
        "n_patients": int(pairs["patient_id"].nunique()),
        "median_years": float(np.nanmedian(pairs["years"]))
        if pairs["years"].notna().any()
        else None,
        "patient": agreement_figures(t, p, g, threshold=threshold, n_boot=n_boot, seed=seed),
        "interval": {
            "level": 1 - alpha,
            "coverage": float(inside.mean()) if ok.any() else float("nan"),
            "mean_width": float(np.mean(cf["hi"][ok] - cf["lo"][ok])) if ok.any() else math.nan,
            "calibration": how,
        },
        "progression": progression_figures(
            t, p, cf["p_progression"], g, threshold=threshold, n_boot=n_boot, seed=seed
        ),
        "readers_sdc": READERS_SDC,
    }
    out["model_sdc"] = {"known_change": out["patient"]["sdc"]}
    rep = repeat_figures(df, n_boot=n_boot, seed=seed)
    if rep:
        out["model_sdc"].update(rep)
    out["parts"] = _part_figures(pairs, n_boot=n_boot, seed=seed, threshold=threshold)
    return out


def _part_figures(pairs: pd.DataFrame, **kw: Any) -> dict[str, Any]:
    """PCC and RMSE of change per hand, and of erosion and JSN change where present."""
    out: dict[str, Any] = {}
    for m in MEASURES:
        for s in SCOPES:
            if m == "y" and s == "P":
                continue
            tc, pc = f"d{m}_{s}_true", f"d{m}_{s}_pred"
            if tc not in pairs.columns or pc not in pairs.columns:
                continue
            ok = np.isfinite(pairs[tc]) & np.isfinite(pairs[pc])
            if ok.sum() < 2:
                continue
            t, p = pairs.loc[ok, tc].to_numpy(), pairs.loc[ok, pc].to_numpy()
            g = pairs.loc[ok, "patient_id"].to_numpy()
            name = {"y": "total", "erosion": "erosion", "jsn": "jsn"}[m]
            scope = {"L": "left hand", "R": "right hand", "P": "patient"}[s]
            kws = {"n_boot": kw["n_boot"], "seed": kw["seed"], "threshold": kw["threshold"]}
            out[f"{name}, {scope}"] = {
                "n": int(ok.sum()),
                "pcc": _with_ci("pcc", (t, p), g, **kws),
                "rmse": _with_ci("rmse", (t, p), g, **kws),
            }
    return out


# --------------------------------------------------------------------------- per-patient table


CHANGE_COLUMNS = [
    "patient_id",
    "visit_from",
    "visit_to",
    "years",
    "change_L",
    "change_R",
    "change",
    "change_lo",
    "change_hi",
    "p_progression",
    "progression",
    "erosion_change",
    "jsn_change",
    "true_change",
]


def change_table(df: pd.DataFrame, calibration: ChangeCalibration | None) -> pd.DataFrame:
    """The per-patient change table of ``svdh predict``: one row per consecutive visit pair.

    ``change`` is the predicted patient change (0-280 scale), ``change_lo``/``change_hi`` its
    calibrated interval and ``p_progression`` the probability that the true change exceeds
    the threshold (where the model carries a change calibration); ``progression`` is the call
    ``change > threshold``.
    """
    pairs = change_pairs(df)
    if pairs.empty:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    out = pd.DataFrame(
        {
            "patient_id": pairs["patient_id"],
            "visit_from": pairs["visit_from"],
            "visit_to": pairs["visit_to"],
            "years": pairs["years"].round(3),
            "change_L": pairs["dy_L_pred"].round(2),
            "change_R": pairs["dy_R_pred"].round(2),
            "change": pairs["dy_P_pred"].round(2),
        }
    )
    p = pairs["dy_P_pred"].to_numpy(float)
    thr = calibration.threshold if calibration is not None else DEFAULT_SDC
    if calibration is not None:
        lo, hi = calibration.interval(p)
        out["change_lo"], out["change_hi"] = np.round(lo, 2), np.round(hi, 2)
        out["p_progression"] = np.round(calibration.p_progression(p), 3)
    else:
        out["change_lo"] = out["change_hi"] = out["p_progression"] = np.nan
    out["progression"] = np.where(np.isfinite(p), p > thr, False)
    for m in ("erosion", "jsn"):
        c = f"d{m}_P_pred"
        out[f"{m}_change"] = pairs[c].round(2) if c in pairs.columns else np.nan
    out["true_change"] = pairs["dy_P_true"] if "dy_P_true" in pairs.columns else np.nan
    return out[CHANGE_COLUMNS]


# --------------------------------------------------------------------------- runs


def evaluate_change(
    run: Any,
    *,
    threshold: float = DEFAULT_SDC,
    alpha: float = DEFAULT_ALPHA,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The pair figures of a :class:`svdh.runs.Run` with visits (None without pairs): out-of-fold
    (intervals cross-fitted over folds), the held-out test split (calibrated on every
    out-of-fold pair), and the calibration a bundle stores."""
    if getattr(run, "score_scope", "hand") != "hand" or "visit" not in run.oof.columns:
        return None
    oof = run.oof
    out = change_metrics(oof, threshold=threshold, alpha=alpha, n_boot=n_boot, seed=seed)
    if out is None:
        return None
    pairs = change_pairs(oof)
    ok = np.isfinite(pairs["dy_P_true"]) & np.isfinite(pairs["dy_P_pred"])
    cal = ChangeCalibration.fit(
        pairs.loc[ok, "dy_P_true"], pairs.loc[ok, "dy_P_pred"], alpha=alpha, threshold=threshold
    )
    out["calibration"] = cal.to_dict()
    test = getattr(run, "test", None)
    if test is not None and len(test) and "visit" in test.columns:
        t = change_metrics(test, n_boot=n_boot, seed=seed, calibration=cal)
        if t is not None:
            out["test"] = t
    return out


def run_calibration(
    run: Any, *, threshold: float = DEFAULT_SDC, alpha: float = DEFAULT_ALPHA
) -> dict[str, Any] | None:
    """What a model bundle stores about change (None for a run without visit pairs): the
    change calibration from the run's out-of-fold pairs (interval quantile, progression model,
    the model's SDC from known change) and, where the run has repeat films, the SDC from them."""
    oof = getattr(run, "oof", None)
    if oof is None or "visit" not in oof.columns or getattr(run, "score_scope", "hand") != "hand":
        return None
    pairs = change_pairs(oof)
    if "dy_P_true" not in pairs.columns:
        return None
    ok = np.isfinite(pairs["dy_P_true"]) & np.isfinite(pairs["dy_P_pred"])
    if ok.sum() < 10:
        return None
    cal = ChangeCalibration.fit(
        pairs.loc[ok, "dy_P_true"], pairs.loc[ok, "dy_P_pred"], alpha=alpha, threshold=threshold
    )
    out = cal.to_dict()
    out["calibration"] = f"{int(ok.sum())} out-of-fold change pairs of the run (oof.csv)"
    rep = repeat_figures(oof, n_boot=0, seed=0) or {}
    if "changes_measured_twice" in rep:
        out["sdc_repeat"] = rep["changes_measured_twice"]["sdc"]["value"]
    return out


def add_change(
    metrics: dict[str, Any],
    run: Any,
    *,
    sdc: float = DEFAULT_SDC,
    alpha: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Add ``change`` (:func:`evaluate_change`) to an :func:`svdh.evaluate.metrics.evaluate_run`
    result where the run has visit pairs; returns ``metrics``."""
    a = alpha if alpha is not None else (metrics.get("interval") or {}).get("alpha", DEFAULT_ALPHA)
    change = evaluate_change(run, threshold=sdc, alpha=float(a), n_boot=n_boot, seed=seed)
    if change:
        metrics["change"] = change
    return metrics
