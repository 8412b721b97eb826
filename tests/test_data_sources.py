"""svdh.data sources: native layouts to one validated manifest, clear errors for bad rows."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from svdh.core.errors import BadDatasetError
from svdh.core.scoring import JOINTS
from svdh.data import COLUMNS, load_source, parse_spec


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- real samples


@pytest.mark.real_data
def test_ra2_dream_sample(ra2_dream_dir: Path) -> None:
    df = load_source(f"ra2-dream:{ra2_dream_dir}")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 6 and df["patient_id"].nunique() == 3
    totals = df.groupby("patient_id")["patient_svdh"].first().to_dict()
    assert totals == {"UAB001": 39, "UAB002": 2, "UAB003": 0}
    # per hand: the hand's own joints; the two hands add up to the patient total
    assert df.groupby("patient_id")["svdh"].sum().to_dict() == totals
    lh = df.set_index("image_id").loc["UAB001-LH"]
    assert (lh["side"], lh["erosion"], lh["jsn"], lh["svdh"]) == ("L", 1, 18, 19)
    assert set(df["side"]) == {"L", "R"} and set(df["score_scope"]) == {"hand"}
    assert all(Path(p).is_file() and p.endswith("H.jpg") for p in df["image"])  # feet ignored
    kind, folder = df.attrs["source"].split(":", 1)
    assert kind == "ra2-dream" and Path(folder).resolve() == ra2_dream_dir.resolve()
    assert df.attrs["n_skipped"] == 0


@pytest.mark.real_data
def test_rsna_sample_labels(rsna_sample_dir: Path) -> None:
    df = load_source(f"rsna-boneage:{rsna_sample_dir}")
    with open(rsna_sample_dir / "boneage.csv") as fh:
        truth = {r["id"]: r for r in csv.DictReader(fh)}
    assert len(df) == 20 == len(truth)
    for rec in df.to_dict("records"):
        t = truth[rec["image_id"]]
        assert rec["boneage"] == float(t["boneage"])
        assert rec["male"] == (1.0 if t["male"] == "True" else 0.0)
        assert (
            rec["patient_id"] == rec["image_id"]
            and Path(rec["image"]).name == f"{rec['image_id']}.png"
        )
        assert math.isnan(rec["svdh"])


@pytest.mark.real_data
def test_rsna_100px_images_subfolder(rsna_100px_dir: Path) -> None:
    df = load_source(str(rsna_100px_dir))  # bare path: the layout is recognised
    assert len(df) == 11392 and df["image_id"].is_unique
    assert all("/images/" in p for p in df["image"].head(50))
    assert df["boneage"].between(0, 240).all() and set(df["male"].unique()) == {0.0, 1.0}


# --------------------------------------------------------------------------- RSNA layouts


@pytest.mark.parametrize("nested", [False, True])
def test_rsna_kaggle_layout(tmp_path: Path, nested: bool) -> None:
    folder = tmp_path / "boneage-training-dataset"
    if nested:
        folder = folder / "boneage-training-dataset"
    for i in (1377, 1378):
        _png(folder / f"{i}.png")
    (tmp_path / "boneage-training-dataset.csv").write_text(
        "id,boneage,male\n1377,180,False\n1378,12,True\n"
    )
    df = load_source(f"rsna-boneage:{tmp_path}")
    assert df["image_id"].tolist() == ["1377", "1378"] and df["boneage"].tolist() == [180, 12]
    assert df["male"].tolist() == [0.0, 1.0] and all(Path(p).parent == folder for p in df["image"])


def test_rsna_male_column_reads_the_same_words_as_prediction(tmp_path: Path) -> None:
    """One vocabulary (svdh.core.sex): whatever --sex / --patients / DICOM accept as a sex, a
    training table's ``male`` column reads the same way; unknown is missing, not an error."""
    from svdh.core.sex import norm_sex

    words = ["M", "male", "True", "1", "y", "boy", "F", "female", "False", "0", "girl", "unknown"]
    rows = [f"{i},{100 + i},{w}" for i, w in enumerate(words, start=1)]
    for i in range(1, len(words) + 1):
        _png(tmp_path / f"{i}.png")
    (tmp_path / "boneage.csv").write_text("id,boneage,male\n" + "\n".join(rows) + "\n")
    df = load_source(f"rsna-boneage:{tmp_path}")
    want = [{"M": 1.0, "F": 0.0}.get(norm_sex(w) or "", np.nan) for w in words]
    assert np.allclose(df["male"].to_numpy(float), want, equal_nan=True)
    assert want[:6] == [1.0] * 6 and want[6:11] == [0.0] * 5 and np.isnan(want[11])


def test_rsna_flat_layout_problems_listed_then_skipped(tmp_path: Path) -> None:
    for i in (1, 2, 3, 4, 9):
        _png(tmp_path / f"{i}.png")
    (tmp_path / "boneage.csv").write_text(
        "id,boneage,male\n1,100,True\n2,,False\n3,500,True\n1,90,True\n5,40,False\n4,x,True\n"
    )
    with pytest.raises(BadDatasetError) as err:
        load_source(f"rsna-boneage:{tmp_path}")
    msg = str(err.value)
    assert "\n" not in msg and "--skip-invalid" in msg
    for expected in (
        "row 3 (id 2): boneage is missing",
        "row 4 (id 3): boneage 500 months is out of range",
        "row 5 (id 1): duplicate id (first on row 2)",
        "row 6 (id 5): image 5.png not found",
        "row 7 (id 4): boneage 'x' is not a number",
    ):
        assert expected in msg
    df = load_source(f"rsna-boneage:{tmp_path}", skip_invalid=True)
    assert df["image_id"].tolist() == ["1"] and df.attrs["n_skipped"] == 5
    assert len(df.attrs["problems"]) == 5 and df.attrs["n_unlinked"] == 1  # 9.png has no row


# --------------------------------------------------------------------------- RA2-DREAM layouts


def _ra2_table(path: Path, patients: dict[str, dict[str, float]]) -> None:
    """training.csv in RA2-DREAM columns; ``patients`` maps id -> {column: value} overrides."""
    cols = [
        "Patient_ID",
        "Overall_Tol",
        *(j.column(s) for s in ("L", "R") for j in JOINTS),
        "LF_mtp_E__1",
    ]
    rows = []
    for pid, over in patients.items():
        row = {c: 0 for c in cols}
        row.update(Patient_ID=pid, LF_mtp_E__1=3, **over)
        rows.append(row)
    pd.DataFrame(rows, columns=cols).to_csv(path / "training.csv", index=False)


def _dicom(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_ra2_dream_phantom_layout_png_dicom_and_dual_hand(tmp_path: Path) -> None:
    _ra2_table(
        tmp_path,
        {
            "PH001": {"LH_mcp_E__2": 3, "RH_pip_J__4": 2, "RH_wrist_J__radcar": 4},
            "PH002": {"LH_wrist_E__ulna": 5, "RH_mcp_J__1": 1},
            "PH003": {"RH_mcp_E__ip": 1},
        },
    )
    _png(tmp_path / "PH001-LH.png")
    _dicom(tmp_path / "PH001-RH.dcm")
    _png(tmp_path / "PH002-BH.png")  # one film of both hands
    _png(tmp_path / "PH003-LH.tif".replace(".tif", ".png"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "PH003-RH.tif")
    _png(tmp_path / "PH003-LF.png")  # a foot: ignored
    (tmp_path / "landmarks.json").write_text("{}")
    df = load_source(f"ra2-dream:{tmp_path}").set_index("image_id")
    assert sorted(df.index) == ["PH001-LH", "PH001-RH", "PH002-BH", "PH003-LH", "PH003-RH"]
    assert df.loc["PH001-LH", ["svdh", "erosion", "jsn"]].tolist() == [3, 3, 0]
    assert df.loc["PH001-RH", ["svdh", "erosion", "jsn"]].tolist() == [6, 0, 6]
    assert df.loc["PH001-RH", "image"].endswith(".dcm") and df.loc["PH001-LH", "patient_svdh"] == 9
    both = df.loc["PH002-BH"]
    assert (
        both["side"],
        both["score_scope"],
        both["svdh"],
        both["erosion"],
        both["jsn"],
        both["patient_svdh"],
    ) == ("both", "patient", 6, 5, 1, 6)
    assert df.loc["PH003-RH", "image"].endswith(".tif") and df.loc["PH003-RH", "svdh"] == 1


def test_ra2_dream_bad_rows(tmp_path: Path) -> None:
    _ra2_table(
        tmp_path,
        {
            "A1": {},
            "A2": {"LH_mcp_E__2": 7},  # out of range 0-5
            "A3": {"RH_pip_J__3": float("nan")},
            "A1 ": {},  # duplicate after stripping
            "A4": {},
        },
    )
    for pid in ("A1", "A2", "A3"):
        _png(tmp_path / f"{pid}-LH.jpg".replace(".jpg", ".png"))
        _png(tmp_path / f"{pid}-RH.png")
    _png(tmp_path / "A4-LH.png")  # A4-RH missing
    with pytest.raises(BadDatasetError) as err:
        load_source(f"ra2-dream:{tmp_path}")
    msg = str(err.value)
    assert (
        "training.csv row 3 (A2): LH_mcp_E__2 (metacarpophalangeal joint 2) = 7 is out of range 0-5 for erosion"
        in msg
    )
    assert "row 4 (A3): RH_pip_J__3" in msg and "missing (NaN)" in msg
    assert "row 5 (A1): duplicate Patient_ID (first on row 2)" in msg
    assert "row 6 (A4): image A4-RH.jpg (or .png/.dcm/.tif) not found" in msg
    df = load_source(f"ra2-dream:{tmp_path}", skip_invalid=True)
    # A2's left hand and A3's right hand are out; their other hands stay (without a patient total)
    assert sorted(df["image_id"]) == ["A1-LH", "A1-RH", "A2-RH", "A3-LH", "A4-LH"]
    assert df.set_index("image_id").loc["A2-RH", "svdh"] == 0 and math.isnan(
        df.set_index("image_id").loc["A2-RH", "patient_svdh"]
    )
    assert df.attrs["n_skipped"] == 4


def test_ra2_dream_missing_columns_and_csv(tmp_path: Path) -> None:
    with pytest.raises(BadDatasetError, match="no training.csv"):
        load_source(f"ra2-dream:{tmp_path}")
    (tmp_path / "training.csv").write_text("Patient,score\nA,1\n")
    with pytest.raises(BadDatasetError, match="missing column.*pid.*found Patient, score"):
        load_source(f"ra2-dream:{tmp_path}")


# --------------------------------------------------------------------------- generic CSV


def test_csv_source(tmp_path: Path) -> None:
    for name in ("a/p1_l.png", "a/p1_r.png", "b/p2.png", "p3.jpg"):
        _png(tmp_path / name)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "p3.jpg")
    (tmp_path / "scores.csv").write_text(
        "image,patient_id,svdh,erosion,jsn,side,visit,reader2\n"
        "a/p1_l.png,001,10,4,6,Left,baseline,12\n"
        "a/p1_r.png,001,5,2,3,r,baseline,\n"
        "b/p2.png,002,150,,,both,,140\n"
        f"{tmp_path / 'p3.jpg'},003,0,,,,y1,\n"
    )
    df = load_source(f"csv:{tmp_path / 'scores.csv'}").set_index("image_id")
    assert df.loc["a/p1_l", "patient_id"] == "001"  # ids stay strings
    assert df.loc["a/p1_l", "image"] == str((tmp_path / "a/p1_l.png").resolve())
    assert df["side"].tolist() == ["L", "R", "both", ""]
    assert df.loc["a/p1_l", "patient_svdh"] == 15 == df.loc["a/p1_r", "patient_svdh"]  # L + R
    assert df.loc["b/p2", ["score_scope", "patient_svdh", "reader2"]].tolist() == [
        "patient",
        150,
        140,
    ]
    assert math.isnan(df.loc["a/p1_r", "reader2"]) and df.loc["a/p1_l", "reader2"] == 12
    assert df.loc["p3", "visit"] == "y1" and df.loc["p3", "score_scope"] == "hand"
    assert math.isnan(df.loc["p3", "patient_svdh"])


def test_csv_source_errors(tmp_path: Path) -> None:
    _png(tmp_path / "x.png")
    _png(tmp_path / "y.png")
    (tmp_path / "s.csv").write_text(
        "image,patient_id,svdh,erosion,jsn,side\n"
        "x.png,1,150,,,L\n"  # one hand cannot score 150
        "x.png,1,3,,,R\n"  # duplicate image
        "y.png,2,10,5,6,\n"  # erosion + jsn != svdh
        "gone.png,3,1,,,\n"  # missing file
        "y.png,,nan,,,up\n"  # empty patient, NaN score, bad side
    )
    with pytest.raises(BadDatasetError) as err:
        load_source(f"csv:{tmp_path / 's.csv'}")
    msg = str(err.value)
    assert (
        "s.csv row 2 (x.png): svdh 150 is out of range 0-140 (hand); mark dual-hand films side=both"
        in msg
    )
    assert "row 3 (x.png): duplicate image (first on row 2)" in msg
    assert "row 4 (y.png): erosion 5 + jsn 6 != svdh 10" in msg
    assert "row 5 (gone.png): image not found" in msg
    assert "row 6 (y.png): empty patient_id" in msg and "side 'up' is not L, R or both" in msg
    (tmp_path / "t.csv").write_text("path,score\nx.png,1\n")
    with pytest.raises(BadDatasetError, match=r"t\.csv: missing column\(s\) patient_id, svdh"):
        load_source(f"csv:{tmp_path / 't.csv'}")


def test_source_specs(tmp_path: Path) -> None:
    with pytest.raises(BadDatasetError, match="unknown source kind 'kaggle'"):
        load_source("kaggle:/data")
    with pytest.raises(BadDatasetError, match="does not exist"):
        load_source(f"ra2-dream:{tmp_path / 'nothing'}")
    with pytest.raises(BadDatasetError, match="cannot tell the layout"):
        load_source(str(tmp_path))
    (tmp_path / "training.csv").write_text("Patient_ID\n")
    assert parse_spec(str(tmp_path)) == ("ra2-dream", tmp_path.resolve())
    (tmp_path / "m.csv").write_text("image,patient_id,svdh\n")
    assert parse_spec(tmp_path / "m.csv")[0] == "csv"
    with pytest.raises(BadDatasetError, match="needs a folder"):
        load_source(f"rsna-boneage:{tmp_path / 'm.csv'}")
    with pytest.raises(BadDatasetError, match="no usable images"):
        load_source(f"csv:{tmp_path / 'm.csv'}")
