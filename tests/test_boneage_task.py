"""Bone age as a task a user carries through: pretrain, export, predict, evaluate, report.

One tiny bone-age run (MobileNetV2-0.5 at 64 px, one epoch) on phantom children drawn by
``svdh synth --mode child`` backs every test; the figures are not the point, the units are:
every command must speak months (MAE, RMSE, bias by age band), never SvdH severity classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from predict_world import run_cli

SEVERITY_WORDS = ("class accuracy", "severity", "quadratic", "QWK", "SvdH score")


def _ok(r) -> str:
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def ba(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("boneage")
    kids, dcm, run = root / "kids", root / "dicom", root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SVDH_CACHE_DIR", str(root / "cache"))
        _ok(run_cli("synth", "--mode", "child", "--n", "16", "--size", "96", "--out", kids))
        _ok(
            run_cli(
                "synth", "--mode", "child", "--n", "2", "--size", "96", "--seed", "5",
                "--format", "dicom", "--out", dcm,
            )
        )  # fmt: skip
        _ok(
            run_cli(
                "pretrain", f"rsna-boneage:{kids}", "--out", run, "--image-size", "64",
                "--epochs", "1", "--folds", "2", "--test-fraction", "0.25",
                "--backbone", "mobilenet_v2_050", "--batch-size", "8", "--num-workers", "0",
                "--accelerator", "cpu", "--patience", "0",
            )
        )  # fmt: skip
    bundle = root / "boneage.svdh"
    _ok(run_cli("export", run, "--out", bundle))
    return {"root": root, "kids": kids, "dicom": dcm, "run": run, "bundle": bundle}


def test_export_makes_a_bone_age_bundle(ba) -> None:
    assert ba["bundle"].is_file() and ba["bundle"].stat().st_size > 100_000
    out = _ok(run_cli("predict", "--model", ba["bundle"], ba["kids"] / "1.png", "--sex", "F"))
    assert "months" in out
    assert not any(w.lower() in out.lower() for w in SEVERITY_WORDS), out


def test_predict_answers_in_months_with_sex_from_option_csv_and_dicom(ba) -> None:
    root = ba["root"]
    labels = pd.read_csv(ba["kids"] / "boneage.csv")
    images = [ba["kids"] / f"{i}.png" for i in labels["id"][:4]]
    # --sex for every image
    _ok(run_cli("predict", "--model", ba["bundle"], *images, "--sex", "M", "--out", root / "m.csv"))
    m = pd.read_csv(root / "m.csv", keep_default_na=False)
    assert {"bone_age_months", "interval_lo", "interval_hi", "sex", "sex_from"} <= set(m.columns)
    assert not {"severity_class", "severity_label", "score", "erosion", "jsn"} & set(m.columns)
    assert (m["sex"] == "M").all() and (m["sex_from"] == "--sex").all()
    assert m["bone_age_months"].between(0, 240).all()
    assert (m["interval_lo"] <= m["bone_age_months"]).all()
    assert (m["bone_age_months"] <= m["interval_hi"]).all()
    # a patients CSV with a sex column (the RSNA 'male' convention is read too)
    pcsv = root / "patients.csv"
    pd.DataFrame(
        {
            "image": [p.name for p in images],
            "patient_id": [f"K{i}" for i in range(4)],
            "male": [True, False, True, False],
        }
    ).to_csv(pcsv, index=False)
    _ok(
        run_cli(
            "predict", "--model", ba["bundle"], *images, "--patients", pcsv, "--out", root / "c.csv"
        )
    )
    c = pd.read_csv(root / "c.csv", keep_default_na=False)
    assert list(c["sex"]) == ["M", "F", "M", "F"] and set(c["sex_from"]) == {"patients CSV"}
    # sex changes the answer of a model that takes it as an input
    assert (c["bone_age_months"].to_numpy() != m["bone_age_months"].to_numpy()).any()
    # DICOM PatientSex, and JSON output in months
    _ok(run_cli("predict", "--model", ba["bundle"], ba["dicom"], "--out", root / "d.json"))
    d = json.loads((root / "d.json").read_text())
    rows = d["images"]
    assert d["model"]["unit"] == "months" and d["patients"] == []
    assert len(rows) == 2
    truth = pd.read_csv(ba["dicom"] / "boneage.csv")
    assert sorted(r["sex"] for r in rows) == sorted("M" if v else "F" for v in truth["male"])
    assert all(r["sex_from"] == "DICOM PatientSex" and r["bone_age_months"] >= 0 for r in rows)


def test_predict_without_sex_says_so(ba) -> None:
    out = ba["root"] / "nosex.csv"
    _ok(run_cli("predict", "--model", ba["bundle"], ba["kids"] / "2.png", "--out", out))
    row = pd.read_csv(out, keep_default_na=False).iloc[0]
    assert row["sex"] == "" and "sex unknown" in row["warnings"]


def test_predict_grad_cam_of_a_bone_age_bundle(ba) -> None:
    cams = ba["root"] / "cams"
    out = ba["root"] / "cam.csv"
    _ok(
        run_cli(
            "predict", "--model", ba["bundle"], ba["kids"] / "3.png", "--sex", "F",
            "--cam", cams, "--out", out,
        )
    )  # fmt: skip
    assert list(cams.rglob("*.png")) and list(cams.rglob("*.npy"))
    assert pd.read_csv(out, keep_default_na=False)["cam"].iloc[0]


def test_evaluate_speaks_months_for_a_run_and_for_its_csv(ba) -> None:
    for target in (ba["run"], ba["run"] / "oof.csv"):
        out = _ok(run_cli("evaluate", target, "--boot", "50"))
        assert "MAE (months)" in out and "bias" in out and "3-year bands" in out
        assert not any(w.lower() in out.lower() for w in SEVERITY_WORDS), out
    j = json.loads(_ok(run_cli("evaluate", ba["run"], "--format", "json", "--boot", "0")))
    b = j["boneage"]
    assert b["unit"] == "months" and b["n"] == j["n"] and b["by_band"]
    assert sum(r["n"] for r in b["by_band"]) == b["n"]
    assert "accuracy" not in j and "qwk" not in j
    assert j["test"]["boneage"]["n"] == len(pd.read_csv(ba["run"] / "test.csv"))
    # a bare CSV without the sex column can be named a bone-age table
    bare = ba["root"] / "bare.csv"
    pd.read_csv(ba["run"] / "oof.csv")[["y_true", "y_pred"]].to_csv(bare, index=False)
    out = _ok(run_cli("evaluate", bare, "--task", "boneage", "--boot", "0"))
    assert "MAE (months)" in out and "class accuracy" not in out


def test_report_of_a_bone_age_run_speaks_months(ba) -> None:
    html_path = ba["root"] / "report.html"
    _ok(run_cli("report", ba["run"], "--out", html_path, "--boot", "50"))
    html = html_path.read_text()
    assert "MAE (months)" in html and "True bone age" in html and "Error by true bone age" in html
    assert "Class accuracy" not in html and "Quadratic-weighted kappa" not in html


def test_bone_age_figures_by_band() -> None:
    from svdh.evaluate.boneage import boneage_figures

    t = [10, 20, 40, 50, 200, 210]
    p = [40, 50, 40, 50, 180, 190]  # +30 in 0-3 y, 0 in 3-6 y, -20 in 15-18 y
    f = boneage_figures(t, p, male=["True", "False", "M", "F", "1", "0"])
    assert f["mae"] == pytest.approx(100 / 6) and f["bias"] == pytest.approx(20 / 6)
    bands = {b["band"]: b for b in f["by_band"]}
    assert set(bands) == {"0-3 y", "3-6 y", "15-18 y"}
    assert bands["0-3 y"]["bias"] == 30 and bands["3-6 y"]["bias"] == 0
    assert bands["15-18 y"]["bias"] == -20
    assert f["bands_over_limit"] == ["0-3 y", "15-18 y"] and f["max_band_bias"] == 30
    assert f["by_sex"]["male"]["n"] == 3 and f["by_sex"]["female"]["n"] == 3


def test_sex_is_read_from_every_spelling_and_the_precedence_holds() -> None:
    from svdh.core.errors import BadConfigError
    from svdh.inference.sex import norm_sex, resolve_sex, sex_code

    assert [norm_sex(v) for v in ("M", "female", "True", "0", 1, "", "O", None)] == [
        "M", "F", "M", "F", "M", None, None, None,
    ]  # fmt: skip
    with pytest.raises(BadConfigError, match="row 3"):
        norm_sex("unsure", "patients.csv: row 3")
    assert resolve_sex("F", "M", "M") == ("F", "--sex")
    assert resolve_sex(None, "M", "F") == ("M", "patients CSV")
    assert resolve_sex(None, None, "F") == ("F", "DICOM PatientSex")
    assert resolve_sex(None, None, "O") == (None, None)
    assert [sex_code(s) for s in ("M", "F", None)] == [1.0, -1.0, 0.0]


def test_l1_is_offered_for_bone_age_and_huber_stays_the_default() -> None:
    from torch import nn

    from svdh.models.losses import make_loss

    assert isinstance(make_loss("boneage", "l1"), nn.L1Loss)
    assert isinstance(make_loss("boneage"), nn.HuberLoss)  # measured better (benchmarks.md)
