"""Phantom radiographs (svdh synth): damage where it should be, labels that agree with the
pixels, landmarks on the hand, reproducible bytes, the file layouts the sources read."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svdh.core import scoring
from svdh.core.errors import BadConfigError
from svdh.synth import generate_cohort, load_landmarks, make_patient, render_hand
from svdh.synth.anatomy import JOINT_GAP, HandShape, build_hand, narrowed_gap
from svdh.synth.damage import allocate, draw_patient_total, parse_severity


def _dist_mm(img, point) -> np.ndarray:
    h, w = img.image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot(xx - point[0], yy - point[1]) / img.px_per_mm


@pytest.mark.parametrize(
    ("key", "score", "side", "size"),
    [
        ("ero_mcp3", 4, "L", 256),
        ("jsn_pip3", 3, "R", 256),
        ("ero_ulna", 5, "L", 256),
        ("jsn_capnlun", 4, "R", 256),
        ("ero_mcp2", 1, "L", 512),
    ],
)
def test_damage_changes_pixels_near_its_joint_only(
    key: str, score: int, side: str, size: int
) -> None:
    """The same hand rendered with and without damage at one joint differs around that
    joint's landmark and nowhere far from it (film, noise and anatomy are identical).
    A score-1 erosion is 1-2 mm across: a few pixels at 512 px, so it is checked there."""
    clean = render_hand(seed=4, index=2, side=side, size=size, severity="healthy", scores={})
    hurt = render_hand(
        seed=4, index=2, side=side, size=size, severity="healthy", scores={key: score}
    )
    lm = clean.landmarks[side][scoring.JOINTS_BY_KEY[key].landmark]
    assert hurt.landmarks == clean.landmarks
    diff = np.abs(hurt.image - clean.image)
    r = _dist_mm(clean, lm)
    near = diff[r < 8.0]
    assert (near > 2 / 255).sum() >= 10, f"{key}={score} is not visible near its landmark"
    assert diff[r > 60.0].max() == 0.0, (
        f"{key}={score} changed pixels more than 60 mm from its joint"
    )
    # most of the change is at the joint
    assert diff[r < 25.0].sum() > 0.9 * diff.sum()


def test_erosion_removes_bone_and_ankylosis_bridges_the_joint() -> None:
    """Erosions darken the joint's bone ends; JSN 4 fills the joint space with bone."""
    base = render_hand(seed=1, index=0, size=512, severity="healthy", scores={}, with_film=False)
    ero = render_hand(
        seed=1, index=0, size=512, severity="healthy", scores={"ero_mcp2": 5}, with_film=False
    )
    fused = render_hand(
        seed=1, index=0, size=512, severity="healthy", scores={"jsn_mcp2": 4}, with_film=False
    )
    r = _dist_mm(base, base.landmarks["L"]["mcp2"])
    ring = r < 7.0
    assert ero.image[ring].mean() < base.image[ring].mean() - 0.01
    x, y = (round(v) for v in base.landmarks["L"]["mcp2"])
    assert (
        fused.image[y - 1 : y + 2, x - 1 : x + 2].mean()
        > base.image[y - 1 : y + 2, x - 1 : x + 2].mean() + 0.05
    )


def test_landmarks_lie_on_the_hand() -> None:
    """Every landmark of every hand lies inside the image, on tissue (never on background)."""
    for index in range(4):
        for side in ("L", "R", "B"):
            img = render_hand(
                seed=7, index=index, side=side, size=128, severity="uniform", with_film=False
            )
            h, w = img.image.shape
            for sd, pts in img.landmarks.items():
                assert set(pts) == set(scoring.LANDMARKS)
                for name, (x, y) in pts.items():
                    assert 0 <= x < w and 0 <= y < h, (index, side, sd, name)
                    xi, yi = round(x), round(y)
                    # attenuation > 0 means soft tissue or bone: the background is exactly 0
                    assert img.image[yi, xi] > 0.05, (index, side, sd, name, img.image[yi, xi])


def test_dual_hand_film_has_right_hand_on_the_left() -> None:
    img = render_hand(seed=3, index=1, side="B", size=96)
    assert img.image.shape == (96, 192)
    assert img.sides == ("R", "L")
    xs_r = [p[0] for p in img.landmarks["R"].values()]
    xs_l = [p[0] for p in img.landmarks["L"].values()]
    assert max(xs_r) < 96 <= min(xs_l)
    # a left hand shows its thumb on its radial = right side, the right hand on its left
    assert img.landmarks["L"]["mcp1"][0] > img.landmarks["L"]["mcp5"][0]
    assert img.landmarks["R"]["mcp1"][0] < img.landmarks["R"]["mcp5"][0]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_ra_cohort_labels_agree_with_joint_columns_and_landmarks(tmp_path: Path) -> None:
    out = tmp_path / "ra"
    summary = generate_cohort(out, n=4, size=96, seed=11, severity="uniform")
    rows = _read_csv(out / "training.csv")
    assert [r["Patient_ID"] for r in rows] == ["SYN00001", "SYN00002", "SYN00003", "SYN00004"]
    header = list(rows[0])
    assert header[:4] == ["Patient_ID", "Overall_Tol", "Overall_erosion", "Overall_narrowing"]
    assert set(header[4:]) == {j.column(s) for j in scoring.JOINTS for s in "LR"}
    assert not any(c.startswith(("LF_", "RF_")) for c in header)
    doc = load_landmarks(out)
    for row in rows:
        left, right = scoring.hand_score(row, "L"), scoring.hand_score(row, "R")
        assert int(row["Overall_Tol"]) == left.total + right.total
        assert int(row["Overall_erosion"]) == left.erosion + right.erosion
        assert int(row["Overall_narrowing"]) == left.jsn + right.jsn
        for side, hs in (("L", left), ("R", right)):
            entry = doc["images"][f"{row['Patient_ID']}-{side}H.png"]
            hand = entry["hands"][side]
            assert (hand["erosion"], hand["jsn"], hand["total"]) == (hs.erosion, hs.jsn, hs.total)
            assert set(entry["landmarks"]) == set(scoring.LANDMARKS)
            for j in scoring.JOINTS:
                assert entry["landmarks"][j.landmark][j.kind] == int(row[j.column(side)])
            assert (entry["width"], entry["height"], entry["side"]) == (96, 96, side)
    assert summary.n_images == 8 and sorted(summary.totals) == sorted(
        float(r["Overall_Tol"]) for r in rows
    )


def test_ra2_dream_source_reads_a_phantom_cohort(tmp_path: Path) -> None:
    data = pytest.importorskip("svdh.data")
    generate_cohort(tmp_path / "c", n=3, size=64, seed=2, severity="cohort")
    df = data.load_source(f"ra2-dream:{tmp_path / 'c'}")
    assert len(df) == 6 and set(df["side"]) == {"L", "R"}
    rows = {r["Patient_ID"]: r for r in _read_csv(tmp_path / "c" / "training.csv")}
    for _, r in df.iterrows():
        assert r["svdh"] == r["erosion"] + r["jsn"]
        assert r["patient_svdh"] == float(rows[r["patient_id"]]["Overall_Tol"])
    generate_cohort(tmp_path / "bh", n=2, size=64, seed=2, dual_hand=True)
    assert sorted(p.name for p in (tmp_path / "bh").glob("*.png")) == [
        "SYN00001-BH.png",
        "SYN00002-BH.png",
    ]
    entry = load_landmarks(tmp_path / "bh")["images"]["SYN00001-BH.png"]
    assert (entry["width"], entry["height"], entry["side"]) == (128, 64, "both")
    assert set(entry["landmarks"]) == {f"{s}:{n}" for s in "LR" for n in scoring.LANDMARKS}
    assert set(entry["hands"]) == {"L", "R"}
    dfb = data.load_source(f"ra2-dream:{tmp_path / 'bh'}")
    assert list(dfb["side"]) == ["both", "both"]
    assert list(dfb["svdh"]) == list(dfb["patient_svdh"])


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", n=3, size=64, seed=5, workers=1)
    generate_cohort(tmp_path / "b", n=3, size=64, seed=5, workers=2)
    ha, hb = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert ha.keys() == hb.keys() and len(ha) == 8
    # the generator settings are recorded, the folder names are not
    assert ha == hb
    # rerunning into the same folder rewrites the same bytes
    generate_cohort(a.out_dir, n=3, size=64, seed=5)
    assert _hashes(tmp_path / "a") == ha
    # another seed gives other images
    generate_cohort(tmp_path / "c", n=3, size=64, seed=6)
    assert _hashes(tmp_path / "c")["SYN00001-LH.png"] != ha["SYN00001-LH.png"]
    # patient i does not depend on the cohort size
    generate_cohort(tmp_path / "d", n=1, size=64, seed=5)
    assert _hashes(tmp_path / "d")["SYN00001-RH.png"] == ha["SYN00001-RH.png"]


def test_dicom_output_reads_back_like_the_png(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    io = pytest.importorskip("svdh.core.io")
    generate_cohort(tmp_path / "png", n=1, size=96, seed=3, bits=16)
    generate_cohort(tmp_path / "dcm", n=1, size=96, seed=3, fmt="dicom", bits=16)
    generate_cohort(tmp_path / "m1", n=1, size=96, seed=3, fmt="dicom", bits=8, monochrome1=True)
    ds = pydicom.dcmread(tmp_path / "dcm" / "SYN00001-LH.dcm")
    assert ds.PatientID == "SYN00001" and ds.Modality == "CR" and ds.Laterality == "L"
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 12
    assert len(ds.StudyDate) == 8 and float(ds.RescaleSlope) == 1.0 and float(ds.WindowWidth) > 0
    doc = load_landmarks(tmp_path / "dcm")
    assert float(ds.PixelSpacing[0]) == pytest.approx(
        doc["images"]["SYN00001-LH.dcm"]["mm_per_pixel"], rel=1e-3
    )
    ref = io.read_radiograph(tmp_path / "png" / "SYN00001-LH.png").pixels
    for path in (tmp_path / "dcm" / "SYN00001-LH.dcm", tmp_path / "m1" / "SYN00001-LH.dcm"):
        got = io.read_radiograph(path)
        assert got.pixels.shape == ref.shape
        assert np.abs(got.pixels - ref).max() < 2.5 / 255, path
    assert (
        io.read_radiograph(tmp_path / "m1" / "SYN00001-LH.dcm").meta["photometric"] == "MONOCHROME1"
    )


def test_child_cohort_rsna_layout(tmp_path: Path) -> None:
    out = tmp_path / "kids"
    generate_cohort(out, n=5, size=64, seed=1, mode="child")
    rows = _read_csv(out / "boneage.csv")
    assert list(rows[0]) == ["id", "boneage", "male"]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert all(0 <= int(r["boneage"]) <= 228 and r["male"] in ("True", "False") for r in rows)
    assert all((out / f"{r['id']}.png").is_file() for r in rows)
    doc = load_landmarks(out)
    assert doc["images"]["1.png"]["boneage"] == int(rows[0]["boneage"])
    data = pytest.importorskip("svdh.data")
    df = data.load_source(f"rsna-boneage:{out}")
    assert sorted(df["boneage"].tolist()) == sorted(float(r["boneage"]) for r in rows)


def test_bones_ossify_in_order_and_fuse() -> None:
    shape = HandShape(scale=0.6)

    def carpals(m: float) -> set[str]:
        names = {
            "capitate",
            "hamate",
            "triquetrum",
            "lunate",
            "trapezium",
            "trapezoid",
            "scaphoid",
            "pisiform",
        }
        return names & set(build_hand(shape, maturity=m).bones)

    assert carpals(0.1) == set()
    assert carpals(1.0) == {"capitate", "hamate"}
    assert carpals(3.0) == {"capitate", "hamate", "triquetrum"}
    assert len(carpals(7.0)) == 7 and len(carpals(12.0)) == 8
    young, older, adult = (build_hand(shape, maturity=m).bones for m in (4.0, 12.0, 19.0))
    assert "pp3_epi" in young and "radius_epi" in young and "ulna_epi" not in young
    assert young["pp3_epi"].wb < older["pp3_epi"].wb
    assert not any(name.endswith("_epi") for name in adult)
    # girls mature earlier: the same bone age is a more mature skeleton
    girl, boy = make_patient(0, 0, "child"), make_patient(0, 0, "child")
    girl.male, boy.male = False, True
    assert girl.maturity > boy.maturity


def test_severity_models() -> None:
    rng = np.random.default_rng(0)
    cohort = np.array([draw_patient_total(rng, "cohort") for _ in range(2000)])
    assert 0.2 < (cohort == 0).mean() < 0.45  # many patients without damage
    assert np.median(cohort) < 20 and (cohort > 100).mean() > 0.01  # a long tail past 100
    uniform = np.array([draw_patient_total(rng, "uniform") for _ in range(2000)])
    assert abs(np.median(uniform) - 140) < 15 and uniform.max() > 260
    assert all(draw_patient_total(rng, "healthy") == 0 for _ in range(5))
    from svdh.core.scoring import SeverityBins

    balanced = np.bincount(
        SeverityBins.patient().to_class([draw_patient_total(rng, "balanced") for _ in range(1400)])
    )
    assert len(balanced) == 7 and balanced.min() > 140  # ~200 per class
    assert draw_patient_total(rng, "fixed:37") == 37
    for total in (0, 1, 50, 280):
        s = allocate(rng, total)
        assert sum(s["L"].values()) + sum(s["R"].values()) == total
        assert all(
            0 <= v <= scoring.JOINTS_BY_KEY[k].max_score for h in s.values() for k, v in h.items()
        )
    with pytest.raises(BadConfigError):
        parse_severity("fixed:300")
    with pytest.raises(BadConfigError):
        parse_severity("mild")


def test_physical_scale_of_joint_spaces() -> None:
    assert 1.5 <= JOINT_GAP["mcp"] <= 2.0
    widths = [narrowed_gap(JOINT_GAP["mcp"], g) for g in range(5)]
    assert widths[0] > widths[1] > widths[2] > widths[3] > widths[4] == 0.0
    assert 0.2 <= widths[0] - widths[1] <= 0.5  # grade 1 takes a few tenths of a millimetre
    img = render_hand(seed=0, index=0, size=300)
    assert 300 / 240 - 1e-9 <= img.px_per_mm <= 300 / 200 + 1e-9


def _svdh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from svdh.cli.main import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_synth_writes_cohort_and_sheet(tmp_path: Path) -> None:
    out, sheet = tmp_path / "c", tmp_path / "sheet.png"
    res = _svdh(
        "synth", "--out", str(out), "--n", "2", "--size", "64", "--seed", "3", "--sheet", str(sheet)
    )
    assert res.returncode == 0, res.stderr
    assert "ra2-dream:" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "SYN00001-LH.png",
        "SYN00001-RH.png",
        "SYN00002-LH.png",
        "SYN00002-RH.png",
        "landmarks.json",
        "training.csv",
    ]
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.width >= 4 * 64 and im.height > 64
    assert json.loads((out / "landmarks.json").read_text())["generator"]["seed"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "adult"], "--mode"),
        (["--bits", "12"], "--bits must be 8 or 16"),
        (["--n", "0"], "--n must be"),
        (["--severity", "mild"], "unknown severity"),
        (["--mode", "child", "--dual-hand"], "--dual-hand applies to RA"),
        (["--monochrome1"], "--monochrome1 applies to --format dicom"),
    ],
)
def test_cli_synth_bad_options_give_one_line_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    res = _svdh("synth", "--out", str(tmp_path / "x"), "--size", "64", "--n", "1", *args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BadConfigError, match="not empty"):
        generate_cohort(tmp_path, n=1, size=64)
