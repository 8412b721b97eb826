"""Phantom patients at successive visits (svdh synth --visits), visit labels in the manifest,
and folds that keep a patient's visits together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predict_world import run_cli
from svdh.core.errors import BadConfigError, BadDatasetError
from svdh.core.visits import normalize_visit, order_visits, years_between
from svdh.data import load_source
from svdh.data.splits import assign_folds
from svdh.synth import make_patient
from svdh.synth.visits import VisitOptions, generate_visits, patient_course


@pytest.fixture(scope="module")
def visit_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("visits") / "cohort"
    generate_visits(out, 8, visits=3, repeat=True, size=64, seed=5, progression_rate=10.0)
    return out


def test_damage_never_heals_and_rates_differ() -> None:
    """Over 200 patients and 5 visits: no joint's score ever drops; some patients are stable,
    the others progress at rates of their own; dates are about a year apart."""
    opts = VisitOptions(visits=5, progression_rate=6.0)
    rates, stable = [], 0
    for i in range(200):
        p = make_patient(3, i, "ra", "cohort")
        visits, course = patient_course(p, opts)
        assert [v.number for v in visits] == [1, 2, 3, 4, 5]
        for a, b in zip(visits[:-1], visits[1:], strict=True):
            for side in ("L", "R"):
                before, after = a.disease.scores[side], b.disease.scores[side]
                assert all(after[k] >= before[k] for k in before), f"patient {i} healed"
            assert b.disease.total >= a.disease.total
            assert 351 <= (b.date - a.date).days <= 379
        assert visits[0].disease is p.disease  # visit 1 is the cohort's patient
        change = visits[-1].disease.total - visits[0].disease.total
        if course["stable"]:
            stable += 1
            assert change == 0
        else:
            rates.append(course["rate"])
    assert 0.2 < stable / 200 < 0.5
    assert np.std(rates) > 1.0 and 4.0 < np.mean(rates) < 8.0


def test_visit_cohort_layouts_agree_and_films_differ(visit_cohort: Path) -> None:
    """RA2-DREAM-style and csv layouts give the same manifest; every film is a new film."""
    a = load_source(f"ra2-dream:{visit_cohort}")
    b = load_source(f"csv:{visit_cohort / 'visits.csv'}")
    assert len(a) == len(b) == 8 * 3 * 2 * 2  # patients x visits x films x hands
    m = a.merge(b, on="image_id", suffixes=("_a", "_b"))
    for c in ("patient_id", "side", "visit", "svdh", "erosion", "jsn", "patient_svdh"):
        assert (m[f"{c}_a"] == m[f"{c}_b"]).all(), c
    assert set(a["visit"]) == {"1", "2", "3"}
    per = a.groupby(["patient_id", "side", "visit"])["svdh"].agg(["min", "max", "count"])
    assert (per["count"] == 2).all() and (per["min"] == per["max"]).all()  # repeat: same scores
    doc = json.loads((visit_cohort / "landmarks.json").read_text())
    assert len(doc["images"]) == len(a)
    e1, e2 = doc["images"]["SYN00001-V1-LH.png"], doc["images"]["SYN00001-V1-F2-LH.png"]
    assert (e1["visit"], e1["film"], e2["film"]) == (1, 1, 2)
    assert e1["landmarks"]["mcp2"] != e2["landmarks"]["mcp2"]  # repositioned
    from PIL import Image

    f1 = np.asarray(Image.open(visit_cohort / "SYN00001-V1-LH.png"), float)
    f2 = np.asarray(Image.open(visit_cohort / "SYN00001-V1-F2-LH.png"), float)
    assert np.abs(f1 - f2).mean() > 2.0


def test_first_film_is_the_cohorts_image(tmp_path: Path, visit_cohort: Path) -> None:
    from svdh.synth import generate_cohort

    generate_cohort(tmp_path / "plain", n=2, size=64, seed=5)
    assert (tmp_path / "plain" / "SYN00002-LH.png").read_bytes() == (
        visit_cohort / "SYN00002-V1-LH.png"
    ).read_bytes()


def test_folds_keep_all_visits_of_a_patient_together(visit_cohort: Path) -> None:
    man = load_source(f"csv:{visit_cohort / 'visits.csv'}")
    rng = np.random.default_rng(0)
    rows = [  # and a bigger synthetic cohort: 120 patients, 1-4 visits, 2 hands
        {"patient_id": f"P{i}", "side": s, "visit": str(v), "svdh": float(rng.integers(0, 40))}
        for i in range(120)
        for v in range(1, int(rng.integers(1, 5)) + 1)
        for s in "LR"
    ]
    for df, folds, test in ((man, 2, 0.0), (pd.DataFrame(rows), 5, 0.2)):
        out = assign_folds(df, n_folds=folds, seed=1, test_fraction=test)
        assert out.groupby("patient_id")["fold"].nunique().max() == 1
        assert out["fold"].nunique() == folds + (1 if test else 0)


def test_visit_labels() -> None:
    assert normalize_visit("V02") == "2" and normalize_visit(3.0) == "3"
    assert normalize_visit("20160301") == "2016-03-01" == normalize_visit("01.03.2016")
    assert normalize_visit("") == "" and normalize_visit("baseline") == "baseline"
    assert order_visits(["y2", "baseline", "y1"]) == ["baseline", "y1", "y2"]
    assert order_visits(["10", "2", "1"]) == ["1", "2", "10"]
    assert years_between("2016-03-01", "2017-03-01") == pytest.approx(1.0, abs=0.01)
    with pytest.raises(BadDatasetError, match="mix dates"):
        order_visits(["2016-03-01", "2"], where="patient X")
    with pytest.raises(ValueError, match="not a visit number"):
        normalize_visit("a, b")


def test_ra2_dream_visits_problems_name_the_row(visit_cohort: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(visit_cohort, bad)
    (bad / "SYN00003-V2-RH.png").unlink()
    lines = (bad / "training.csv").read_text().splitlines()
    lines.append(lines[1])  # a duplicate visit row
    (bad / "training.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadDatasetError) as err:
        load_source(f"ra2-dream:{bad}")
    msg = str(err.value)
    assert "SYN00003-V2-RH.png" in msg and "duplicate visit 1" in msg
    assert "\n" not in msg
    df = load_source(f"ra2-dream:{bad}", skip_invalid=True)
    assert len(df) == 8 * 3 * 2 * 2 - 1


def test_cli_synth_visits(tmp_path: Path) -> None:
    r = run_cli(
        "synth", "--out", tmp_path / "v", "--n", "3", "--size", "48", "--visits", "2",
        "--progression-rate", "20",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "12 films of 3 patients at 2 visit(s)" in r.stdout
    df = pd.read_csv(tmp_path / "v" / "visits.csv", dtype={"visit": str})
    assert list(df["visit"].unique()) == ["1", "2"] and df["date"].notna().all()
    r = run_cli("synth", "--out", tmp_path / "w", "--visits", "2", "--mode", "child")
    assert r.returncode != 0 and "RA mode only" in r.stderr
    with pytest.raises(BadConfigError, match="--visits"):
        VisitOptions(visits=0).validate()
