"""Issue 14 items 11, 13, 17 (sources): every bad label named with its column and row, no
internal error for a NUL byte, echoed cells escaped, unusable image files named as such."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from svdh.core.errors import BadDatasetError
from svdh.core.scoring import JOINTS
from svdh.data import load_source


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(path)
    return path


def _problems(spec: str) -> str:
    with pytest.raises(BadDatasetError) as info:
        load_source(spec)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e400", "Infinity"])
def test_infinite_labels_are_refused_with_column_and_row(tmp_path: Path, bad: str) -> None:
    for n in "abcd":
        _png(tmp_path / f"{n}.png")
    (tmp_path / "s.csv").write_text(
        "image,patient_id,svdh,erosion,reader2,patient_svdh\n"
        f"a.png,1,{bad},,,\n"
        f"b.png,2,3,{bad},,\n"
        f"c.png,3,3,,{bad},\n"
        f"d.png,4,3,,,{bad}\n"
    )
    msg = _problems(f"csv:{tmp_path / 's.csv'}")
    for row, col in ((2, "svdh"), (3, "erosion"), (4, "reader2"), (5, "patient_svdh")):
        assert f"row {row} ({'abcd'[row - 2]}.png): {col} '{bad}' is not a finite number" in msg
    assert "is missing" not in msg  # inf is not "missing"


def test_infinite_bone_age_is_refused(tmp_path: Path) -> None:
    _png(tmp_path / "1.png")
    (tmp_path / "boneage.csv").write_text("id,boneage,male\n1,inf,True\n")
    msg = _problems(f"rsna-boneage:{tmp_path}")
    assert "row 2 (id 1): boneage 'inf' is not a finite number" in msg


def _ra2(path: Path, patients: dict[str, dict[str, object]]) -> None:
    cols = ["Patient_ID", *(j.column(s) for s in ("L", "R") for j in JOINTS)]
    rows = []
    for pid, over in patients.items():
        row: dict[str, object] = {c: 0 for c in cols}
        row.update(Patient_ID=pid, **over)
        rows.append(row)
        _png(path / f"{pid}-LH.png")
        _png(path / f"{pid}-RH.png")
    pd.DataFrame(rows, columns=cols).to_csv(path / "training.csv", index=False)


def test_every_bad_joint_of_a_hand_is_named(tmp_path: Path) -> None:
    _ra2(
        tmp_path,
        {
            "A1": {"LH_mcp_E__2": 2.5, "LH_mcp_E__3": 7, "LH_pip_J__4": "inf", "RH_pip_J__2": "x"},
        },
    )
    msg = _problems(f"ra2-dream:{tmp_path}")
    assert "training.csv row 2 (A1): " in msg
    assert "LH_mcp_E__2 (metacarpophalangeal joint 2) = 2.5 is not a whole number" in msg
    assert "LH_mcp_E__3 (metacarpophalangeal joint 3) = 7 is out of range 0-5 for erosion" in msg
    assert "LH_pip_J__4" in msg and "'inf' is not a finite number" in msg
    assert "RH_pip_J__2" in msg and "'x' is not a number" in msg


def test_a_duplicated_column_is_refused(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "s.csv").write_text("image,patient_id,svdh,SVDH \na.png,1,3,40\n")
    msg = _problems(f"csv:{tmp_path / 's.csv'}")
    assert "s.csv has duplicated column(s) 'SVDH' (columns 3 and 4)" in msg


def test_nul_byte_in_a_csv_path_is_a_row_problem_not_an_internal_error(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "s.csv").write_bytes(b"image,patient_id,svdh\na.png,1,3\nb\x00.png,2,4\n")
    msg = _problems(f"csv:{tmp_path / 's.csv'}")
    assert "row 3 ('b\\x00.png'): the image path contains a NUL byte" in msg
    df = load_source(f"csv:{tmp_path / 's.csv'}", skip_invalid=True)
    assert len(df) == 1
    with pytest.raises(BadDatasetError, match="NUL byte"):
        load_source(f"csv:{tmp_path}/s\x00.csv")


def test_cells_with_newlines_are_escaped_in_messages(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text('image,patient_id,svdh,side\n"x\nerror: fake.png",1,3,"l\nr"\n')
    msg = _problems(f"csv:{tmp_path / 's.csv'}")
    assert "'x\\nerror: fake.png'" in msg and "side 'l\\nr' is not L, R or both" in msg


def test_unusable_image_files_are_named_as_such(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "s.csv").write_text(
        "image,patient_id,svdh\nok.png,1,1\ngone.png,2,1\nloop.png,3,1\npipe.png,4,1\n"
    )
    msg = _problems(f"csv:{tmp_path / 's.csv'}")
    assert "gone.png is a broken symbolic link" in msg
    assert "loop.png is a symbolic link loop" in msg
    assert "pipe.png is not a regular file (a FIFO or device)" in msg


def test_folder_scans_report_broken_symlinks(tmp_path: Path) -> None:
    _png(tmp_path / "1.png")
    (tmp_path / "2.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "boneage.csv").write_text("id,boneage,male\n1,10,True\n2,20,False\n")
    msg = _problems(f"rsna-boneage:{tmp_path}")
    assert "row 3 (id 2): image 2.png is a broken symbolic link" in msg
