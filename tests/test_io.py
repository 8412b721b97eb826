"""svdh.core.io: every format users have, and one clear error per bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from svdh.core.errors import BadRadiographError
from svdh.core.io import read_radiograph, read_radiograph_bytes


def _grey(h: int = 60, w: int = 40) -> np.ndarray:
    """A grey ramp with a bright square: distinct values everywhere, orientation visible."""
    y, x = np.mgrid[0:h, 0:w]
    a = (x * 3 + y * 2).astype(np.float64)
    a[10:20, 10:20] = 250
    return np.clip(a, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- raster formats


def test_png_8bit(tmp_path: Path) -> None:
    a = _grey()
    Image.fromarray(a).save(tmp_path / "a.png")
    r = read_radiograph(tmp_path / "a.png")
    assert r.pixels.dtype == np.float32 and r.pixels.shape == a.shape
    np.testing.assert_allclose(r.pixels, a / 255.0, atol=1e-6)
    assert r.meta["bit_depth"] == 8 and r.meta["format"] == "PNG"
    assert (r.meta["width"], r.meta["height"]) == (40, 60)
    assert r.meta["photometric"] == "MONOCHROME2" and r.meta["source"].endswith("a.png")


def test_png_16bit_keeps_precision(tmp_path: Path) -> None:
    a = (np.arange(50 * 30).reshape(50, 30) * 37 % 65536).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a16.png")
    r = read_radiograph(tmp_path / "a16.png")
    assert r.meta["bit_depth"] == 16
    np.testing.assert_allclose(r.pixels, a / 65535.0, atol=1e-6)
    assert len(np.unique(r.pixels)) > 256  # more than 8 bits survived


def test_jpeg_greyscale_stored_as_rgb(tmp_path: Path) -> None:
    a = _grey(120, 80)
    Image.fromarray(np.stack([a] * 3, -1)).save(tmp_path / "g.jpg", quality=95)
    r = read_radiograph(tmp_path / "g.jpg")
    assert r.pixels.ndim == 2 and r.meta["photometric"] == "RGB" and r.meta["format"] == "JPEG"
    assert np.abs(r.pixels - a / 255.0).mean() < 0.02


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_bmp(tmp_path: Path, mode: str) -> None:
    a = _grey()
    Image.fromarray(a).convert(mode).save(tmp_path / "a.bmp")
    r = read_radiograph(tmp_path / "a.bmp")
    assert r.meta["format"] == "BMP"
    np.testing.assert_allclose(r.pixels, a / 255.0, atol=1 / 255)


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff(tmp_path: Path, bits: int) -> None:
    a = _grey().astype(np.uint16) * 257 if bits == 16 else _grey()
    Image.fromarray(a).save(tmp_path / "a.tif")
    r = read_radiograph(tmp_path / "a.tif")
    assert r.meta["format"] == "TIFF" and r.meta["bit_depth"] == bits
    np.testing.assert_allclose(r.pixels, _grey() / 255.0, atol=1e-5)


def test_format_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    Image.fromarray(_grey()).save(tmp_path / "really_png.jpg", format="PNG")
    assert read_radiograph(tmp_path / "really_png.jpg").meta["format"] == "PNG"


def test_read_from_bytes_names_the_upload() -> None:
    buf = io.BytesIO()
    Image.fromarray(_grey()).save(buf, format="PNG")
    r = read_radiograph_bytes(buf.getvalue(), "upload.png")
    assert r.meta["source"] == "upload.png" and r.shape == (60, 40)
    with pytest.raises(BadRadiographError, match="upload.txt"):
        read_radiograph_bytes(b"hello world, not an image", "upload.txt")


# --------------------------------------------------------------------------- DICOM


def _dicom(stored: np.ndarray, **tags: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _bone_phantom() -> tuple[np.ndarray, np.ndarray]:
    """Stored values of a MONOCHROME1 film: bone (the bar) attenuates, so it is stored LOW."""
    stored = np.full((64, 48), 3500, np.uint16)
    bone = np.zeros(stored.shape, bool)
    bone[16:48, 18:30] = True
    stored[bone] = 500
    stored[0:4] = 3000  # a strip between the two, to check the window's slope
    return stored, bone


def test_dicom_16bit_monochrome1_with_rescale_and_window_puts_bone_bright(tmp_path: Path) -> None:
    stored, bone = _bone_phantom()
    # Modality values = 2 * stored - 1000: bone 0, background 6000, strip 5000.
    ds = _dicom(
        stored,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=6000,
        PatientID="P-007",
        StudyDate="20240131",
        ImageLaterality="L",
    )
    r = read_radiograph(_save(ds, tmp_path / "m1.dcm"))
    assert r.meta["photometric"] == "MONOCHROME1" and r.meta["bit_depth"] == 12
    assert (r.meta["patient_id"], r.meta["study_date"], r.meta["laterality"]) == (
        "P-007",
        "20240131",
        "L",
    )
    px = r.pixels
    assert px.dtype == np.float32 and 0 <= px.min() and px.max() <= 1
    assert px[bone].mean() > 0.95  # bone is bright after MONOCHROME1 inversion
    assert px[4:, :][~bone[4:, :]].mean() < 0.05  # background dark
    # The strip (modality 5000) sits on the window ramp: 1 - (5000 - 2999.5) / 5999 + 0.5.
    expected = 1 - ((5000 - 2999.5) / 5999 + 0.5)
    assert px[0:4].mean() == pytest.approx(expected, abs=2e-3)


def test_dicom_monochrome2_and_monochrome1_of_the_same_film_agree(tmp_path: Path) -> None:
    stored, bone = _bone_phantom()
    m1 = read_radiograph(
        _save(_dicom(stored, PhotometricInterpretation="MONOCHROME1"), tmp_path / "a.dcm")
    )
    m2 = read_radiograph(_save(_dicom(4095 - stored), tmp_path / "b.dcm"))
    assert m1.pixels[bone].mean() > m1.pixels[~bone].mean()
    np.testing.assert_allclose(m1.pixels, m2.pixels, atol=1e-6)


def test_dicom_narrow_window_saturates(tmp_path: Path) -> None:
    stored, bone = _bone_phantom()
    ds = _dicom(stored, WindowCenter=3250, WindowWidth=100)  # between the strip and background
    px = read_radiograph(_save(ds, tmp_path / "w.dcm")).pixels
    assert px[bone].max() == 0.0 and px[0:4].max() == 0.0 and px[10, 0] == 1.0


def test_dicom_voi_lut_sequence(tmp_path: Path) -> None:
    stored = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    lut = (np.arange(4096) ** 2 / 4095**2 * 65535).astype(np.uint16)
    item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUT Data
    ds = _dicom(stored, VOILUTSequence=[item])
    px = read_radiograph(_save(ds, tmp_path / "lut.dcm")).pixels
    np.testing.assert_allclose(px[0], (stored[0] / 4095.0) ** 2, atol=2e-4)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_dicom_decodes(tmp_path: Path, syntax: object) -> None:
    stored = (np.arange(64 * 48).reshape(64, 48) * 7 % 4096).astype(np.uint16)
    ds = _dicom(stored)
    ds.compress(syntax, encoding_plugin="pydicom" if syntax == RLELossless else "pylibjpeg")
    r = read_radiograph(_save(ds, tmp_path / "c.dcm"))
    np.testing.assert_allclose(
        r.pixels, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6
    )


def test_compressed_dicom_without_its_plugin_names_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pydicom.pixels.decoders.base as decoders

    ds = _dicom(np.zeros((64, 64), np.uint16) + 7)
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    path = _save(ds, tmp_path / "j2k.dcm")
    decoder = decoders.get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})  # as if no decoding plugin were installed
    with pytest.raises(BadRadiographError, match=r"j2k\.dcm.*pylibjpeg-openjpeg"):
        read_radiograph(path)


# --------------------------------------------------------------------------- bad input


def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("notes.png", b"patient list\nUAB001, 39\n" * 20, "not an image.*text"),
        ("empty.png", b"", "empty"),
        ("garbage.dcm", bytes(range(256)) * 4, "not an image"),
    ],
)
def test_not_an_image_and_empty(tmp_path: Path, name: str, content: bytes, pattern: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BadRadiographError, match=f"{name}.*{pattern}"):
        read_radiograph(tmp_path / name)


def test_truncated_png_and_jpeg(tmp_path: Path) -> None:
    a = (np.random.default_rng(0).random((200, 150)) * 255).astype(np.uint8)
    data = _png_bytes(a)
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRadiographError, match=r"cut\.png: truncated"):
        read_radiograph(tmp_path / "cut.png")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(BadRadiographError, match=r"cut\.jpg: truncated"):
        read_radiograph(tmp_path / "cut.jpg")
    (tmp_path / "hdr.png").write_bytes(data[:20])
    with pytest.raises(BadRadiographError, match=r"hdr\.png: truncated"):
        read_radiograph(tmp_path / "hdr.png")


def test_truncated_dicom(tmp_path: Path) -> None:
    path = _save(_dicom(np.zeros((64, 64), np.uint16)), tmp_path / "full.dcm")
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 3000])
    with pytest.raises(BadRadiographError, match=r"cut\.dcm: .*(truncated|corrupt)"):
        read_radiograph(tmp_path / "cut.dcm")


def test_zero_size_images(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )
    (tmp_path / "zero.png").write_bytes(png)
    with pytest.raises(BadRadiographError, match=r"zero\.png: zero-size image \(0 x 10"):
        read_radiograph(tmp_path / "zero.png")
    ds = _dicom(np.zeros((4, 4), np.uint16))
    ds.Rows = 0
    ds.PixelData = b""
    with pytest.raises(BadRadiographError, match=r"zero\.dcm: zero-size"):
        read_radiograph(_save(ds, tmp_path / "zero.dcm"))


def test_pixel_limit_guards_against_decompression_bombs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(
        BadRadiographError, match=r"big\.png: 100 x 100 = 10,000 pixels exceeds the limit of 5,000"
    ):
        read_radiograph(tmp_path / "big.png", max_pixels=5000)
    assert read_radiograph(tmp_path / "big.png", max_pixels=10_000).shape == (100, 100)
    monkeypatch.setenv("SVDH_MAX_PIXELS", "9999")
    with pytest.raises(BadRadiographError, match="exceeds the limit"):
        read_radiograph(tmp_path / "big.png")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.jpg")
    with pytest.raises(BadRadiographError, match=r"big\.jpg.*exceeds"):
        read_radiograph(tmp_path / "big.jpg")
    with pytest.raises(BadRadiographError, match=r"big\.dcm.*exceeds"):
        read_radiograph(_save(_dicom(np.zeros((100, 100), np.uint16)), tmp_path / "big.dcm"))


def test_colour_photograph_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:120, 0:160]
    photo = np.stack([x * 1.5, y * 2.0, 255 - x], -1) + rng.normal(0, 10, (120, 160, 3))
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(tmp_path / "holiday.jpg")
    with pytest.raises(BadRadiographError, match=r"holiday\.jpg: a colour photograph"):
        read_radiograph(tmp_path / "holiday.jpg")


def test_greyscale_with_small_coloured_annotation_is_accepted(tmp_path: Path) -> None:
    rgb = np.stack([_grey(100, 100)] * 3, -1)
    rgb[2:6, 2:20] = (255, 0, 0)  # a burnt-in red label
    Image.fromarray(rgb).save(tmp_path / "annotated.png")
    assert read_radiograph(tmp_path / "annotated.png").shape == (100, 100)


def test_missing_file_folder_and_unsupported_format(tmp_path: Path) -> None:
    with pytest.raises(BadRadiographError, match=r"nope\.png: file not found"):
        read_radiograph(tmp_path / "nope.png")
    with pytest.raises(BadRadiographError, match="is a folder"):
        read_radiograph(tmp_path)
    Image.fromarray(_grey()).save(tmp_path / "x.gif")
    with pytest.raises(BadRadiographError, match=r"x\.gif: not an image"):
        read_radiograph(tmp_path / "x.gif")


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    ds = _dicom(np.zeros((4, 4), np.uint16))
    del ds.PixelData
    with pytest.raises(BadRadiographError, match=r"report\.dcm: DICOM file without pixel data"):
        read_radiograph(_save(ds, tmp_path / "report.dcm"))


def test_pydicom_written_file_reads_back_through_pydicom_too(tmp_path: Path) -> None:
    # Sanity check of the test helper itself: the file is standard DICOM.
    path = _save(_dicom(np.ones((8, 8), np.uint16)), tmp_path / "ok.dcm")
    assert pydicom.dcmread(path).Rows == 8


def test_dicom_without_preamble_and_file_meta(tmp_path: Path) -> None:
    """Old ACR-NEMA-style exports: no 128-byte preamble, no file meta, just the data set."""
    stored, bone = _bone_phantom()
    ds = _dicom(stored, PhotometricInterpretation="MONOCHROME1")
    del ds.file_meta
    ds.StudyDate = "20010101"  # group 0008 first, as such files start
    path = tmp_path / "old.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    r = read_radiograph(path)
    assert r.meta["format"] == "DICOM" and r.pixels[bone].mean() > r.pixels[~bone].mean()
