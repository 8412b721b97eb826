"""A bundle written before the redesign (tests/fixtures/old_bundle, made by svdh at 370ff4b)
still loads and gives the numbers that code gave."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from svdh.inference.bundle import load_bundle, read_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "old_bundle"
IMAGES = ("SYN00002-LH.png", "SYN00002-RH.png", "SYN00003-LH.png")


@pytest.fixture
def old_bundle(tmp_path) -> Path:
    out = tmp_path / "model.svdh"
    with gzip.open(FIXTURE / "model.svdh.gz", "rb") as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def test_old_bundle_loads_with_its_stored_image_size(old_bundle):
    manifest = read_manifest(old_bundle)
    assert (
        manifest["image_size"] == 64 and manifest["preprocess"]["size"] == 64
    )  # the old duplicate
    b = load_bundle(old_bundle)
    assert b.image_size == 64 and b.preprocess["size"] == 64
    assert b.sha256 == json.loads((FIXTURE / "expected.json").read_text())["model"]["sha256"]
    (models,) = b.build_models()
    assert len(models) == 1 and models[0].config["backbone"] == "mobilenet_v2_050"


EROSION_MAX, JSN_MAX = 80.0, 60.0  # per hand (svdh.core.scoring)


def test_old_bundle_predicts_what_the_old_code_predicted(old_bundle, tmp_path):
    from predict_world import run_cli

    for name in IMAGES:
        shutil.copy(FIXTURE / name, tmp_path / name)
    out = tmp_path / "pred.json"
    res = run_cli(
        "predict", *(tmp_path / n for n in IMAGES), "-m", old_bundle, "-o", out, "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(out.read_text())
    want = json.loads((FIXTURE / "expected.json").read_text())
    by_name = {Path(r["image"]).name: r for r in got["images"]}
    scores, exact = [], 0
    for w in want["images"]:
        g = by_name[w["image"]]
        if w["erosion"] <= EROSION_MAX and w["jsn"] <= JSN_MAX:
            # within the sub-score maxima: every number exactly as the old code gave it
            for key in ("score", "erosion", "jsn"):
                assert g[key] == pytest.approx(w[key], abs=1e-3), (w["image"], key)
            assert g["interval"] == pytest.approx(w["interval"], abs=1e-3)
            assert g["severity_class"] == w["severity_class"]
            exact += 1
        else:
            # the old decode let a sub-score pass its maximum (issue 12): now each head is
            # capped by its own maximum and the total is their sum; the same raw outputs
            assert g["erosion"] == pytest.approx(min(w["erosion"], EROSION_MAX), abs=1e-3)
            assert g["jsn"] == pytest.approx(min(w["jsn"], JSN_MAX), abs=1e-3)
            assert g["score"] == pytest.approx(g["erosion"] + g["jsn"], abs=1e-3)
        scores.append(g["score"])
    assert exact >= 1
    assert max(scores) - min(scores) > 10  # the images get different scores: a real check
    totals = {p["patient_id"]: p for p in got["patients"]}
    (pair,) = [p for p in want["patients"] if p["total"] is not None]
    hands = [
        by_name[w["image"]]["score"] for w in want["images"] if pair["patient_id"] in w["image"]
    ]
    assert len(hands) == 2
    assert totals[pair["patient_id"]]["total"] == pytest.approx(sum(hands), abs=1e-3)
