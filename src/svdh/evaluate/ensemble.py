"""Ensembles of runs: mean, weighted and stacked combinations of out-of-fold predictions.

Members are run directories (``svdh.runs.read_run``) trained on the same images with the
same patient-grouped folds. Scores combine through the members' ``y_pred`` (a regression and
an ordinal member can share one score ensemble); when every member is a class task with the
same bins, class probabilities combine too.

Stacking fits a meta-learner on the level-0 out-of-fold predictions and is evaluated by
nested cross-validation over the *same* folds: the rows of fold f are predicted by a
meta-learner fitted on the other folds only, so the ensemble's ``oof.csv`` is as honest as
its members'. A final meta-learner fitted on every row is what gets deployed
(``meta_learner.json``, plain coefficients, applied with numpy by :func:`apply_meta`).

A leaky setup is refused with :class:`BadRunError`: in-fold predictions (a run marked
``prediction_kind: in_fold`` in its config or oof.csv), members whose fold assignments
disagree, or a patient whose images sit in more than one fold.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from scipy import optimize, special

from svdh.core.errors import BadConfigError, BadRunError
from svdh.core.preprocess import PreprocessConfig
from svdh.core.scoring import SeverityBins
from svdh.core.tasks import Task
from svdh.runs.layout import RunDir
from svdh.runs.tables import CLASS_TASKS, Run, read_run, write_json, write_run

T = TypeVar("T")

METHODS = ("stacking", "mean", "weighted", "nnls")
CLASS_META = ("multinomial", "ordinal")
CARRY_COLUMNS = ("side", "visit", "patient_svdh", "reader2", "erosion_true", "jsn_true")
#: meta-learner folds over the validation rows of single-fold members (``Members.meta_folds``)
META_FOLDS = 5
_EPS = 1e-3  # floor of member probabilities before the log: below it differences carry no signal


# --------------------------------------------------------------------------- members


@dataclass
class Members:
    """The members' predictions aligned row by row on ``image_id``."""

    runs: list[Run]
    names: list[str]
    base: pd.DataFrame  # identity columns and truth, in the first member's row order
    scores: np.ndarray  # n x m, members' y_pred
    probs: np.ndarray | None  # n x m x K, when every member is a class task
    bins: SeverityBins

    @property
    def folds(self) -> np.ndarray:
        return self.base["fold"].to_numpy(int)

    @property
    def meta_folds(self) -> np.ndarray:
        """Folds of the meta-learner's nested cross-validation: the members' folds; when the
        members were trained with one fold (``--folds 1``: their out-of-fold rows are one
        validation split), those rows split into up to :data:`META_FOLDS` patient-grouped
        folds. Every row is out of sample for every member either way, so the meta-learner
        is still fitted and scored on rows that no member was trained on."""
        folds = self.folds
        if len(np.unique(folds)) > 1:
            return folds
        patients = self.base["patient_id"].astype(str).to_numpy()
        uniq = np.unique(patients)
        k = min(META_FOLDS, len(uniq))
        if k < 2:
            raise BadRunError(
                "stacking needs out-of-fold rows of at least 2 patients; train the members "
                "with --folds 2 or more, or a larger --val-fraction"
            )
        order = np.random.default_rng(0).permutation(len(uniq))
        group = dict(zip(uniq[order], np.arange(len(uniq)) % k, strict=True))
        return np.array([group[p] for p in patients], dtype=int)

    @property
    def y_true(self) -> np.ndarray:
        return self.base["y_true"].to_numpy(float)


def _names(runs: list[Run]) -> list[str]:
    out: list[str] = []
    for r in runs:
        name, i = r.name, 2
        while name in out:
            name, i = f"{r.name}_{i}", i + 1
        out.append(name)
    return out


def check_members(runs: list[Run]) -> None:
    """Refuse members an honest ensemble cannot be built from (see module docstring)."""
    if len(runs) < 2:
        raise BadConfigError("an ensemble needs at least two member runs")
    for r in runs:
        if r.prediction_kind != "oof":
            raise BadRunError(
                f"{r.path}: predictions are in-fold (prediction_kind: in_fold); a meta-learner "
                "fitted on them learns from models that saw those patients (leakage). "
                "Give out-of-fold predictions (oof.csv from `svdh train --folds K`)"
            )
        if r.task == "boneage":
            raise BadRunError(
                f"{r.path}: a bone-age run predicts months, not an SvdH score; leave it out"
            )
    first = runs[0]
    for r in runs[1:]:
        if r.bins != first.bins or r.score_scope != first.score_scope:
            raise BadRunError(
                f"{r.path}: score scale differs from {first.path} "
                f"({r.score_scope} {r.bins.to_dict() if r.bins else None} vs "
                f"{first.score_scope} {first.bins.to_dict() if first.bins else None}); members must score the same thing"
            )
    for r in runs:
        per_patient = r.oof.groupby("patient_id")["fold"].nunique()
        split = per_patient[per_patient > 1]
        if len(split):
            raise BadRunError(
                f"{r.path}: patient {split.index[0]!r} has images in {int(split.iloc[0])} folds; folds "
                "must group patients, or a fold model has seen the patient it predicts (leakage)"
            )


def align_members(runs: list[Run]) -> Members:
    """Check the members share images, truth and folds, and line their predictions up."""
    check_members(runs)
    first = runs[0]
    ids = first.oof["image_id"]
    base_cols = ["image", "image_id", "patient_id", "fold", "y_true"] + [
        c for c in CARRY_COLUMNS if c in first.oof.columns
    ]
    base = first.oof[base_cols].reset_index(drop=True)
    scores, probs = [], []
    class_k = first.bins.n_classes if all(r.task in CLASS_TASKS for r in runs) else None
    for r in runs:
        o = r.oof.set_index("image_id")
        missing = ids[~ids.isin(o.index)]
        extra = o.index[~o.index.isin(ids)]
        if len(missing) or len(extra):
            ex = missing.iloc[0] if len(missing) else extra[0]
            raise BadRunError(
                f"{r.path}: images differ from {first.path} ({len(missing)} missing, {len(extra)} extra, "
                f"e.g. {ex!r}); members must be trained on the same images"
            )
        o = o.loc[ids]
        fold_diff = np.flatnonzero(o["fold"].to_numpy() != base["fold"].to_numpy())
        if len(fold_diff):
            i = int(fold_diff[0])
            raise BadRunError(
                f"{r.path}: image {ids.iloc[i]!r} is in fold {int(o['fold'].iloc[i])} here but fold "
                f"{int(base['fold'].iloc[i])} in {first.path}; members with different folds make the "
                "stacked out-of-fold predictions leak. Train all members with the same --folds and --seed"
            )
        if (o["patient_id"].to_numpy() != base["patient_id"].to_numpy()).any():
            i = int(np.flatnonzero(o["patient_id"].to_numpy() != base["patient_id"].to_numpy())[0])
            raise BadRunError(
                f"{r.path}: image {ids.iloc[i]!r} belongs to another patient than in {first.path}"
            )
        tdiff = np.flatnonzero(
            np.abs(o["y_true"].to_numpy(float) - base["y_true"].to_numpy(float)) > 1e-6
        )
        if len(tdiff):
            i = int(tdiff[0])
            raise BadRunError(
                f"{r.path}: y_true of image {ids.iloc[i]!r} is {o['y_true'].iloc[i]} here but "
                f"{base['y_true'].iloc[i]} in {first.path}; members must be trained on the same labels"
            )
        scores.append(o["y_pred"].to_numpy(float))
        if class_k is not None:
            probs.append(o[[f"p_{k}" for k in range(class_k)]].to_numpy(float))
    return Members(
        runs=runs,
        names=_names(runs),
        base=base,
        scores=np.column_stack(scores),
        probs=np.stack(probs, axis=1) if probs else None,
        bins=first.bins,
    )


# --------------------------------------------------------------------------- score combiners


def fit_score_meta(
    X: np.ndarray, y: np.ndarray, method: str, ridge_alpha: float = 1.0
) -> dict[str, Any]:
    """Fit a linear combination of member scores: ``pred = X @ coef + intercept``."""
    m = X.shape[1]
    if method == "mean":
        return {"kind": "mean", "coef": [1.0 / m] * m, "intercept": 0.0}
    if method == "weighted":
        mse = np.maximum(((X - y[:, None]) ** 2).mean(axis=0), 1e-12)
        w = (1 / mse) / (1 / mse).sum()
        return {"kind": "inverse_mse", "coef": w.tolist(), "intercept": 0.0}
    if method == "nnls":
        w, _ = optimize.nnls(X, y)
        return {"kind": "nnls", "coef": w.tolist(), "intercept": 0.0}
    if method == "stacking":
        from sklearn.linear_model import Ridge

        # Non-negative weights: collinear members (all predict the same score) otherwise get
        # large weights of opposite sign that do not generalise; the intercept absorbs bias.
        model = Ridge(alpha=ridge_alpha, positive=True).fit(X, y)
        return {
            "kind": "ridge",
            "coef": model.coef_.tolist(),
            "intercept": float(model.intercept_),
            "ridge_alpha": ridge_alpha,
        }
    raise BadConfigError(f"ensemble method {method!r} is not one of {', '.join(METHODS)}")


def predict_score_meta(
    meta: dict[str, Any], X: np.ndarray, max_score: float | None = None
) -> np.ndarray:
    pred = np.asarray(X, float) @ np.asarray(meta["coef"], float) + float(meta["intercept"])
    return np.clip(pred, 0.0, max_score if max_score is not None else np.inf)


# --------------------------------------------------------------------------- class combiners


def _class_features(P: np.ndarray) -> np.ndarray:
    """n x m x K probabilities -> n x (m*K) log-probabilities (the multinomial's inputs)."""
    return np.log(np.clip(P, _EPS, 1.0)).reshape(len(P), -1)


def _expected_class(P: np.ndarray) -> np.ndarray:
    """n x m x K -> n x m expected class index per member (the ordinal model's inputs)."""
    return (P * np.arange(P.shape[2])).sum(axis=2)


def _ordinal_nll(params: np.ndarray, X: np.ndarray, y: np.ndarray, K: int, lam: float) -> float:
    beta, t0, d = params[: X.shape[1]], params[X.shape[1]], params[X.shape[1] + 1 :]
    theta = t0 + np.concatenate([[0.0], np.cumsum(np.exp(d))])
    probs = _ordinal_probs(X @ beta, theta)
    ll = np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).sum()
    return -ll + lam * (beta @ beta)


def _ordinal_probs(eta: np.ndarray, theta: np.ndarray) -> np.ndarray:
    cum = special.expit(theta[None, :] - eta[:, None])  # P(y <= k), k = 0..K-2
    cum = np.column_stack([np.zeros(len(eta)), cum, np.ones(len(eta))])
    return np.clip(np.diff(cum, axis=1), 0.0, 1.0)


def fit_class_meta(
    P: np.ndarray, c: np.ndarray, method: str, class_meta: str, weights: list[float] | None = None
) -> dict[str, Any]:
    """Fit the combination of member class probabilities P (n x m x K) to classes c."""
    n, m, K = P.shape
    if method != "stacking":
        w = np.asarray(weights if weights is not None else [1.0 / m] * m, float)
        w = w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)
        return {"kind": "weighted_mean", "weights": w.tolist()}
    if class_meta == "multinomial":
        from sklearn.linear_model import LogisticRegression

        X = _class_features(P)
        present = np.unique(c)
        W = np.zeros((K, X.shape[1]))
        b = np.full(K, -30.0)  # a class absent from the training rows: probability ~1e-13
        if len(present) == 1:
            b[present[0]] = 0.0
        else:
            model = LogisticRegression(C=1.0, max_iter=2000).fit(X, c)
            cls = model.classes_.astype(int)
            if len(cls) == 2:  # sklearn's binary form: softmax([0, z]) == sigmoid(z)
                W[cls[1]], b[cls[1]], b[cls[0]] = model.coef_[0], model.intercept_[0], 0.0
            else:
                W[cls], b[cls] = model.coef_, model.intercept_
        return {
            "kind": "multinomial",
            "features": "log_probs",
            "coef": W.tolist(),
            "intercept": b.tolist(),
        }
    if class_meta == "ordinal":
        # Proportional-odds (cumulative logit) model on each member's expected class.
        # Hand-written with scipy.optimize: scikit-learn has no ordinal regression and
        # statsmodels/mord are not dependencies. Thresholds stay ordered via exp increments.
        X = _expected_class(P)
        x0 = np.concatenate([np.full(m, 1.0 / m), [0.5], np.zeros(K - 2)])
        res = optimize.minimize(
            _ordinal_nll, x0, args=(X, c.astype(int), K, 1e-3), method="L-BFGS-B"
        )
        beta, t0, d = res.x[:m], res.x[m], res.x[m + 1 :]
        theta = t0 + np.concatenate([[0.0], np.cumsum(np.exp(d))])
        return {
            "kind": "ordinal",
            "features": "expected_class",
            "coef": beta.tolist(),
            "thresholds": theta.tolist(),
        }
    raise BadConfigError(f"class meta-learner {class_meta!r} is not one of {', '.join(CLASS_META)}")


def predict_class_meta(meta: dict[str, Any], P: np.ndarray) -> np.ndarray:
    P = np.asarray(P, float)
    if meta["kind"] == "weighted_mean":
        return np.einsum("nmk,m->nk", P, np.asarray(meta["weights"], float))
    if meta["kind"] == "multinomial":
        z = _class_features(P) @ np.asarray(meta["coef"], float).T + np.asarray(
            meta["intercept"], float
        )
        return special.softmax(z, axis=1)
    if meta["kind"] == "ordinal":
        eta = _expected_class(P) @ np.asarray(meta["coef"], float)
        probs = _ordinal_probs(eta, np.asarray(meta["thresholds"], float))
        return probs / probs.sum(axis=1, keepdims=True)
    raise BadRunError(f"unknown class meta-learner kind {meta['kind']!r} in meta_learner.json")


def apply_meta(
    meta: dict[str, Any], member_scores: np.ndarray, member_probs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Deploy a ``meta_learner.json``: member scores (n x m) [and probabilities n x m x K]
    -> ensemble score (n) [and probabilities n x K]. Numpy only, no pickled models."""
    max_score = meta.get("max_score")
    score = predict_score_meta(meta["score"], member_scores, max_score)
    probs = None
    if meta.get("class") is not None and member_probs is not None:
        probs = predict_class_meta(meta["class"], member_probs)
    return score, probs


# --------------------------------------------------------------------------- building


def _nested_oof(fit, predict, n: int, folds: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty((n, *out_shape))
    for f in np.unique(folds):
        test = folds == f
        meta = fit(~test)
        out[test] = predict(meta, test).reshape(test.sum(), *out_shape)
    return out


def _one_blas_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with single-threaded BLAS. The meta-learners are tiny (members x classes
    features): threaded BLAS only oversubscribes the cores there (12x slower measured on a
    busy 2-core machine)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


@_one_blas_thread
def _stored_preprocess(config: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return PreprocessConfig.stored(config)
    except BadConfigError:  # a run without preprocessing settings (e.g. from a bare CSV)
        return None


def _class_columns(
    oof: pd.DataFrame, mem: Members, meta: dict[str, Any], method: str, class_meta: str
) -> None:
    """Class probabilities (nested out-of-fold) and the final class meta-learner, in place."""
    bins, X, y, folds, n = mem.bins, mem.scores, mem.y_true, mem.meta_folds, len(mem.y_true)
    assert mem.probs is not None
    P, c = mem.probs, oof["class_true"].to_numpy(int)

    def weights(tr: np.ndarray) -> list[float] | None:
        return (
            fit_score_meta(X[tr], y[tr], method)["coef"] if method in ("weighted", "nnls") else None
        )

    probs = _nested_oof(
        lambda tr: fit_class_meta(P[tr], c[tr], method, class_meta, weights(tr)),
        lambda cm, te: predict_class_meta(cm, P[te]),
        n,
        folds,
        (bins.n_classes,),
    )
    meta["class"] = fit_class_meta(P, c, method, class_meta, weights(np.ones(n, bool)))
    oof["class_pred"] = probs.argmax(axis=1)
    for k in range(bins.n_classes):
        oof[f"p_{k}"] = probs[:, k]


def _ensemble_config(
    runs: list[Run],
    mem: Members,
    task: str,
    method: str,
    class_meta: str,
    alpha: float,
    conformal_method: str,
) -> dict[str, Any]:
    """``config.yaml`` of the ensemble directory."""
    cfg = {
        "kind": "ensemble",
        "task": task,
        "method": method,
        "class_meta": class_meta if task == "classification" and method == "stacking" else None,
        "backbone": " + ".join(str(r.config.get("backbone", "?")) for r in runs),
        "init": " + ".join(sorted({str(r.config.get("init", "?")) for r in runs})),
        "scheme": f"{method} ensemble",
        "member_tasks": [r.task for r in runs],
        "members": [
            {
                "name": nm,
                "path": str(r.path.resolve()),
                "task": r.task,
                **{k: r.config.get(k) for k in ("backbone", "init", "scheme")},
                "image_size": (_stored_preprocess(r.config) or {}).get("size"),
            }
            for nm, r in zip(mem.names, runs, strict=True)
        ],
        "score_scope": runs[0].score_scope,
        "bins": mem.bins.to_dict(),
        "n_folds": int(len(np.unique(mem.folds))),
        "preprocess": _stored_preprocess(runs[0].config),
        "prediction_kind": "oof",
        "conformal": {"alpha": alpha, "method": conformal_method},
    }
    if any(r.is_phantom for r in runs):
        cfg["data_kind"] = "phantom"
    return cfg


def _ensemble_metrics(
    rd: RunDir,
    runs: list[Run],
    mem: Members,
    cfg: dict[str, Any],
    oof: pd.DataFrame,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Metrics of the ensemble, of each member and of the plain mean on the same rows, so
    the gain of the combination is visible rather than assumed."""
    from svdh.evaluate.metrics import evaluate_run, headline

    result = evaluate_run(read_run(rd.path), n_boot=n_boot, seed=seed)
    result["members"] = {
        nm: headline(evaluate_run(r, n_boot=0)) for nm, r in zip(mem.names, runs, strict=True)
    }
    mean_pred = np.clip(mem.scores.mean(axis=1), 0, mem.bins.max_score)
    mean_run = Run(
        rd.path,
        "mean",
        {**cfg, "task": "regression"},
        oof.assign(y_pred=mean_pred).drop(
            columns=["class_pred", *[f"p_{k}" for k in range(mem.bins.n_classes)]], errors="ignore"
        ),
    )
    result["baseline_mean"] = headline(evaluate_run(mean_run, n_boot=0))
    result["verdict"] = verdict(cfg.get("method", ""), result)
    return result


def verdict(method: str, m: dict[str, Any]) -> str | None:
    """One line when the combination does not earn its place: the ensemble's out-of-fold PCC
    (nested CV for stacking) below its best member's or below the plain mean of the members.
    None when it is at least as good as both (as the paper found for stacking)."""
    pcc = m.get("pcc")
    members = {k: v.get("pcc") for k, v in (m.get("members") or {}).items()}
    members = {k: v for k, v in members.items() if v is not None and np.isfinite(v)}
    if pcc is None or not np.isfinite(pcc) or not members:
        return None
    best = max(members, key=lambda k: members[k])
    mean = (m.get("baseline_mean") or {}).get("pcc")
    worse = []
    if pcc < members[best]:
        worse.append(f"its best member {best} ({members[best]:.3f})")
    if method != "mean" and mean is not None and np.isfinite(mean) and pcc < mean:
        worse.append(f"the plain mean of the members ({mean:.3f})")
    if not worse:
        return None
    return (
        f"{method} ensemble out-of-fold PCC {pcc:.3f} is below "
        + " and ".join(worse)
        + ": the combination does not help here; prefer the better model"
    )


def build_ensemble(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    *,
    method: str = "stacking",
    class_meta: str = "multinomial",
    alpha: float = 0.1,
    conformal_method: str = "mondrian",
    ridge_alpha: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> Path:
    """Combine member runs into an ensemble directory (see module docstring); returns it."""
    from svdh.evaluate.metrics import ConformalModel, crossfit_intervals

    if method not in METHODS:
        raise BadConfigError(f"ensemble method {method!r} is not one of {', '.join(METHODS)}")
    if class_meta not in CLASS_META:
        raise BadConfigError(
            f"class meta-learner {class_meta!r} is not one of {', '.join(CLASS_META)}"
        )
    runs = [read_run(d) for d in run_dirs]
    mem = align_members(runs)
    bins, X, y, folds = mem.bins, mem.scores, mem.y_true, mem.meta_folds
    n, maxs = X.shape[0], bins.max_score
    y_pred = _nested_oof(
        lambda tr: fit_score_meta(X[tr], y[tr], method, ridge_alpha),
        lambda meta, te: predict_score_meta(meta, X[te], maxs),
        n,
        folds,
        (),
    )
    meta: dict[str, Any] = {
        "method": method,
        "members": mem.names,
        "member_paths": [str(r.path.resolve()) for r in runs],
        "max_score": maxs,
        "bins": bins.to_dict(),
        "score": fit_score_meta(X, y, method, ridge_alpha),
        "class": None,
    }
    oof = mem.base.copy()
    oof["y_pred"] = y_pred
    oof["class_true"] = np.asarray(bins.to_class(y)).reshape(-1)
    task = Task.REGRESSION
    if mem.probs is not None:
        task = Task.CLASSIFICATION
        _class_columns(oof, mem, meta, method, class_meta)
    else:
        oof["class_pred"] = np.asarray(bins.to_class(y_pred)).reshape(-1)
    for j, name in enumerate(mem.names):
        oof[f"member_{name}"] = X[:, j]
    lo, hi = crossfit_intervals(y, y_pred, folds, alpha=alpha, bins=bins, method=conformal_method)
    oof["interval_lo"], oof["interval_hi"] = lo, hi
    conformal = ConformalModel.fit(y, y_pred, alpha=alpha, bins=bins, method=conformal_method)
    test = _ensemble_test(runs, mem, meta)
    if test is not None:
        test["interval_lo"], test["interval_hi"] = conformal.interval(
            test["y_pred"].to_numpy(float)
        )
    cfg = _ensemble_config(runs, mem, task.value, method, class_meta, alpha, conformal_method)
    rd = RunDir(out_dir)
    write_run(rd.path, cfg, oof, test)
    write_json(rd.meta_learner, meta)
    write_json(rd.conformal, conformal.to_dict())
    write_json(rd.metrics, _ensemble_metrics(rd, runs, mem, cfg, oof, n_boot, seed))
    return rd.path


def _ensemble_test(runs: list[Run], mem: Members, meta: dict[str, Any]) -> pd.DataFrame | None:
    """Apply the final meta-learner to the members' held-out test predictions, if all have them."""
    if any(r.test is None for r in runs):
        return None
    first = runs[0].test
    ids = first["image_id"]
    scores, probs = [], []
    for r in runs:
        t = r.test.set_index("image_id")
        if set(t.index) != set(ids):
            raise BadRunError(
                f"{RunDir(r.path).test}: holds other images than {RunDir(runs[0].path).test}"
            )
        t = t.loc[ids]
        scores.append(t["y_pred"].to_numpy(float))
        if mem.probs is not None:
            probs.append(t[[f"p_{k}" for k in range(mem.bins.n_classes)]].to_numpy(float))
    P = np.stack(probs, axis=1) if probs else None
    score, pr = apply_meta(meta, np.column_stack(scores), P)
    cols = ["image", "image_id", "patient_id", "fold", "y_true"] + [
        c for c in CARRY_COLUMNS if c in first.columns
    ]
    test = first[cols].reset_index(drop=True).copy()
    test["y_pred"] = score
    test["class_true"] = np.asarray(mem.bins.to_class(test["y_true"].to_numpy(float))).reshape(-1)
    if pr is not None:
        test["class_pred"] = pr.argmax(axis=1)
        for k in range(pr.shape[1]):
            test[f"p_{k}"] = pr[:, k]
    else:
        test["class_pred"] = np.asarray(mem.bins.to_class(score)).reshape(-1)
    for j, name in enumerate(mem.names):
        test[f"member_{name}"] = scores[j]
    return test
