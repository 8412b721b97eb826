"""``svdh data inspect`` and ``svdh prepare`` as a user runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from svdh.cli.main import main


def run(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["svdh", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _source(folder: Path, n: int = 6, broken: bool = False) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        a = np.full((80, 60), 15, np.uint8)
        a[20 + i : 70, 15:45] = 170
        Image.fromarray(a).save(folder / f"x{i}.png")
        rows.append(
            {"image": f"x{i}.png", "patient_id": f"p{i // 2}", "svdh": 3 * i, "side": "LR"[i % 2]}
        )
    if broken:
        rows.append({"image": "missing.png", "patient_id": "p9", "svdh": 200, "side": "L"})
    pd.DataFrame(rows).to_csv(folder / "m.csv", index=False)
    return f"csv:{folder / 'm.csv'}"


@pytest.mark.real_data
def test_inspect_ra2_dream_json(
    ra2_dream_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(
        ["data", "inspect", f"ra2-dream:{ra2_dream_dir}", "--format", "json"], capsys, monkeypatch
    )
    assert code == 0
    s = json.loads(out)
    assert s["n_images"] == 6 and s["n_patients"] == 3 and len(s["rows"]) == 6
    for row in s["rows"]:
        assert {"image", "patient_id", "side", "erosion", "jsn", "svdh", "patient_svdh"} <= set(row)
        assert row["side"] in ("L", "R") and row["svdh"] == row["erosion"] + row["jsn"]
    assert {r["patient_id"]: r["patient_svdh"] for r in s["rows"]} == {
        "UAB001": 39,
        "UAB002": 2,
        "UAB003": 0,
    }
    assert s["problems"] == []


@pytest.mark.real_data
def test_inspect_rsna_json_and_table(
    rsna_sample_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(
        ["data", "inspect", f"rsna-boneage:{rsna_sample_dir}", "-f", "json"], capsys, monkeypatch
    )
    s = json.loads(out)
    assert code == 0 and s["n_images"] == 20 == s["n_patients"]
    r = next(r for r in s["rows"] if r["patient_id"] == "1437")
    assert r["boneage"] == 136 and r["male"] is False and "svdh" not in r
    code, out, _ = run(["data", "inspect", f"rsna-boneage:{rsna_sample_dir}"], capsys, monkeypatch)
    assert code == 0 and "boneage" in out and "no problems found" in out


def test_inspect_sheet_and_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _source(tmp_path / "d", broken=True)
    sheet = tmp_path / "sheet.png"
    code, out, err = run(
        ["data", "inspect", spec, "--sheet", str(sheet), "--tile", "64"], capsys, monkeypatch
    )
    assert code == 2
    assert "row 8 (missing.png): image not found" in out and "svdh 200 is out of range 0-140" in out
    assert err.count("\n") == 1 and err.startswith("error:") and "--skip-invalid" in err
    im = Image.open(sheet)
    assert im.size[0] > 4 * 64 and im.size[1] > 64  # 6 tiles of raw + preprocessed pairs
    code, out, _ = run(
        ["data", "inspect", spec, "--format", "json", "--skip-invalid"], capsys, monkeypatch
    )
    s = json.loads(out)
    assert code == 0 and s["n_images"] == 6 and s["n_skipped"] == 1 and len(s["problems"]) == 2
    assert s["severity_classes"]["hand"]["0"] == 1
    (tmp_path / "d" / "x3.png").write_bytes(b"")  # listed as a problem only when images are decoded
    code, out, _ = run(
        ["data", "inspect", spec, "-f", "json", "--skip-invalid", "--check-images"],
        capsys,
        monkeypatch,
    )
    s = json.loads(out)
    assert s["n_unreadable_images"] == 1 and any(
        "x3.png: the file is empty" in p for p in s["problems"]
    )


def test_prepare_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _source(tmp_path / "d")
    out_dir = tmp_path / "cache"
    code, out, _ = run(
        [
            "prepare",
            spec,
            "--size",
            "32",
            "--out",
            str(out_dir),
            "--workers",
            "1",
            "--no-canonical",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "prepared 6 images at 32 px" in out
    assert np.load(out_dir / "images.npy").shape == (6, 32, 32)
    code, out, _ = run(
        ["prepare", spec, "--size", "32", "--out", str(out_dir), "--no-canonical"],
        capsys,
        monkeypatch,
    )
    assert code == 0 and out.startswith("cache up to date: 6 images")

    broken = _source(tmp_path / "b", broken=True)
    code, out, err = run(
        ["prepare", broken, "--size", "32", "--out", str(tmp_path / "c2"), "--no-canonical"],
        capsys,
        monkeypatch,
    )
    assert code == 2 and err.count("\n") == 1 and "missing.png" in err
    code, out, err = run(
        [
            "prepare",
            broken,
            "--size",
            "32",
            "--out",
            str(tmp_path / "c2"),
            "--skip-invalid",
            "--no-canonical",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0 and "warning: skipped 1 row(s)" in err and "prepared 6 images" in out


def test_bad_source_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(["data", "inspect", f"ra2-dream:{tmp_path / 'none'}"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = run(["data", "inspect", str(tmp_path), "--format", "xml"], capsys, monkeypatch)
    assert code == 2 and "--format must be table or json" in err
