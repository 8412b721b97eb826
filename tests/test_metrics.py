"""Metrics against scipy/scikit-learn and hand-computed cases; conformal intervals; `svdh evaluate`."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from sklearn import metrics as skm
from typer.testing import CliRunner

from run_factory import cohort, make_run
from svdh.core.errors import BadConfigError, BadRunError
from svdh.core.scoring import SeverityBins
from svdh.evaluate.metrics import (
    ConformalModel,
    bland_altman,
    bootstrap_ci,
    class_metrics,
    conformal_quantile,
    crossfit_intervals,
    evaluate_run,
    icc_2_1,
    lin_ccc,
    patient_table,
    score_metrics,
)
from svdh.runs.tables import read_predictions_csv, read_run

T = np.array([0, 1, 3, 7, 12, 20, 45, 80, 2, 0, 33, 60], float)
P = np.array([2, 0, 5, 6, 15, 18, 40, 70, 4, 1, 30, 66], float)


def _pearson_axis(x, y, axis=-1):
    from svdh.evaluate.metrics import _pearson_axis as f

    return f(x, y, axis=axis)


# --------------------------------------------------------------------------- scores


def test_score_metrics_match_scipy_and_sklearn():
    m = score_metrics(T, P, n_boot=0)
    assert m["n"] == len(T)
    assert m["pcc"] == pytest.approx(stats.pearsonr(T, P).statistic, abs=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(T, P)), abs=1e-12)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((P - T) ** 2)), abs=1e-12)
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(T, P), abs=1e-12)
    assert m["r2"] == pytest.approx(skm.r2_score(T, P), abs=1e-12)
    assert m["within_sdc"] == pytest.approx(np.mean(np.abs(P - T) <= 5))


def test_lin_ccc_hand_computed():
    # mean 2 vs 3, population variances 2/3 each, covariance 2/3: 2*(2/3) / (2/3 + 2/3 + 1) = 4/7
    assert lin_ccc(np.array([1, 2, 3.0]), np.array([2, 3, 4.0])) == pytest.approx(4 / 7)
    assert lin_ccc(T, T) == pytest.approx(1.0)
    # a constant offset keeps Pearson at 1 but lowers the CCC
    assert lin_ccc(T, T + 10) < 0.95


def test_icc_2_1_shrout_fleiss_and_hand_case():
    # Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges; ICC(2,1) = 0.29
    sf = np.array(
        [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float
    )
    assert icc_2_1(sf) == pytest.approx(0.29, abs=0.005)
    # By hand: MSR = 4.5, MSC = 0, MSE = 0.5, n = 3, k = 2 -> 4 / (5 - 1/3) = 6/7
    assert icc_2_1(np.array([[1, 2], [3, 3], [5, 4]], float)) == pytest.approx(6 / 7)
    assert icc_2_1(np.column_stack([T, T])) == pytest.approx(1.0)


def test_bland_altman_hand_computed():
    ba = bland_altman(np.array([0, 2, 4, 6.0]), np.array([1, 2, 6, 6.0]))
    sd = math.sqrt((0.25**2 + 0.75**2 + 1.25**2 + 0.75**2) / 3)
    assert ba["bias"] == pytest.approx(0.75)
    assert ba["sd"] == pytest.approx(sd)
    assert ba["loa_low"] == pytest.approx(0.75 - 1.96 * sd)
    assert ba["loa_high"] == pytest.approx(0.75 + 1.96 * sd)


def test_errors_by_score_range_use_severity_bins():
    bins = SeverityBins.patient()
    m = score_metrics(T, P, bins=bins, n_boot=0)
    classes = bins.to_class(T)
    assert sum(r["n"] for r in m["by_range"]) == len(T)
    for r in m["by_range"]:
        sel = classes == r["class"]
        assert r["range"] == bins.labels[r["class"]]
        assert r["mae"] == pytest.approx(np.abs(P[sel] - T[sel]).mean())
        assert r["bias"] == pytest.approx((P[sel] - T[sel]).mean())


def test_bootstrap_ci_agrees_with_fisher_z_and_clusters_patients():
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    y = 0.8 * x + 0.6 * rng.normal(size=200)
    r = stats.pearsonr(x, y).statistic
    lo, hi = bootstrap_ci(_pearson_axis, (x, y), n_boot=2000, seed=1)
    z, se = np.arctanh(r), 1 / math.sqrt(200 - 3)
    assert lo < r < hi
    assert lo == pytest.approx(np.tanh(z - 1.96 * se), abs=0.03)
    assert hi == pytest.approx(np.tanh(z + 1.96 * se), abs=0.03)
    # Every row twice (two hands of one patient, perfectly alike): resampling rows as if
    # independent halves the information and narrows the CI; resampling patients does not.
    x2, y2, g = np.repeat(x, 2), np.repeat(y, 2), np.repeat(np.arange(200), 2)
    naive = bootstrap_ci(_pearson_axis, (x2, y2), n_boot=2000, seed=1)
    clustered = bootstrap_ci(_pearson_axis, (x2, y2), groups=g, n_boot=2000, seed=1)
    width = hi - lo
    assert clustered[1] - clustered[0] == pytest.approx(width, rel=0.2)
    assert naive[1] - naive[0] < 0.85 * width


# --------------------------------------------------------------------------- classes


def test_class_metrics_match_sklearn():
    t = np.array([0, 0, 1, 2, 3, 3, 4, 6, 6, 5])
    p = np.array([0, 1, 1, 2, 2, 3, 5, 6, 4, 5])
    m = class_metrics(t, p, 7)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(t, p))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(t, p))
    assert m["qwk"] == pytest.approx(skm.cohen_kappa_score(t, p, weights="quadratic"))
    assert m["class_mae"] == pytest.approx(0.5)  # |diffs| = 0,1,0,0,1,0,1,0,2,0
    assert m["class_rmse"] == pytest.approx(math.sqrt(7 / 10))
    assert m["class_pcc"] == pytest.approx(stats.pearsonr(t, p).statistic)
    cm = np.array(m["confusion"])
    assert cm.shape == (7, 7) and cm.sum() == 10 and np.trace(cm) == 6
    assert cm[6, 4] == 1  # true class 6 predicted 4


# --------------------------------------------------------------------------- conformal


def test_conformal_quantile_finite_sample():
    r = np.arange(1, 10, dtype=float)  # n = 9
    assert conformal_quantile(r, 0.1) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(r, 0.2) == 8.0  # ceil(10 * 0.8) = 8th
    assert conformal_quantile(r[:5], 0.1) == math.inf  # ceil(6 * 0.9) = 6 > 5: no finite bound
    with pytest.raises(BadConfigError):
        conformal_quantile(r, 1.5)


def _heteroscedastic(n, rng):
    t = np.clip(np.round(rng.gamma(0.7, 30, n)), 0, 280)
    return t, np.clip(t + rng.normal(0, 1 + 0.15 * t), 0, 280)


def test_conformal_coverage_absolute_vs_mondrian():
    bins = SeverityBins.patient()
    rng = np.random.default_rng(0)
    tc, pc = _heteroscedastic(2000, rng)
    tt, pt = _heteroscedastic(20000, rng)
    severe, mild = bins.to_class(pt) >= 5, bins.to_class(pt) <= 2
    res = {}
    for method in ("absolute", "mondrian"):
        model = ConformalModel.fit(tc, pc, alpha=0.1, bins=bins, method=method)
        lo, hi = model.interval(pt)
        inside = (tt >= lo) & (tt <= hi)
        res[method] = (inside.mean(), inside[severe].mean(), (hi - lo)[mild].mean())
        assert 0.87 <= inside.mean() <= 0.93
        assert (lo >= 0).all() and (hi <= 280).all()
    # Errors grow with the score: one width over-covers mild and under-covers severe disease.
    assert res["absolute"][1] < 0.75
    assert res["mondrian"][1] > 0.85
    assert res["mondrian"][2] < res["absolute"][2]


def test_conformal_model_round_trips_json():
    bins = SeverityBins.hand()
    rng = np.random.default_rng(1)
    t, p = _heteroscedastic(300, rng)
    t, p = t / 2, p / 2
    model = ConformalModel.fit(t, p, alpha=0.2, bins=bins)
    text = json.dumps(model.to_dict(), allow_nan=False)
    back = ConformalModel.from_dict(json.loads(text))
    np.testing.assert_allclose(back.interval(p)[0], model.interval(p)[0])
    np.testing.assert_allclose(back.interval(p)[1], model.interval(p)[1])
    tiny = ConformalModel.fit(t[:4], p[:4], alpha=0.1, bins=bins, method="absolute")
    assert json.loads(json.dumps(tiny.to_dict(), allow_nan=False))["q"] is None  # unbounded


def test_crossfit_intervals_do_not_calibrate_on_their_own_fold():
    t = np.array([0, 0, 0, 0, 10, 10, 10, 10], float)
    p = np.array([0, 0, 0, 0, 0, 0, 0, 0], float)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    lo, hi = crossfit_intervals(t, p, folds, alpha=0.2, method="absolute")
    # fold 1 is calibrated on fold 0's zero residuals only, so it misses every 10
    assert (hi[4:] == 0).all()


# --------------------------------------------------------------------------- tables and runs


def test_patient_table_sums_both_hands_only():
    df = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "c", "c"],
            "side": ["L", "R", "L", "L", "R"],
            "y_true": [1.0, 2, 5, 10, 20],
            "y_pred": [1.5, 2.5, 4, 12, 18],
            "reader2": [1.0, 3, 5, 11, 19],
        }
    )
    pt = patient_table(df).set_index("patient_id")
    assert list(pt.index) == ["a", "c"]  # b has one hand only
    assert (
        pt.loc["a", "y_true"] == 3 and pt.loc["c", "y_pred"] == 30 and pt.loc["c", "reader2"] == 30
    )


def test_evaluate_run_regression_patient_human_and_test(tmp_path):
    base = cohort(60, reader2=True, seed=2)
    test = cohort(12, seed=5).assign(fold=-1)
    run = read_run(make_run(tmp_path / "r", base, noise=5, seed=4, test=test))
    m = evaluate_run(run, n_boot=200)
    assert m["n"] == 120 and m["n_patients"] == 60
    assert m["pcc"] == pytest.approx(stats.pearsonr(run.oof["y_true"], run.oof["y_pred"]).statistic)
    assert m["classes_from"] == "binned scores" and len(m["confusion"]) == 7
    assert m["pcc_ci"][0] < m["pcc"] < m["pcc_ci"][1]
    assert 0.8 <= m["interval"]["coverage"] <= 1.0
    assert m["patient"]["n"] == 60
    pt = patient_table(run.oof)
    assert m["patient"]["rmse"] == pytest.approx(
        np.sqrt(((pt["y_pred"] - pt["y_true"]) ** 2).mean())
    )
    assert m["human"]["n"] == 120
    r2 = run.oof["reader2"].to_numpy()
    assert m["human"]["reader2"]["pcc"] == pytest.approx(
        stats.pearsonr(run.oof["y_true"], r2).statistic
    )
    assert m["test"]["n"] == 24 and "coverage" in m["test"]["interval"]
    assert m["warnings"] == []


def test_evaluate_class_run_uses_model_classes(tmp_path):
    run = read_run(make_run(tmp_path / "c", cohort(40), task="classification", seed=3))
    m = evaluate_run(run, n_boot=0)
    assert m["classes_from"] == "model classes"
    c_true = SeverityBins.hand().to_class(run.oof["y_true"].to_numpy())
    assert m["accuracy"] == pytest.approx(np.mean(c_true == run.oof["class_pred"].to_numpy()))
    assert m["qwk"] == pytest.approx(
        skm.cohen_kappa_score(c_true, run.oof["class_pred"], weights="quadratic")
    )


def test_evaluate_flags_phantom_and_in_fold(tmp_path):
    run = read_run(
        make_run(
            tmp_path / "p",
            cohort(20),
            extra_config={"data_kind": "phantom", "prediction_kind": "in_fold"},
        )
    )
    warnings = evaluate_run(run, n_boot=0)["warnings"]
    assert any("in-fold" in w for w in warnings)
    assert any("not a clinical validation" in w for w in warnings)
    run2 = read_run(
        make_run(tmp_path / "s", cohort(20), extra_config={"source": "ra2-dream:/data/synth-ra"})
    )
    assert run2.is_phantom


# --------------------------------------------------------------------------- CSV input and the CLI


def test_predictions_csv_scope_and_errors(tmp_path):
    p = tmp_path / "preds.csv"
    pd.DataFrame({"y_true": [0, 10, 100, 250], "y_pred": [1, 12, 90, 240]}).to_csv(p, index=False)
    run = read_predictions_csv(p)
    assert run.score_scope == "patient" and run.bins.max_score == 280
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"y_true": [0, 10], "y_pred": [1, None]}).to_csv(bad, index=False)
    with pytest.raises(BadRunError, match=r"bad.csv: row 3 .*y_pred"):
        read_predictions_csv(bad)
    pd.DataFrame({"truth": [0], "y_pred": [1]}).to_csv(bad, index=False)
    with pytest.raises(BadRunError, match="missing column 'y_true'"):
        read_predictions_csv(bad)


def test_cli_evaluate_json_and_out(tmp_path):
    from svdh.cli.main import app

    d = make_run(tmp_path / "run", cohort(30, reader2=True), seed=7)
    res = CliRunner().invoke(
        app,
        ["evaluate", str(d), "--format", "json", "--boot", "100", "--out", str(tmp_path / "ev")],
    )
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    for key in ("n", "pcc", "rmse", "mae", "accuracy", "qwk"):
        assert isinstance(m[key], int | float), key
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 60
    for name in ("pred_vs_true", "bland_altman", "confusion", "error_by_range", "coverage"):
        with Image.open(tmp_path / "ev" / f"{name}.png") as im:
            assert im.size[0] > 300 and im.size[1] > 300
    csv = tmp_path / "p.csv"
    pd.DataFrame({"y_true": [0, 4, 9, 20, 50, 120], "y_pred": [1, 3, 11, 18, 60, 100]}).to_csv(
        csv, index=False
    )
    res = CliRunner().invoke(app, ["evaluate", str(csv), "--boot", "50"])
    assert res.exit_code == 0 and "PCC" in res.output and "confusion" in res.output
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "missing")])
    assert isinstance(res.exception, BadRunError)


def test_phantom_marker_only_from_data_settings(tmp_path):
    cfg = {
        "task": "regression",
        "init": "checkpoint:runs/phantom-boneage/best.ckpt",
        "data_kind": "images",
        "source": "ra2-dream:/data/uab",
    }
    from svdh.runs.tables import is_phantom

    assert not is_phantom(cfg)
    assert is_phantom({**cfg, "source": "ra2-dream:/work/synth_ra"})
    assert is_phantom({**cfg, "data_kind": "phantom"})
    img = tmp_path / "cohort"
    img.mkdir()
    (img / "landmarks.json").write_text("{}")
    assert is_phantom(cfg, pd.DataFrame({"image": [str(img / "P1-LH.png")]}))


def test_headline_reads_evaluation_and_training_metrics():
    from svdh.evaluate.metrics import headline

    assert headline({"pcc": 0.9, "rmse": 3.0})["pcc"] == 0.9
    assert headline({"folds": [], "overall": {"pcc": 0.8, "mae": 2.0}})["mae"] == 2.0
