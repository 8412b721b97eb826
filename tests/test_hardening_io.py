"""Issue 14, reader side: bounded memory, wrong results refused, one error type, files that
are not files. Each test failed on the main of commit 370ff4b."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from fuzz_corpus import PHI, dicom_bytes, dicom_dataset, grey
from svdh.core.errors import BadRadiographError, quote, scrub
from svdh.core.io import MAX_ASPECT, read_radiograph, read_radiograph_bytes


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def _pil_bytes(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- items 5, 6


@pytest.mark.parametrize(("w", "h"), [(1000, 40000), (400, 131592), (131592, 400)])
def test_aspect_ratio_bomb_is_refused_from_the_header(w: int, h: int) -> None:
    # Under the area limit (40 MP < 64 MP), but padding it to a square would make 1.6 G pixels.
    with pytest.raises(BadRadiographError, match=r"strip\.png: .* strip, not a radiograph"):
        read_radiograph_bytes(_png_header_only(w, h), "strip.png")


def test_a_long_film_within_the_aspect_limit_is_read() -> None:
    rad = read_radiograph_bytes(_pil_bytes(grey(60, int(60 * MAX_ASPECT)), "PNG"), "long.png")
    assert rad.shape == (60, 480)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_long_side_beyond_sqrt_of_the_limit_is_reduced_at_decode(fmt: str) -> None:
    # 150 x 60 = 9,000 pixels is within a 10,000 limit, but its padded square (150^2) is not:
    # the reader brings the longer side to at most sqrt(10,000) = 100.
    rad = read_radiograph_bytes(_pil_bytes(grey(60, 150), fmt), f"wide.{fmt}", max_pixels=10_000)
    assert max(rad.shape) <= 100 and rad.shape[1] >= 37
    assert max(rad.shape) ** 2 <= 10_000
    assert (rad.meta["stored_width"], rad.meta["stored_height"]) == (150, 60)
    assert (rad.meta["width"], rad.meta["height"]) == (rad.shape[1], rad.shape[0])
    assert rad.pixels.dtype == np.float32 and 0 <= rad.pixels.min() <= rad.pixels.max() <= 1


def test_multiframe_dicom_frames_count_against_the_pixel_limit() -> None:
    frame = (grey(64, 64).astype(np.uint16) * 16).astype(np.uint16)
    ds = dicom_dataset(frame)
    ds.NumberOfFrames = 40
    ds.PixelData = np.stack([frame] * 40).tobytes()
    data = dicom_bytes(ds)
    with pytest.raises(BadRadiographError, match=r"64 x 64 x 40 frames = 163,840 pixels exceeds"):
        read_radiograph_bytes(data, "cine.dcm", max_pixels=64 * 64 * 10)
    rad = read_radiograph_bytes(data, "cine.dcm", max_pixels=64 * 64 * 40)
    assert rad.shape == (64, 64) and rad.meta["n_frames"] == 40  # the first frame only


# --------------------------------------------------------------------------- items 7-9


def test_non_finite_float_tiff_is_refused() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        a = np.random.default_rng(0).random((40, 30)).astype(np.float32)
        a[3, 4] = bad
        with pytest.raises(BadRadiographError, match=r"f\.tif: 1 pixel\(s\) are NaN or infinite"):
            read_radiograph_bytes(_pil_bytes(a, "TIFF"), "f.tif")


def test_non_finite_dicom_float_pixel_data_is_refused() -> None:
    ds = dicom_dataset(np.zeros((32, 32), np.uint16))
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    values = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    values[0, 0] = np.inf
    ds.FloatPixelData = values.tobytes()
    with pytest.raises(BadRadiographError, match=r"fl\.dcm: 1 pixel\(s\) are NaN or infinite"):
        read_radiograph_bytes(dicom_bytes(ds), "fl.dcm")


def _jpeg_dicom(jpeg: bytes, s8: np.ndarray) -> bytes:
    ds = dicom_dataset(s8, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def test_truncated_jpeg_inside_dicom_is_refused_like_a_plain_truncated_jpeg() -> None:
    s8 = (np.random.default_rng(1).random((128, 96)) * 255).astype(np.uint8)
    jpeg = _pil_bytes(s8, "JPEG", quality=90)
    intact = read_radiograph_bytes(_jpeg_dicom(jpeg, s8), "ok.dcm")
    assert abs(float(intact.pixels.mean()) - s8.mean() / 255) < 0.02
    with pytest.raises(BadRadiographError, match=r"cut\.jpg: truncated"):
        read_radiograph_bytes(jpeg[: len(jpeg) // 2], "cut.jpg")
    with pytest.raises(BadRadiographError, match=r"cut\.dcm: truncated compressed pixel data"):
        read_radiograph_bytes(_jpeg_dicom(jpeg[: len(jpeg) // 2], s8), "cut.dcm")


def test_corrupt_jpeg2000_and_jpegls_streams_are_called_corrupt_not_missing_plugins() -> None:
    from pydicom.data import get_testdata_file

    stored = (np.arange(64 * 48).reshape(64, 48) * 7 % 4096).astype(np.uint16)
    ds = dicom_dataset(stored)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    j2k = bytearray(dicom_bytes(ds))
    start = j2k.find(b"\xff\x4f\xff\x51")
    for k in range(start + 60, start + 400):
        j2k[k] ^= 0x5A
    jls = bytearray(Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).read_bytes())
    soi = jls.find(b"\xff\xd8\xff")
    jls[soi + 4 : soi + 34] = bytes(30)
    for name, data in (("j2k.dcm", j2k), ("jls.dcm", jls)):
        with pytest.raises(BadRadiographError) as info:
            read_radiograph_bytes(bytes(data), name)
        assert f"{name}: corrupt" in str(info.value) and "not installed" not in str(info.value)


# --------------------------------------------------------------------------- item 12


def test_bits_allocated_8_on_16_bit_data_is_refused_by_the_reader() -> None:
    ds = dicom_dataset((grey().astype(np.uint16) * 16).astype(np.uint16))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    with pytest.raises(
        BadRadiographError, match=r"b8\.dcm: the pixel data decodes to \(2, 64, 48\)"
    ):
        read_radiograph_bytes(dicom_bytes(ds), "b8.dcm")


def _element(data: bytes, tag: bytes) -> int:
    pos = data.find(tag)
    assert pos > 0
    return pos


def test_unknown_vr_and_bad_value_lengths_raise_bad_radiograph_only() -> None:
    data = dicom_bytes(dicom_dataset((grey().astype(np.uint16) * 16).astype(np.uint16)))
    rows = _element(data, b"\x28\x00\x10\x00US")  # (0028,0010) Rows
    cases = {
        # an unknown VR: pydicom raises NotImplementedError
        "vr.dcm": data[: rows + 4] + b"ZZ" + data[rows + 6 :],
        # US of length 3 (not a multiple of 2): pydicom's BytesLengthException
        "len.dcm": data[: rows + 6]
        + b"\x03\x00"
        + data[rows + 8 : rows + 10]
        + b"\x00"
        + data[rows + 10 :],
    }
    for name, bad in cases.items():
        with pytest.raises(BadRadiographError, match=rf"^{name}: "):
            read_radiograph_bytes(bad, name)


def test_foreign_exceptions_of_a_decoder_become_bad_radiograph(monkeypatch) -> None:
    from PIL import Image as PILImage

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s)")

    data = _pil_bytes(grey(), "PNG")
    monkeypatch.setattr(PILImage.Image, "load", broken)
    with pytest.raises(
        BadRadiographError, match=r"x\.png: damaged or unsupported image data \(TypeError"
    ):
        read_radiograph_bytes(data, "x.png")


# --------------------------------------------------------------------------- item 13


def test_quote_escapes_control_characters_and_cuts_long_values() -> None:
    assert quote("a\nb\x00c") == "'a\\nb\\x00c'"
    assert "\n" not in quote("x\n" * 100) and quote("y" * 200).endswith("...'")
    assert scrub("Invalid value for VR UI: '1.2\x00PN PHIMARK'") == "Invalid value for VR UI"


def test_garbage_sop_class_uid_and_file_names_are_not_echoed_raw() -> None:
    ds = dicom_dataset(np.zeros((8, 8), np.uint16))
    del ds.PixelData
    with pytest.warns(UserWarning):  # pydicom, as the garbage is set and written
        ds.SOPClassUID = "1.2.3\nerror: forged line " + PHI
        data = dicom_bytes(ds)
    with pytest.raises(BadRadiographError) as info:
        read_radiograph_bytes(data, "bad\nname.dcm")
    msg = str(info.value)
    assert "\n" not in msg and PHI not in msg and msg.startswith("'bad\\nname.dcm'")
    assert "invalid SOP Class UID" in msg


def test_patient_id_with_a_newline_is_escaped_in_metadata() -> None:
    ds = dicom_dataset((grey().astype(np.uint16) * 16).astype(np.uint16), phi=False)
    ds.PatientID = "P1\nP2"
    rad = read_radiograph_bytes(dicom_bytes(ds), "p.dcm")
    assert rad.meta["patient_id"] == "P1\\nP2"


# --------------------------------------------------------------------------- item 17


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_fifo_named_like_an_image_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    result: list[BaseException] = []

    def read() -> None:
        try:
            read_radiograph(fifo)
        except BaseException as exc:  # noqa: BLE001
            result.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("read_radiograph blocked on a FIFO")
    assert isinstance(result[0], BadRadiographError)
    assert "x.png: a named pipe (FIFO), not a regular image file" in str(result[0])


def test_symlink_loop_and_broken_symlink_are_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(BadRadiographError, match=r"loop\.png: a symbolic link loop"):
        read_radiograph(tmp_path / "loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(BadRadiographError, match=r"gone\.png: a broken symbolic link"):
        read_radiograph(tmp_path / "gone.png")


def test_a_regular_file_reached_through_a_symlink_still_reads(tmp_path: Path) -> None:
    Image.fromarray(grey()).save(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    assert read_radiograph(tmp_path / "link.png").shape == (64, 48)


def test_pydicom_reads_the_test_helper_files() -> None:
    assert pydicom.dcmread(io.BytesIO(dicom_bytes(dicom_dataset(np.ones((8, 8)))))).Rows == 8


def test_nul_byte_in_a_path_is_a_bad_radiograph(tmp_path: Path) -> None:
    with pytest.raises(BadRadiographError, match=r"NUL byte"):
        read_radiograph(str(tmp_path / "a\x00.png"))


def test_dicom_without_preamble_starting_at_0002_0002_is_read() -> None:
    """Item 10: a data set whose first element is (0002,0002) MediaStorageSOPClassUID."""
    ds = dicom_dataset((grey().astype(np.uint16) * 16).astype(np.uint16), phi=False)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    full = dicom_bytes(ds)
    body = full[132:]  # the file meta group and the data set, without preamble and "DICM"
    start = body.find(b"\x02\x00\x02\x00")
    data = body[start:]
    assert data[:4] == b"\x02\x00\x02\x00"
    rad = read_radiograph_bytes(data, "old.dcm")
    assert rad.meta["format"] == "DICOM" and rad.shape == (64, 48)
