"""Scoring new radiographs: reproduction of the runs' own predictions, the CLI, bad input,
streaming, patient totals, quality warnings, real radiographs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predict_world import run_cli as svdh
from svdh.core.errors import BadConfigError
from svdh.core.hands import PatientTotals
from svdh.core.io import Radiograph, read_radiograph
from svdh.core.scoring import SeverityBins
from svdh.evaluate.metrics import ConformalModel
from svdh.inference.inputs import expand_inputs, read_patients_csv
from svdh.inference.predictor import Predictor, quality_warnings

pytestmark = pytest.mark.slow  # the shared world trains two small runs once per session


def test_bundle_reproduces_each_fold_model_on_its_oof_rows(world):
    oof = pd.read_csv(world.reg_run / "oof.csv")
    for k in sorted(oof["fold"].unique()):
        rows = oof[oof["fold"] == k]
        pred = Predictor(world.run_bundle, folds=[int(k)], batch_size=5)
        res = list(pred.predict_paths(rows["image"]))
        assert [r["image"] for r in res] == list(rows["image"])
        score = np.array([r["score"] for r in res])
        assert (
            rows["y_pred"].std() > 0.01
        )  # the run's predictions vary: the comparison means something
        np.testing.assert_allclose(score, rows["y_pred"], atol=1e-3)
        np.testing.assert_allclose([r["erosion"] for r in res], rows["erosion_pred"], atol=1e-3)
        np.testing.assert_allclose([r["jsn"] for r in res], rows["jsn_pred"], atol=1e-3)
        np.testing.assert_allclose(
            np.array([r["erosion"] + r["jsn"] for r in res]), score, atol=1e-3
        )


def test_bundle_reproduces_fold_averaged_test_predictions(world):
    test = pd.read_csv(world.reg_run / "test.csv")
    res = list(Predictor(world.run_bundle, batch_size=4).predict_paths(test["image"]))
    np.testing.assert_allclose([r["score"] for r in res], test["y_pred"], atol=1e-3)
    assert [r["severity_class"] for r in res] == list(test["class_pred"])
    # the interval is the run's split-conformal interval, calibrated on its oof residuals
    oof = pd.read_csv(world.reg_run / "oof.csv")
    cm = ConformalModel.fit(oof["y_true"], oof["y_pred"], alpha=0.1, bins=SeverityBins.hand())
    lo, hi = cm.interval(test["y_pred"].to_numpy())
    np.testing.assert_allclose([r["interval"][0] for r in res], lo, atol=1e-3)
    np.testing.assert_allclose([r["interval"][1] for r in res], hi, atol=1e-3)
    assert all(r["interval"][0] <= r["score"] <= r["interval"][1] for r in res)
    assert all(
        r["member_spread"] >= 0 and r["probs"] is None for r in res
    )  # regression: no class head


def test_ensemble_bundle_reproduces_ensemble_test_predictions(world):
    test = pd.read_csv(world.ensemble / "test.csv")
    res = list(Predictor(world.ens_bundle, batch_size=8).predict_paths(test["image"]))
    assert test["y_pred"].std() > 0.01
    np.testing.assert_allclose([r["score"] for r in res], test["y_pred"], atol=1e-3)
    for name in ("reg", "ord"):
        np.testing.assert_allclose(
            [r["member_scores"][name] for r in res], test[f"member_{name}"], atol=1e-3
        )
    spread = np.array([r["member_spread"] for r in res])
    np.testing.assert_allclose(
        spread, np.abs(test["member_reg"] - test["member_ord"]) / 2, atol=1e-3
    )
    conf = json.loads((world.ensemble / "conformal.json").read_text())
    lo, hi = ConformalModel.from_dict(conf).interval(test["y_pred"].to_numpy())
    np.testing.assert_allclose([r["interval"][1] for r in res], hi, atol=1e-3)


def _folder_with_bad_files(world, tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    names = ["SYN00001-LH.png", "SYN00001-RH.png", "SYN00002-LH.png"]
    for n in names[:2]:
        shutil.copy(world.cohort / n, d / n)
    shutil.copy(world.cohort / names[2], d / "sub" / names[2])
    data = (world.cohort / "SYN00003-LH.png").read_bytes()
    (d / "sub" / "truncated.png").write_bytes(data[: len(data) // 3])  # a corrupt file in a folder
    (d / "notes.png").write_text("radiology report: not an image")  # a text file named .png
    (d / "labels.csv").write_text(
        "not,an,image\n"
    )  # not an image suffix: not picked up from folders
    return d


def test_cli_scores_a_folder_with_corrupt_files(world, tmp_path):
    d = _folder_with_bad_files(world, tmp_path)
    out = tmp_path / "pred.csv"
    r = svdh("predict", "--model", world.run_bundle, d, "-o", out, "--batch-size", "2")
    assert r.returncode == 1, r.stderr
    assert "scored 3 of 5 images (2 failed" in r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    bad = {Path(x["image"]).name: x for x in rows if x["error"]}
    assert set(bad) == {"truncated.png", "notes.png"}
    assert "not an image" in bad["notes.png"]["error"] and "\n" not in bad["notes.png"]["error"]
    assert (
        "truncated" in bad["truncated.png"]["error"] or "corrupt" in bad["truncated.png"]["error"]
    )
    good = [x for x in rows if not x["error"]]
    assert all(
        float(x["interval_lo"]) <= float(x["score"]) <= float(x["interval_hi"]) for x in good
    )
    assert all(x["erosion"] and x["jsn"] for x in good)
    # RA2-DREAM-style names give patient and side: SYN00001 has both hands, SYN00002 one
    patients = {p["patient_id"]: p for p in csv.DictReader((tmp_path / "pred_patients.csv").open())}
    s1 = [float(x["score"]) for x in good if x["patient_id"] == "SYN00001"]
    assert float(patients["SYN00001"]["total"]) == pytest.approx(sum(s1), abs=2e-3)
    assert (
        patients["SYN00002"]["total"] == ""
        and "one left and one right" in patients["SYN00002"]["note"]
    )


def test_cli_json_output_and_patient_map(world, tmp_path):
    imgs = [world.cohort / "SYN00004-LH.png", world.cohort / "SYN00005-RH.png"]
    pmap = tmp_path / "patients.csv"
    pmap.write_text(f"image,patient_id,side\n{imgs[0].name},PX,left\n{imgs[1].name},PX,R\n")
    out = tmp_path / "pred.json"
    r = svdh("predict", "--model", world.ens_bundle, *imgs, "-o", out, "--patients", pmap)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["summary"]["n_images"] == 2 and doc["summary"]["n_failed"] == 0
    assert doc["model"]["kind"] == "ensemble" and [m["name"] for m in doc["model"]["members"]] == [
        "reg",
        "ord",
    ]
    assert [i["patient_id"] for i in doc["images"]] == ["PX", "PX"]
    (p,) = doc["patients"]
    assert p["total"] == pytest.approx(sum(i["score"] for i in doc["images"]))
    assert p["interval"][0] <= p["total"] <= p["interval"][1]
    assert p["severity_label"] == SeverityBins.patient().labels[p["severity_class"]]


def test_cli_refuses_a_damaged_bundle_in_one_line(world, tmp_path):
    data = bytearray(world.run_bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "flipped.svdh"
    bad.write_bytes(bytes(data))
    r = svdh("predict", "--model", bad, world.cohort / "SYN00001-LH.png")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "checksum mismatch" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_predict_images_contract_and_error_items(world):
    pred = Predictor(world.run_bundle, batch_size=2)
    rads = [(n, read_radiograph(world.cohort / n)) for n in ("SYN00006-LH.png", "SYN00006-RH.png")]
    items = [rads[0], ("broken.dcm", ValueError("broken.dcm: cannot decode")), rads[1]]
    res = list(pred.predict_images(items, cam=True))
    assert [r["image"] for r in res] == ["SYN00006-LH.png", "broken.dcm", "SYN00006-RH.png"]
    assert res[1]["error"] and res[1]["score"] is None
    for r in (res[0], res[2]):
        keys = {
            "image",
            "score",
            "interval",
            "severity_class",
            "severity_label",
            "probs",
            "erosion",
            "jsn",
            "member_spread",
            "warnings",
            "error",
            "cam",
            "preprocessed",
        }
        assert keys <= set(r)
        assert r["cam"].shape == (64, 64) and np.isfinite(r["cam"]).all() and r["cam"].max() > 0
        assert r["preprocessed"].dtype == np.uint8


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_reads_ahead_only_a_few_batches(world, workers):
    """Memory stays flat: inputs are pulled lazily, at most a few batches ahead of the output."""
    pred = Predictor(world.run_bundle, batch_size=4, workers=workers)
    src = sorted(world.cohort.glob("*.png"))
    pulled = 0

    def paths():
        nonlocal pulled
        for _ in range(3):
            for p in src:
                pulled += 1
                yield p

    it = pred.predict_paths(paths())
    first = next(it)
    assert first["error"] is None
    assert pulled <= (
        3 * 4 + 1 if workers else 4
    )  # the batch scored plus the read-ahead (2 batches)
    n = 1 + sum(1 for _ in it)
    assert n == 3 * len(src) == pulled


def test_expand_inputs(world, tmp_path):
    d = tmp_path / "pacs"
    (d / "a" / "b").mkdir(parents=True)
    shutil.copy(world.cohort / "SYN00001-LH.png", d / "a" / "one.PNG")
    shutil.copy(world.cohort / "SYN00001-RH.png", d / "a" / "b" / "two.png")
    (d / "a" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)  # extension-less DICOM
    (d / "a" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    (d / "a" / "readme.txt").write_text("x")
    found = expand_inputs([d])
    assert sorted(p.name for p in found) == ["IM0001", "one.PNG", "two.png"]
    assert [p.name for p in expand_inputs([str(d / "a" / "*.PNG"), d / "a" / "one.PNG"])] == [
        "one.PNG"
    ]
    with pytest.raises(BadConfigError, match="no such file"):
        expand_inputs([tmp_path / "absent"])
    with pytest.raises(BadConfigError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.dcm")])


def test_patients_csv_errors(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("image,side\na.png,L\n")
    with pytest.raises(Exception, match="missing column"):
        read_patients_csv(p)
    p.write_text("image,patient_id,side\na.png,P1,up\n")
    with pytest.raises(Exception, match="row 2.*not L or R"):
        read_patients_csv(p)


def test_patient_totals_rules():
    t = PatientTotals(SeverityBins.hand())
    t.add(
        {
            "image": "a",
            "patient_id": "P",
            "side": "L",
            "score": 10.0,
            "interval": [5, 15],
            "erosion": 6,
            "jsn": 4,
        }
    )
    t.add(
        {
            "image": "b",
            "patient_id": "P",
            "side": "R",
            "score": 30.0,
            "interval": [20, 40],
            "erosion": 20,
            "jsn": 10,
        }
    )
    t.add(
        {
            "image": "c",
            "patient_id": "Q",
            "side": "L",
            "score": 3.0,
            "interval": [0, 8],
            "erosion": None,
            "jsn": None,
        }
    )
    t.add(
        {
            "image": "d",
            "patient_id": "Q",
            "side": "L",
            "score": 4.0,
            "interval": [0, 9],
            "erosion": None,
            "jsn": None,
        }
    )
    t.add({"image": "e", "patient_id": "R", "error": "bad file", "score": None})
    by = {p["patient_id"]: p for p in t.totals()}
    assert (
        by["P"]["total"] == 40
        and by["P"]["interval"] == [25, 55]
        and (by["P"]["erosion"], by["P"]["jsn"]) == (26, 14)
    )
    assert by["P"]["severity_label"] == "40-79"
    assert by["Q"]["total"] is None and "L, L" in by["Q"]["note"]
    assert "R" not in by


def test_quality_warnings_flag_unusual_images():
    from svdh.core.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig(size=64)
    rng = np.random.default_rng(0)
    flat = Radiograph(
        np.full((300, 300), 0.5, np.float32) + rng.normal(0, 0.002, (300, 300)).astype(np.float32)
    )
    assert any("no contrast" in w for w in quality_warnings(flat, preprocess(flat, cfg)))
    tiny = Radiograph(rng.uniform(0, 1, (40, 30)).astype(np.float32))
    assert any("low resolution" in w for w in quality_warnings(tiny, preprocess(tiny, cfg)))
    strip = Radiograph(rng.uniform(0, 1, (100, 600)).astype(np.float32))
    assert any("aspect ratio" in w for w in quality_warnings(strip, preprocess(strip, cfg)))
    # a bright object filling the frame: no background around it, as in an inverted film
    yy, xx = np.mgrid[0:400, 0:400]
    full = Radiograph((0.7 + 0.2 * np.sin(xx / 9.0) * np.sin(yy / 7.0)).astype(np.float32))
    full.pixels[:8] = 0.0
    assert any("bright region covers" in w for w in quality_warnings(full, preprocess(full, cfg)))


def test_quality_warnings_quiet_on_phantom_hands(world):
    from svdh.core.preprocess import PreprocessConfig, preprocess

    cfg = PreprocessConfig(size=64)
    for n in ("SYN00001-LH.png", "SYN00001-RH.png", "SYN00002-RH.png", "SYN00003-LH.png"):
        rad = read_radiograph(world.cohort / n)
        assert quality_warnings(rad, preprocess(rad, cfg)) == []


@pytest.mark.real_data
def test_every_real_radiograph_gets_a_score_and_an_overlay(
    world, ra2_dream_dir, rsna_sample_dir, tmp_path
):
    from PIL import Image

    hands = sorted(ra2_dream_dir.glob("*-?H.jpg")) + sorted(rsna_sample_dir.glob("*.png"))
    assert len(hands) == 26
    cam = tmp_path / "cam"
    out = tmp_path / "real.csv"
    r = svdh(
        "predict", "--model", world.run_bundle, *hands, "-o", out, "--cam", cam, "--batch-size", "8"
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 26 and not any(x["error"] for x in rows)
    for x in rows:
        assert np.isfinite(float(x["score"])) and 0 <= float(x["score"]) <= 140
        stem = Path(x["image"]).stem
        img = Image.open(cam / f"{stem}.cam.png")
        assert img.mode == "RGB" and min(img.size) >= 384  # upscaled so joints are visible
        maps = np.load(cam / f"{stem}.cam.npy")
        assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()  # ensemble + 1 member
        assert Path(x["cam"]) == cam / f"{stem}.cam.png"
    patients = {p["patient_id"]: p for p in csv.DictReader((tmp_path / "real_patients.csv").open())}
    assert {"UAB001", "UAB002", "UAB003"} <= set(patients)
    assert all(patients[p]["total"] != "" for p in ("UAB001", "UAB002", "UAB003"))


def test_dicom_patient_id_and_laterality_give_patient_totals(world, tmp_path):
    from svdh.synth import generate_cohort

    generate_cohort(tmp_path / "dcm", n=2, size=160, seed=5, severity="uniform", fmt="dicom")
    src = sorted((tmp_path / "dcm").glob("*.dcm"))
    assert len(src) == 4
    pacs = tmp_path / "pacs"
    pacs.mkdir()
    for i, f in enumerate(src):  # PACS-style names: nothing about patient or side in the name
        f.rename(pacs / f"IM{i:04d}")
    out = tmp_path / "pred.csv"
    r = svdh("predict", "--model", world.run_bundle, pacs, "-o", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and {x["side"] for x in rows} == {"L", "R"}
    patients = list(csv.DictReader((tmp_path / "pred_patients.csv").open()))
    assert len(patients) == 2
    for p in patients:
        mine = [float(x["score"]) for x in rows if x["patient_id"] == p["patient_id"]]
        assert len(mine) == 2 and float(p["total"]) == pytest.approx(sum(mine), abs=2e-3)


def test_every_prediction_names_the_model_and_its_version(world, tmp_path):
    """The field added to show that an output field is one declaration: CSV, JSON, terminal-free
    API and error rows all carry the bundle's name and version (its checksum's first 12 hex)."""
    from svdh.inference.bundle import load_bundle

    b = load_bundle(world.run_bundle)
    want = (b.card["name"], b.sha256[:12])
    img = world.cohort / "SYN00001-LH.png"
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    for out in (tmp_path / "p.csv", tmp_path / "p.json"):
        r = svdh("predict", "--model", world.run_bundle, img, bad, "-o", out)
        assert r.returncode == 1, r.stderr  # the text file fails; its row still names the model
        rows = (
            list(csv.DictReader(out.open()))
            if out.suffix == ".csv"
            else json.loads(out.read_text())["images"]
        )
        assert [(x["model"], x["model_version"]) for x in rows] == [want, want]
        assert [bool(x["error"]) for x in rows] == [False, True]
