"""Ensembles: stacking by nested CV, leak refusal, mean/weighted/NNLS, class stacking; run reading."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from run_factory import cohort, make_run
from svdh.core.errors import BadConfigError, BadRunError
from svdh.core.scoring import SeverityBins
from svdh.evaluate.ensemble import apply_meta, build_ensemble
from svdh.evaluate.metrics import ConformalModel
from svdh.runs.tables import read_run


def _rmse(df: pd.DataFrame) -> float:
    return float(np.sqrt(((df["y_pred"] - df["y_true"]) ** 2).mean()))


@pytest.fixture
def members(tmp_path):
    base = cohort(80, seed=0)
    a = make_run(tmp_path / "a", base, noise=6, seed=1)
    b = make_run(tmp_path / "b", base, bias=20, noise=6, seed=2, backbone="mobilenet_v2")
    return tmp_path, base, a, b


def test_stacking_beats_mean_when_one_member_is_biased(members):
    tmp, base, a, b = members
    stack = read_run(build_ensemble([a, b], tmp / "stack", n_boot=0))
    mean = read_run(build_ensemble([a, b], tmp / "mean", method="mean", n_boot=0))
    r_stack, r_mean = _rmse(stack.oof), _rmse(mean.oof)
    assert r_stack < 0.6 * r_mean
    assert abs((stack.oof["y_pred"] - stack.oof["y_true"]).mean()) < 2.0  # bias learnt away
    assert (mean.oof["y_pred"] - mean.oof["y_true"]).mean() > 7.0  # half of member b's bias stays
    assert stack.metrics["rmse"] == pytest.approx(r_stack)
    assert stack.metrics["baseline_mean"]["rmse"] == pytest.approx(r_mean)
    meta = json.loads((tmp / "stack" / "meta_learner.json").read_text())
    assert meta["score"]["kind"] == "ridge" and meta["score"]["intercept"] < -3
    assert all(c >= 0 for c in meta["score"]["coef"])


def test_stacked_oof_is_nested_over_the_same_folds(members, tmp_path):
    """Changing fold 0's labels changes every fold's predictions except fold 0's own."""
    tmp, base, a, b = members
    e1 = read_run(build_ensemble([a, b], tmp / "e1", n_boot=0))
    for run in (a, b):
        oof = pd.read_csv(run / "oof.csv")
        oof.loc[oof["fold"] == 0, "y_true"] += 30
        oof.to_csv(run / "oof.csv", index=False)
    e2 = read_run(build_ensemble([a, b], tmp / "e2", n_boot=0))
    f0 = e1.oof["fold"] == 0
    np.testing.assert_allclose(e1.oof.loc[f0, "y_pred"], e2.oof.loc[f0, "y_pred"])
    assert not np.allclose(e1.oof.loc[~f0, "y_pred"], e2.oof.loc[~f0, "y_pred"])


def test_meta_learner_json_deploys_the_final_fit(members):
    tmp, base, a, b = members
    d = build_ensemble([a, b], tmp / "e", n_boot=0)
    meta = json.loads((d / "meta_learner.json").read_text())
    X = np.column_stack([read_run(a).oof["y_pred"], read_run(b).oof["y_pred"]])
    score, probs = apply_meta(meta, X)
    expected = np.clip(X @ np.array(meta["score"]["coef"]) + meta["score"]["intercept"], 0, 140)
    np.testing.assert_allclose(score, expected)
    assert probs is None
    assert meta["members"] == ["a", "b"]


@pytest.mark.parametrize("where", ["config", "oof"])
def test_in_fold_predictions_are_refused(members, where):
    tmp, base, a, b = members
    if where == "config":
        cfg = yaml.safe_load((b / "config.yaml").read_text())
        cfg["prediction_kind"] = "in_fold"
        (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    else:
        oof = pd.read_csv(b / "oof.csv")
        oof["prediction_kind"] = "in_fold"
        oof.to_csv(b / "oof.csv", index=False)
    with pytest.raises(BadRunError, match="in-fold"):
        build_ensemble([a, b], tmp / "e", n_boot=0)


def test_members_with_other_folds_are_refused(members):
    tmp, base, a, b = members
    oof = pd.read_csv(b / "oof.csv")
    oof["fold"] = (oof["fold"] + 1) % 5  # patients still grouped, but other folds than member a
    oof.to_csv(b / "oof.csv", index=False)
    with pytest.raises(BadRunError, match="fold .* same --folds"):
        build_ensemble([a, b], tmp / "e", n_boot=0)


def test_patient_split_over_folds_is_refused(members):
    tmp, base, a, b = members
    for run in (a, b):
        oof = pd.read_csv(run / "oof.csv")
        i = oof.index[(oof["patient_id"] == "P000") & (oof["side"] == "R")][0]
        oof.loc[i, "fold"] = (oof.loc[i, "fold"] + 1) % 5
        oof.to_csv(run / "oof.csv", index=False)
    with pytest.raises(BadRunError, match="P000.*2 folds"):
        build_ensemble([a, b], tmp / "e", n_boot=0)


def test_members_must_share_images_truth_and_scale(members):
    tmp, base, a, b = members
    c = make_run(tmp / "c", base.iloc[:-2], seed=3)
    with pytest.raises(BadRunError, match="images differ"):
        build_ensemble([a, c], tmp / "e", n_boot=0)
    d = make_run(tmp / "d", base.assign(y_true=base["y_true"] + 1), seed=3)
    with pytest.raises(BadRunError, match="y_true of image"):
        build_ensemble([a, d], tmp / "e", n_boot=0)
    e = make_run(
        tmp / "f",
        base,
        seed=3,
        extra_config={"score_scope": "patient", "bins": SeverityBins.patient().to_dict()},
    )
    with pytest.raises(BadRunError, match="score scale differs"):
        build_ensemble([a, e], tmp / "e", n_boot=0)
    with pytest.raises(BadConfigError, match="at least two"):
        build_ensemble([a], tmp / "e", n_boot=0)
    with pytest.raises(BadConfigError, match="method"):
        build_ensemble([a, b], tmp / "e", method="median", n_boot=0)


def test_weighted_and_nnls(members):
    tmp, base, a, b = members
    w = json.loads(
        (
            build_ensemble([a, b], tmp / "w", method="weighted", n_boot=0) / "meta_learner.json"
        ).read_text()
    )
    assert w["score"]["coef"][0] > 0.8 and sum(w["score"]["coef"]) == pytest.approx(1.0)
    n = json.loads(
        (
            build_ensemble([a, b], tmp / "n", method="nnls", n_boot=0) / "meta_learner.json"
        ).read_text()
    )
    assert all(c >= 0 for c in n["score"]["coef"]) and n["score"]["intercept"] == 0
    assert _rmse(read_run(tmp / "w").oof) < _rmse(read_run(tmp / "a").oof) * 1.1


@pytest.mark.parametrize("class_meta", ["multinomial", "ordinal"])
def test_class_stacking(tmp_path, class_meta):
    base = cohort(80, seed=1)
    a = make_run(tmp_path / "a", base, task="classification", noise=6, seed=1)
    b = make_run(tmp_path / "b", base, task="ordinal", bias=15, noise=6, seed=2)
    e = read_run(build_ensemble([a, b], tmp_path / "e", class_meta=class_meta, n_boot=0))
    assert e.task == "classification" and e.is_ensemble
    p = e.oof[e.prob_columns].to_numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert e.metrics["qwk"] > e.metrics["members"]["b"]["qwk"]
    meta = json.loads((tmp_path / "e" / "meta_learner.json").read_text())
    assert meta["class"]["kind"] == class_meta
    P = np.stack([read_run(r).oof[e.prob_columns].to_numpy() for r in (a, b)], axis=1)
    X = np.column_stack([read_run(r).oof["y_pred"] for r in (a, b)])
    _, probs = apply_meta(meta, X, P)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_regression_and_ordinal_share_a_score_ensemble(tmp_path):
    base = cohort(60, seed=4)
    a = make_run(tmp_path / "a", base, noise=5, seed=1)
    b = make_run(tmp_path / "b", base, task="ordinal", noise=5, seed=2)
    e = read_run(build_ensemble([a, b], tmp_path / "e", n_boot=0))
    assert e.task == "regression" and e.prob_columns == []
    assert e.config["member_tasks"] == ["regression", "ordinal"]


def test_conformal_and_test_split(tmp_path):
    base = cohort(80, seed=5)
    test = cohort(15, seed=6).assign(fold=-1)
    a = make_run(tmp_path / "a", base, noise=6, seed=1, test=test)
    b = make_run(tmp_path / "b", base, bias=10, noise=6, seed=2, test=test)
    e = read_run(build_ensemble([a, b], tmp_path / "e", alpha=0.2, n_boot=0))
    conf = json.loads((tmp_path / "e" / "conformal.json").read_text())
    assert conf["level"] == pytest.approx(0.8) and conf["method"] == "mondrian" and conf["strata"]
    model = ConformalModel.from_dict(conf)
    lo, hi = model.interval(e.test["y_pred"])
    np.testing.assert_allclose(lo, e.test["interval_lo"])
    assert 0.65 <= e.metrics["interval"]["coverage"] <= 0.95
    assert e.metrics["test"]["n"] == 30 and "coverage" in e.metrics["test"]["interval"]
    assert e.oof["interval_lo"].le(e.oof["y_pred"]).all()


def test_cli_ensemble(members):
    from svdh.cli.main import app

    tmp, base, a, b = members
    res = CliRunner().invoke(
        app, ["ensemble", str(a), str(b), "--out", str(tmp / "e"), "--boot", "50"]
    )
    assert res.exit_code == 0, res.output
    assert "plain mean" in res.output and "coverage" in res.output
    for f in ("config.yaml", "oof.csv", "metrics.json", "meta_learner.json", "conformal.json"):
        assert (tmp / "e" / f).is_file()


def test_verdict_says_when_the_combination_does_not_help() -> None:
    from svdh.evaluate.ensemble import verdict

    members = {"resnet18": {"pcc": 0.8}, "mobilenet_v2": {"pcc": 0.3}}
    good = verdict("stacking", {"pcc": 0.85, "members": members, "baseline_mean": {"pcc": 0.7}})
    assert good is None
    bad = verdict("stacking", {"pcc": 0.6, "members": members, "baseline_mean": {"pcc": 0.7}})
    assert bad is not None and "\n" not in bad
    assert "best member resnet18 (0.800)" in bad and "plain mean of the members (0.700)" in bad
    assert "plain mean" not in (verdict("mean", {"pcc": 0.7, "members": members}) or "")


def test_ensemble_below_its_best_member_is_said_by_cli_and_report(tmp_path) -> None:
    """A mean of a good member and a noisy one is worse than the good one: svdh ensemble says
    so in one line, metrics.json keeps it, and the report shows it."""
    from svdh.cli.main import app

    base = cohort(80, seed=0)
    good = make_run(tmp_path / "good", base, noise=4, seed=1)
    junk = make_run(tmp_path / "junk", base, noise=60, seed=2, backbone="mobilenet_v2")
    res = CliRunner().invoke(
        app,
        ["ensemble", str(good), str(junk), "--out", str(tmp_path / "e"), "--method", "mean"],
    )
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "below its best member good" in notes[0]
    assert "below its best member" in read_run(tmp_path / "e").metrics["verdict"]
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "e"), "--out", str(out), "--boot", "0"])
    assert res.exit_code == 0, res.output
    assert "the combination does not help here" in out.read_text()


# --------------------------------------------------------------------------- reading runs


def test_read_run_errors_name_file_and_row(members):
    tmp, base, a, b = members
    with pytest.raises(BadRunError, match="no config.yaml"):
        read_run(tmp)
    oof = pd.read_csv(a / "oof.csv")
    oof.loc[5, "y_pred"] = np.nan
    oof.to_csv(a / "oof.csv", index=False)
    with pytest.raises(BadRunError, match=r"oof.csv: row 7 \(P00\dR?-?\w*\): y_pred"):
        read_run(a)
    oof.drop(columns=["y_pred"]).to_csv(a / "oof.csv", index=False)
    with pytest.raises(BadRunError, match="missing column.*y_pred"):
        read_run(a)
    c = make_run(tmp / "c", base, task="classification", seed=3)
    oof = pd.read_csv(c / "oof.csv").drop(columns=["p_6"])
    oof.to_csv(c / "oof.csv", index=False)
    with pytest.raises(BadRunError, match="p_0..p_6"):
        read_run(c)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["task"] = "segmentation"
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(BadRunError, match="task 'segmentation'"):
        read_run(b)


def test_single_fold_members_stack_over_patient_groups_of_their_validation_rows(tmp_path):
    """Members trained with --folds 1 have one validation fold: the meta-learner's nested CV
    then splits those rows by patient, so stacking still learns a biased member away and
    every row is predicted by a meta-learner that never saw its patient."""
    from svdh.evaluate.ensemble import META_FOLDS, align_members

    base = cohort(40, n_folds=1, seed=3)
    a = make_run(tmp_path / "a", base, noise=6, seed=1)
    b = make_run(tmp_path / "b", base, bias=20, noise=6, seed=2, backbone="mobilenet_v2")
    mem = align_members([read_run(a), read_run(b)])
    folds = mem.meta_folds
    assert len(np.unique(mem.folds)) == 1 and len(np.unique(folds)) == META_FOLDS
    assert (pd.Series(folds).groupby(mem.base["patient_id"].to_numpy()).nunique() == 1).all()
    stack = read_run(build_ensemble([a, b], tmp_path / "stack", n_boot=0))
    mean = read_run(build_ensemble([a, b], tmp_path / "mean", method="mean", n_boot=0))
    assert _rmse(stack.oof) < 0.6 * _rmse(mean.oof)
