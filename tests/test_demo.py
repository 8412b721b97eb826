"""`svdh demo --quick` end to end, as a new user runs it, then the command it suggests."""

import json
import os
import shlex
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _svdh(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-c", "from svdh.cli.main import main; main()", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )


def test_demo_quick_end_to_end_then_predict(tmp_path):
    out = tmp_path / "demo"
    r = _svdh("demo", "--quick", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # every stage left its files
    for rel in (
        "data/train/training.csv",
        "data/pretrain/boneage.csv",
        "data/explain/landmarks.json",
        "pretrain/resnet18/metrics.json",
        "members/resnet18-regression/oof.csv",
        "members/mobilenet-regression/oof.csv",
        "ensemble/oof.csv",
        "ensemble/test.csv",
        "ensemble/meta_learner.json",
        "ensemble/conformal.json",
        "ensemble/localisation.json",
        "model.svdh",
        "report.html",
    ):
        assert (out / rel).is_file(), rel

    # the ensemble is honest: its out-of-fold rows are the members' validation hands (one
    # fold), each once, and neither they nor the held-out test patients were trained on
    oof = pd.read_csv(out / "ensemble" / "oof.csv", dtype={"patient_id": str})
    test = pd.read_csv(out / "ensemble" / "test.csv", dtype={"patient_id": str})
    folds = pd.read_csv(out / "members" / "resnet18-regression" / "folds.csv", dtype=str)
    trained = set(folds.loc[folds["fold"].astype(int) >= 0, "patient_id"])
    assert oof["image_id"].is_unique and len(test) == 120  # 60 of the 300 patients held out
    assert set(oof["patient_id"]).isdisjoint(test["patient_id"])
    assert trained.isdisjoint(test["patient_id"]) and len(oof) > 40
    loc = json.loads((out / "ensemble" / "localisation.json").read_text())
    assert loc["n_images"] > 0 and 0 <= loc["pointing_game"] <= 1

    html = (out / "report.html").read_text()
    assert "not a clinical validation" in html
    assert "<script src=" not in html  # self-contained

    # it prints the predict command to try next; run it as printed
    line = next(ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("svdh predict"))
    args = shlex.split(line)[1:]
    p = _svdh(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == 12 and scores["score"].between(0, 140).all()
    assert any((tmp_path / "cams").rglob("*.png"))

    # re-running skips every finished step
    again = _svdh("demo", "--quick", "--out", out, cwd=tmp_path)
    assert again.returncode == 0
    assert "[run ]" not in again.stdout and again.stdout.count("[skip]") >= 8
