"""Change between visits: pairs, the SDC by hand, calibrated change intervals, progression."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from svdh.evaluate.change import (
    ChangeCalibration,
    change_metrics,
    change_pairs,
    change_table,
    crossfit_change,
    sdc_from_errors,
    sdc_of_differences,
)
from svdh.evaluate.metrics import conformal_quantile


def _table(
    n: int, seed: int = 0, bias_sd: float = 0.0, films: int = 1, folds: int = 5
) -> pd.DataFrame:
    """Per-image rows of ``n`` patients at 2 visits: damage that only grows, predictions with
    heavy-tailed, score-dependent errors (and a patient bias shared by both visits)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = rng.integers(0, 70, 2).astype(float)
        rate = 0.0 if rng.random() < 0.35 else rng.gamma(2.0, 3.0)
        scores = [base, base + rng.poisson(rate / 2, 2)]
        bias = rng.normal(0, bias_sd, 2)
        for v, sc in enumerate(scores):
            for f in range(films):
                for s, side in enumerate("LR"):
                    err = rng.standard_t(4) * (1.0 + sc[s] / 30.0)
                    rows.append(
                        {
                            "patient_id": f"P{i:04d}",
                            "image_id": f"P{i:04d}-V{v + 1}-F{f + 1}-{side}",
                            "visit": str(v + 1),
                            "side": side,
                            "y_true": sc[s],
                            "y_pred": sc[s] + bias[s] + err,
                            "fold": i % folds,
                        }
                    )
    return pd.DataFrame(rows)


def test_sdc_matches_a_hand_computed_example() -> None:
    """d = (1, -1, 3, -3): SD = sqrt(20/3) = 2.582; SDC = 1.96 x 2.582 / sqrt(2) = 3.578."""
    assert sdc_of_differences(np.array([1.0, -1.0, 3.0, -3.0])) == pytest.approx(3.5785, abs=1e-4)
    # errors (2, 0, -2) against a known change: SD 2, SDC 1.96 x 2 = 3.92
    assert sdc_from_errors(np.array([7.0, 5.0, 3.0]), np.full(3, 5.0)) == pytest.approx(3.92)
    # the same through a prediction table: 4 patients, no true change, two films per visit;
    # film 1 measures no change, film 2 measures d_i (visit 2's left hand reads d_i higher)
    d = [1.0, -1.0, 3.0, -3.0]
    rows = []
    for i, di in enumerate(d):
        for v in ("1", "2"):
            for f in (1, 2):
                for side in "LR":
                    extra = di if (v == "2" and f == 2 and side == "L") else 0.0
                    rows.append(
                        {"patient_id": f"P{i}", "visit": v, "side": side, "film": f,
                         "y_true": 10.0, "y_pred": 10.0 + extra}
                    )  # fmt: skip
    m = change_metrics(pd.DataFrame(rows), n_boot=0)
    twice = m["model_sdc"]["changes_measured_twice"]
    assert twice["n"] == 4 and twice["sdc"]["value"] == pytest.approx(3.5785, abs=1e-4)
    # films of one visit: differences (0, 0, 0, 0) at visit 1 and d at visit 2 -> SD sqrt(20/7)
    one = m["model_sdc"]["films_of_one_visit"]
    assert one["n"] == 8
    assert one["sdc"]["value"] == pytest.approx(1.96 * math.sqrt(20 / 7), abs=1e-4)
    assert m["model_sdc"]["known_change"]["value"] == 0.0  # film 1 is exact
    assert m["patient"]["rmse"]["value"] == 0.0


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_change_interval_reaches_nominal_coverage_out_of_fold(alpha: float) -> None:
    """Cross-fitted split-conformal change intervals cover within 3 points of 1 - alpha on
    out-of-fold pairs, with heavy-tailed and score-dependent errors."""
    df = _table(4000, seed=1, bias_sd=3.0)
    m = change_metrics(df, alpha=alpha, n_boot=0)
    assert m["n_pairs"] == 4000
    assert abs(m["interval"]["coverage"] - (1 - alpha)) <= 0.03
    # calibrated on one half, it covers the other half (a held-out set) too
    pairs = change_pairs(df)
    cal_rows, test_rows = pairs.iloc[:2000], pairs.iloc[2000:]
    cal = ChangeCalibration.fit(cal_rows["dy_P_true"], cal_rows["dy_P_pred"], alpha=alpha)
    lo, hi = cal.interval(test_rows["dy_P_pred"])
    inside = (test_rows["dy_P_true"] >= lo) & (test_rows["dy_P_true"] <= hi)
    assert abs(inside.mean() - (1 - alpha)) <= 0.03


def test_change_interval_is_not_two_single_visit_intervals() -> None:
    """With a patient bias shared by both visits (same anatomy), the change interval is much
    narrower than the sum of two single-visit half-widths, and still covers."""
    df = _table(1500, seed=2, bias_sd=8.0)
    pairs = change_pairs(df)
    cal = ChangeCalibration.fit(pairs["dy_P_true"], pairs["dy_P_pred"])
    pt = df.groupby(["patient_id", "visit"])[["y_true", "y_pred"]].sum()
    q_single = conformal_quantile(np.abs(pt["y_true"] - pt["y_pred"]), 0.1)
    assert cal.q < 0.6 * (2 * q_single)
    cf = crossfit_change(pairs["dy_P_true"], pairs["dy_P_pred"], pairs["fold"])
    inside = (pairs["dy_P_true"] >= cf["lo"]) & (pairs["dy_P_true"] <= cf["hi"])
    assert abs(inside.mean() - 0.9) <= 0.03


def test_progression_probability_is_calibrated_and_ranks() -> None:
    df = _table(2000, seed=3)
    pairs = change_pairs(df)
    cf = crossfit_change(pairs["dy_P_true"], pairs["dy_P_pred"], pairs["fold"], threshold=5.0)
    observed = (pairs["dy_P_true"] > 5.0).mean()
    assert abs(np.mean(cf["p_progression"]) - observed) < 0.03
    m = change_metrics(df, n_boot=200)
    pr = m["progression"]
    assert pr["auc"]["value"] > 0.7
    lo, hi = pr["auc"]["ci"]
    assert lo < pr["auc"]["value"] < hi
    assert pr["non_progressors_true"]["value"] == pytest.approx(1 - observed)
    assert m["readers_sdc"]["individual_0_280"] == [4.0, 6.0]


def test_change_table_per_patient() -> None:
    rows = []
    for pid, scores in {"A": [(3, 4), (5, 9)], "B": [(0, 0), (0, 0)], "C": [(7, 7)]}.items():
        for v, (left, right) in enumerate(scores):
            for side, s in (("L", left), ("R", right)):
                rows.append(
                    {"patient_id": pid, "visit": f"2020-0{v + 1}-01", "side": side, "y_pred": s}
                )
    cal = ChangeCalibration.fit(np.zeros(9), np.linspace(-2, 2, 9), threshold=5.0)
    t = change_table(pd.DataFrame(rows), cal)
    assert list(t["patient_id"]) == ["A", "B"]  # C has one visit
    a = t.iloc[0]
    assert (a["change_L"], a["change_R"], a["change"]) == (2, 5, 7)
    assert a["progression"] and not t.iloc[1]["progression"]
    assert a["change_lo"] == 7 - cal.q and a["change_hi"] == 7 + cal.q
    assert a["years"] == pytest.approx(31 / 365.25, abs=1e-3)
    assert 0 < t.iloc[1]["p_progression"] < a["p_progression"] < 1


def test_change_collector_from_scored_rows() -> None:
    """What svdh predict collects: rows with patient, side and visit (a DICOM StudyDate) become
    the per-patient change table, with the bundle's calibration for interval and probability."""
    from svdh.inference.changes import ChangeCollector, visit_of

    assert visit_of({"study_date": "20160301"}) == "2016-03-01"
    assert visit_of({"study_date": "20160301"}, given="V2") == "2"  # a --patients CSV wins
    assert visit_of({}) == "" and visit_of(None, given=None) == ""
    cal = ChangeCalibration.fit(np.zeros(50), np.linspace(-3, 3, 50), threshold=5.0)
    col = ChangeCollector(cal.to_dict())
    films = [("P1", "2016-03-01", 10.0, 12.0), ("P1", "2017-03-02", 15.0, 16.0)]
    films += [("P2", "2016-05-01", 30.0, 30.0), ("P2", "2017-05-01", 30.5, 29.0)]
    for pid, visit, left, right in films:
        for side, s in (("L", left), ("R", right)):
            col.add({"image": f"{pid}-{visit}-{side}", "patient_id": pid, "side": side,
                     "visit": visit, "score": s, "erosion": s / 2, "jsn": s / 2})  # fmt: skip
    col.add({"image": "x", "patient_id": "P3", "side": "L", "visit": "", "score": 3.0})
    col.add({"image": "y", "patient_id": "P1", "side": "L", "visit": "2018-01-01", "score": None})
    recs = col.records()
    assert [r["patient_id"] for r in recs] == ["P1", "P2"]
    p1, p2 = recs
    assert (p1["visit_from"], p1["visit_to"]) == ("2016-03-01", "2017-03-02")
    assert (p1["change_L"], p1["change_R"], p1["change"]) == (5.0, 4.0, 9.0)
    assert p1["erosion_change"] == p1["jsn_change"] == 4.5
    assert p1["progression"] and not p2["progression"] and p2["change"] == -0.5
    assert p1["change_lo"] == pytest.approx(9.0 - cal.q, abs=0.01)
    assert p1["p_progression"] > 0.5 > p2["p_progression"]
    assert "true_change" not in p1


def test_cli_evaluate_reports_pair_figures_for_a_csv_with_visits(tmp_path) -> None:
    """`svdh evaluate` on a predictions CSV with visits: the change table, metrics.json's
    'change' and the cumulative probability plot and trajectories with --out."""
    import json

    from predict_world import run_cli

    csv_path = tmp_path / "preds.csv"
    _table(60, seed=4, films=2, folds=3).to_csv(csv_path, index=False)
    r = run_cli("evaluate", csv_path, "--format", "json", "--boot", "100", "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["change"]
    assert m["n_patients"] == 60 and m["n_pairs"] == 60
    assert m["patient"]["pcc"]["value"] > 0.5 and m["progression"]["auc"]["value"] > 0.7
    assert "changes_measured_twice" in m["model_sdc"]
    assert (tmp_path / "ev" / "change_cumulative.png").stat().st_size > 1000
    assert (tmp_path / "ev" / "change_trajectories.png").stat().st_size > 1000
    r = run_cli("evaluate", csv_path, "--boot", "0")
    assert r.returncode == 0 and "change between visits" in r.stdout


def test_bundle_change_calibration_round_trip() -> None:
    """What `svdh export` stores (run_calibration of the run's out-of-fold pairs) rebuilds the
    same intervals and probabilities, and includes the SDC from repeat films."""
    from types import SimpleNamespace

    from svdh.evaluate.change import run_calibration

    df = _table(80, seed=5, films=2)
    stored = run_calibration(SimpleNamespace(oof=df, score_scope="hand"))
    assert stored is not None and stored["n"] == 80 and stored["sdc_repeat"] > 0
    json_safe = __import__("json").loads(__import__("json").dumps(stored))
    cal = ChangeCalibration.from_dict(json_safe)
    pairs = change_pairs(df)
    ref = ChangeCalibration.fit(pairs["dy_P_true"], pairs["dy_P_pred"])
    x = np.array([-3.0, 0.0, 4.0, 12.0])
    np.testing.assert_allclose(cal.interval(x), ref.interval(x))
    np.testing.assert_allclose(cal.p_progression(x), ref.p_progression(x))
    assert cal.sdc == pytest.approx(ref.sdc)
    assert (
        run_calibration(SimpleNamespace(oof=df.drop(columns="visit"), score_scope="hand")) is None
    )
