"""Issue 14 item 1: patient data never reaches a log, a file or the terminal.

The DICOMs here carry the marker PHIMARK in every text element a decoder might echo; each is
damaged so that pydicom or a pixel decoder warns, logs or raises about it (the original case: a
SOPClassUID whose length is inflated to 400 runs on into PatientName and PatientID). Every
stream is grepped: warnings, every logger at DEBUG, stdout/stderr, exception messages, and for
``svdh prepare`` (in-process workers and forkserver workers) its terminal output and every file
it writes.
"""

from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.uid import JPEG2000Lossless

from fuzz_corpus import PHI, PHI_ELEMENTS, dicom_bytes, dicom_dataset, dicom_elements, grey
from predict_world import run_cli
from svdh.core.errors import BadRadiographError
from svdh.core.io import read_radiograph_bytes


def _stored() -> np.ndarray:
    return (grey().astype(np.uint16) * 16).astype(np.uint16)


def _offset(data: bytes, keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    want = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    for pos in dicom_elements(data):
        if data[pos : pos + 4] == want:
            return pos
    raise AssertionError(keyword)


def _set_length(data: bytes, keyword: str, length: int) -> bytes:
    pos = _offset(data, keyword)
    return data[: pos + 6] + struct.pack("<H", length) + data[pos + 8 :]


def phi_cases() -> dict[str, bytes]:
    """Damaged DICOMs full of patient data, by file name."""
    good = dicom_bytes(dicom_dataset(_stored()))
    cases = {"intact.dcm": good, "sop-400.dcm": _set_length(good, "SOPClassUID", 400)}
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "Modality", "StudyDescription"):
        cases[f"{keyword}-inflated.dcm"] = _set_length(good, keyword, 301)
    for keyword, _ in PHI_ELEMENTS[:6]:
        pos = _offset(good, keyword)  # an unknown VR on the element itself
        cases[f"{keyword}-vr.dcm"] = good[: pos + 4] + b"ZZ" + good[pos + 6 :]
    pos = _offset(good, "PatientName")
    cases["odd-length.dcm"] = good[: pos + 6] + struct.pack("<H", 7) + good[pos + 8 :]
    cases["cut.dcm"] = good[: _offset(good, "PatientComments") + 20]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns as these are made
        ds = dicom_dataset(_stored())
        ds.SOPClassUID = f"1.2.840.{PHI}.\n99"  # a garbage UID that would be echoed
        del ds.PixelData
        cases["garbage-uid.dcm"] = dicom_bytes(ds)
        ds = dicom_dataset(_stored())
        ds.PatientID = f"{PHI}ID-" * 12  # longer than LO allows: pydicom quotes it
        cases["long-id.dcm"] = dicom_bytes(ds)
    ds = dicom_dataset(_stored())
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    j2k = bytearray(dicom_bytes(ds))
    start = j2k.find(b"\xff\x4f\xff\x51")
    j2k[start + 60 : start + 400] = bytes(340)
    cases["j2k-corrupt.dcm"] = bytes(j2k)
    return cases


CASES = phi_cases()


def test_the_cases_really_provoke_the_libraries() -> None:
    """Without svdh's guard, pydicom itself quotes the patient data (the bug being fixed)."""
    import io

    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(io.BytesIO(CASES["sop-400.dcm"]), force=True)
        str(ds.get("SOPClassUID"))
    assert any(PHI in str(w.message) for w in caught)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reading_never_logs_or_raises_patient_data(
    name: str, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rad = read_radiograph_bytes(CASES[name], name)
            texts = [str(n) for n in rad.meta.get("decoder_notes", [])]
            assert rad.meta.get("patient_id", PHI).startswith(PHI)  # the data itself is kept
        except BadRadiographError as exc:
            texts = [str(exc)]
            assert "\n" not in str(exc)
    out, err = capsys.readouterr()
    texts += [str(w.message) for w in caught] + [out, err, caplog.text]
    texts += [str(r.msg) for r in caplog.records]
    for text in texts:
        assert PHI not in text, text[:300]


def test_notes_of_a_damaged_file_are_kept_scrubbed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import svdh.core.io as sio

    monkeypatch.setattr(sio, "_NOTED", {"files": 0})
    caplog.set_level(logging.WARNING, logger="svdh.io")
    rad = read_radiograph_bytes(CASES["long-id.dcm"], "s.dcm")
    assert rad.meta["decoder_notes"] and rad.meta["patient_id"].startswith(PHI)
    assert "exceeds the maximum length" in rad.meta["decoder_notes"][0]
    assert len([r for r in caplog.records if r.name == "svdh.io"]) == 1  # one line per file
    assert "s.dcm: read, with 1 decoder warning(s)" in caplog.text


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_writes_no_patient_data_anywhere(tmp_path: Path, workers: int) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    rows = ["image,patient_id,svdh"]
    # Enough rows for prepare to start worker processes (16+) when workers > 1.
    for i in range(18 if workers > 1 else 1):
        for name, data in CASES.items():
            (folder / f"{i}-{name}").write_bytes(data)
            rows.append(f"films/{i}-{name},p{i},10")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cache"
    args = ["prepare", f"csv:{tmp_path / 'labels.csv'}", "--out", out, "--size", 64]
    failed = run_cli(*args, "--workers", workers)
    kept = run_cli(*args, "--workers", workers, "--skip-invalid")
    assert failed.returncode != 0 and "could not be prepared" in failed.stderr
    assert kept.returncode == 0, kept.stderr
    for proc in (failed, kept):
        assert PHI not in proc.stdout and PHI not in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    for f in out.rglob("*"):
        if f.is_file():
            assert PHI.encode() not in f.read_bytes(), f


def test_decoder_warnings_of_many_files_do_not_flood_the_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 18: 79 warning lines for 500 files before; now one line per file for the first
    ten, then one line saying the rest are not shown."""
    import svdh.core.io as sio

    monkeypatch.setattr(sio, "_NOTED", {"files": 0})
    caplog.set_level(logging.WARNING)
    for i in range(40):
        read_radiograph_bytes(CASES["long-id.dcm"], f"f{i}.dcm")
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == sio.NOTE_LINES + 1 and "not shown" in lines[-1].getMessage()
