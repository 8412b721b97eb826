"""svdh predict with visits: the per-patient change table beside the per-image rows, from DICOM
PatientID/StudyDate/ImageLaterality, or from a --patients CSV with a visit column."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

from predict_world import run_cli as svdh

pytestmark = pytest.mark.slow  # the shared world trains two small runs once per session


def _scores(out: Path) -> dict[tuple[str, str, str], float]:
    rows = pd.read_csv(out, dtype={"patient_id": str, "visit": str, "side": str})
    return {(r.patient_id, r.visit, r.side): float(r.score) for r in rows.itertuples()}


def test_change_table_for_a_dicom_set_with_study_dates(world, tmp_path: Path) -> None:
    from svdh.synth.visits import generate_visits

    dcm = tmp_path / "dcm"
    generate_visits(dcm, 3, visits=2, size=96, seed=4, fmt="dicom", progression_rate=20.0)
    truth = pd.read_csv(dcm / "visits.csv", dtype={"patient_id": str})
    # opaque file names: patient, visit and side can only come from the DICOM tags
    for i, name in enumerate(truth["image"]):
        (dcm / name).rename(dcm / f"img{i:03d}.dcm")
    out = tmp_path / "pred.csv"
    r = svdh("predict", "--model", world.run_bundle, dcm, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "3 changes between visits" in r.stderr
    scores = _scores(out)
    want = {
        (p, d, s) for p, d, s in zip(truth["patient_id"], truth["date"], truth["side"], strict=True)
    }
    assert set(scores) == want  # every film: its PatientID, StudyDate as a date, laterality
    ch = pd.read_csv(tmp_path / "pred_changes.csv", dtype={"patient_id": str})
    assert sorted(ch["patient_id"]) == sorted(truth["patient_id"].unique())
    for row in ch.itertuples():
        dates = sorted(truth.loc[truth["patient_id"] == row.patient_id, "date"].unique())
        assert (row.visit_from, row.visit_to) == tuple(dates)
        assert 351 / 365.25 <= row.years <= 379 / 365.25
        for side, col in (("L", row.change_L), ("R", row.change_R)):
            d = scores[(row.patient_id, dates[1], side)] - scores[(row.patient_id, dates[0], side)]
            assert col == pytest.approx(d, abs=0.01)
        assert row.change == pytest.approx(row.change_L + row.change_R, abs=0.02)
        assert row.progression == (row.change > 5.0)  # no change calibration: threshold 5
        assert pd.isna(row.change_lo)  # the world's bundle has no visit pairs to calibrate on
    # hands-and-wrists totals: one per patient and visit
    pt = list(csv.DictReader((tmp_path / "pred_patients.csv").open()))
    assert len(pt) == 6 and all(p["total"] != "" and p["visit"] for p in pt)


def test_change_table_from_a_patients_csv_with_visits(world, tmp_path: Path) -> None:
    from svdh.synth.visits import generate_visits

    png = tmp_path / "png"
    generate_visits(png, 2, visits=3, size=96, seed=6)
    truth = pd.read_csv(png / "visits.csv", dtype={"patient_id": str})
    words = {1: "baseline", 2: "y1", 3: "y2"}
    pmap = tmp_path / "patients.csv"
    pd.DataFrame(
        {
            "image": truth["image"],
            "patient_id": "P-" + truth["patient_id"],
            "side": truth["side"],
            "visit": truth["visit"].map(words),
        }
    ).to_csv(pmap, index=False)
    out = tmp_path / "pred.json"
    r = svdh("predict", "--model", world.run_bundle, png, "-o", out, "--patients", pmap)
    assert r.returncode == 0, r.stderr
    import json

    doc = json.loads(out.read_text())
    pairs = [(c["patient_id"], c["visit_from"], c["visit_to"]) for c in doc["changes"]]
    assert sorted(pairs) == [
        ("P-SYN00001", "baseline", "y1"),
        ("P-SYN00001", "y1", "y2"),
        ("P-SYN00002", "baseline", "y1"),
        ("P-SYN00002", "y1", "y2"),
    ]
    assert {i["visit"] for i in doc["images"]} == {"baseline", "y1", "y2"}
    # without the CSV the phantom's own names give patient and visit (<id>-V2-LH.png)
    r = svdh("predict", "--model", world.run_bundle, png, "-o", tmp_path / "b.csv")
    assert r.returncode == 0, r.stderr
    ch = pd.read_csv(tmp_path / "b_changes.csv", dtype={"visit_from": str, "visit_to": str})
    assert list(ch["visit_from"]) == ["1", "2", "1", "2"]
