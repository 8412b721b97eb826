"""Seed files of every format the readers take, a mutator, and the reader contract.

Used by tests/test_hardening_fuzz.py (hypothesis, a fixed small budget) and by
benchmarks/fuzz_readers.py (N cases, counting every foreign exception). The DICOM seeds carry
the marker :data:`PHI` in every text element a decoder might echo, so a check can grep for it.
"""

from __future__ import annotations

import io
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Put in every DICOM text element; must never appear in an error, a warning or a log.
PHI = "PHIMARK"
#: The real radiographs beside the project (absent in a user's clone).
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Pixel limit the fuzzing runs under: a mutated header claiming more is refused, not decoded.
FUZZ_MAX_PIXELS = 4_000_000

#: (keyword, VR-appropriate value) of text elements, each with the marker.
PHI_ELEMENTS: tuple[tuple[str, str], ...] = (
    ("PatientName", f"{PHI}^NAME"),
    ("PatientID", f"{PHI}ID"),
    ("OtherPatientIDs", f"{PHI}OTHER"),
    ("PatientAddress", f"{PHI} STREET 1"),
    ("InstitutionName", f"{PHI} HOSPITAL"),
    ("InstitutionAddress", f"{PHI} ROAD"),
    ("ReferringPhysicianName", f"{PHI}^DOCTOR"),
    ("PerformingPhysicianName", f"{PHI}^RADIOLOGIST"),
    ("StudyDescription", f"{PHI} HAND STUDY"),
    ("SeriesDescription", f"{PHI} SERIES"),
    ("AccessionNumber", f"{PHI}ACC"),
    ("StudyID", f"{PHI}ST"),
    ("StationName", f"{PHI}STN"),
    ("PatientComments", f"{PHI} comments about the patient"),
    ("ImageComments", f"{PHI} image comments"),
    ("AdditionalPatientHistory", f"{PHI} history"),
    ("PatientMotherBirthName", f"{PHI}^MOTHER"),
    ("OperatorsName", f"{PHI}^OPERATOR"),
)


def grey(h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = 40 + 150 * np.exp(-(((x - w / 2) / (w / 5)) ** 2)) * (y > h / 6) + rng.normal(0, 6, (h, w))
    return np.clip(a, 0, 255).astype(np.uint8)


def _pil(arr: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def dicom_dataset(stored: np.ndarray, bits: int = 16, phi: bool = True):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "CR"
    if phi:
        for key, value in PHI_ELEMENTS:
            setattr(ds, key, value)
        ds.PatientBirthDate = "19400101"
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    return ds


def dicom_bytes(ds, **kw: object) -> bytes:
    import pydicom

    buf = io.BytesIO()
    if kw:
        pydicom.dcmwrite(buf, ds, **kw)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_seeds() -> dict[str, bytes]:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

    stored = (grey().astype(np.uint16) * 16).astype(np.uint16)
    seeds: dict[str, bytes] = {"native.dcm": dicom_bytes(dicom_dataset(stored))}
    ds = dicom_dataset(4095 - stored)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 3000, 6000
    seeds["mono1-window.dcm"] = dicom_bytes(ds)
    ds = dicom_dataset(stored)
    del ds.file_meta
    seeds["no-preamble.dcm"] = dicom_bytes(
        ds, implicit_vr=True, little_endian=True, enforce_file_format=False
    )
    for name, syntax in (("rle.dcm", RLELossless), ("j2k.dcm", JPEG2000Lossless)):
        ds = dicom_dataset(stored)
        ds.compress(syntax, encoding_plugin="pydicom" if syntax == RLELossless else "pylibjpeg")
        seeds[name] = dicom_bytes(ds)
    s8 = grey(80, 64, 3)
    ds = dicom_dataset(s8, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([_pil(s8, "JPEG", quality=90)])
    ds["PixelData"].VR = "OB"
    seeds["jpeg.dcm"] = dicom_bytes(ds)
    frames = np.stack([stored, stored // 2, stored // 3])
    ds = dicom_dataset(stored)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype(np.uint16).tobytes()
    seeds["multiframe.dcm"] = dicom_bytes(ds)
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm", download=False)
        if path:
            seeds["jpegls.dcm"] = Path(path).read_bytes()
    except (ImportError, OSError, ValueError, TypeError):
        pass
    return seeds


def phantom_seeds() -> dict[str, bytes]:
    """Small valid files of every format and variant the readers take (deterministic)."""
    a = grey()
    rgb = np.stack([a] * 3, -1)
    seeds = {
        "l8.png": _pil(a, "PNG"),
        "l16.png": _pil((a.astype(np.uint16) * 257).astype(np.uint16), "PNG"),
        "rgb.png": _pil(rgb, "PNG"),
        "l.jpg": _pil(a, "JPEG", quality=90),
        "rgb.jpg": _pil(rgb, "JPEG", quality=90),
        "l.bmp": _pil(a, "BMP"),
        "rgb.bmp": _pil(rgb, "BMP"),
        "l8.tif": _pil(a, "TIFF"),
        "l16.tif": _pil((a.astype(np.uint16) * 257).astype(np.uint16), "TIFF"),
        "f32.tif": _pil(a.astype(np.float32) / 255, "TIFF"),
        "lzw.tif": _pil(a, "TIFF", compression="tiff_lzw"),
    }
    seeds.update(_dicom_seeds())
    return seeds


def real_seeds(limit: int = 4) -> dict[str, bytes]:
    """A few real radiographs (JPEG and PNG) from ../shared/data, where present."""
    out: dict[str, bytes] = {}
    candidates = sorted((SHARED / "ra2-dream-sample").glob("*-?H.jpg"))[:2]
    candidates += sorted((SHARED / "rsna-boneage-sample").glob("*.png"))[:1]
    candidates += sorted((SHARED / "rsna-boneage-100px" / "images").glob("*.png"))[:2]
    for p in candidates[:limit]:
        out[f"real-{p.name}"] = p.read_bytes()
    return out


# --------------------------------------------------------------------------- mutations

#: A mutation: (operation, position in [0, 1], value, length).
Mutation = tuple[str, float, int, int]
OPS = (
    "flip",
    "set",
    "truncate",
    "insert",
    "delete",
    "repeat",
    "int16",
    "int32",
    "header",
    "dicom-vr",
    "dicom-len",
    "dicom-value",
)
_EXTREMES = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"}


def dicom_elements(data: bytes) -> list[int]:
    """Offsets of the explicit-VR little-endian element headers (tag, VR, length)."""
    pos, out = (132 if data[128:132] == b"DICM" else 0), []
    while pos + 8 <= len(data) and len(out) < 400:
        vr = data[pos + 4 : pos + 6]
        if not (vr.isalpha() and vr.isupper()):
            break
        out.append(pos)
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8) if pos + 12 <= len(data) else (0,)
            if length == 0xFFFFFFFF:
                break
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8 + length
    return out


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """Apply mutations in order; positions are fractions of the current length."""
    b = bytearray(data)
    for op, frac, value, length in mutations:
        n = len(b)
        if n == 0:
            break
        at = min(int(frac * n), n - 1)
        if op == "flip":
            b[at] ^= 1 << (value % 8)
        elif op == "set":
            b[at] = value % 256
        elif op == "truncate":
            del b[max(at, 1) :]
        elif op == "insert":
            b[at:at] = random.Random(value).randbytes(length)
        elif op == "delete":
            del b[at : at + length]
        elif op == "repeat":
            b[at:at] = b[at : at + length] * (1 + value % 8)
        elif op in ("int16", "int32"):
            size = 2 if op == "int16" else 4
            at = min(at, n - size)
            if at >= 0:
                v = _EXTREMES[value % len(_EXTREMES)] & (0xFFFF if size == 2 else 0xFFFFFFFF)
                fmt = ("<" if value & 64 else ">") + ("H" if size == 2 else "I")
                struct.pack_into(fmt, b, at, v)
        elif op == "header":  # most structure sits in the first bytes
            at = int(frac * min(n, 600)) % n
            b[at] = value % 256
        else:
            _mutate_dicom(b, op, frac, value, length)
    return bytes(b)


def _mutate_dicom(b: bytearray, op: str, frac: float, value: int, length: int) -> None:
    elements = dicom_elements(bytes(b))
    if not elements:
        return
    pos = elements[min(int(frac * len(elements)), len(elements) - 1)]
    rng = random.Random(value)
    if op == "dicom-vr":
        choice = rng.choice((b"ZZ", b"XX", b"\x00\x01", b"OB", b"UN", b"SQ", b"US", b"FD", b"AT"))
        b[pos + 4 : pos + 6] = choice
    elif op == "dicom-len":
        vr = bytes(b[pos + 4 : pos + 6])
        v = _EXTREMES[value % len(_EXTREMES)]
        if vr in _LONG_VRS and pos + 12 <= len(b):
            struct.pack_into("<I", b, pos + 8, v & 0xFFFFFFFF)
        else:
            struct.pack_into("<H", b, pos + 6, (v if value % 3 else 400) & 0xFFFF)
    else:
        start = pos + 8
        b[start : start + length] = rng.randbytes(min(length, max(len(b) - start, 0)))


def random_mutations(rng: random.Random) -> list[Mutation]:
    """The same kind of mutation list hypothesis draws, from a seeded generator."""
    return [
        (rng.choice(OPS), rng.random(), rng.getrandbits(32), rng.randint(1, 64))
        for _ in range(rng.randint(1, 4))
    ]


# --------------------------------------------------------------------------- the contract


@dataclass
class Outcome:
    kind: str  # "ok", "refused", "foreign", "broken-contract"
    detail: str = ""


def check_contract(data: bytes, name: str = "fuzz.bin") -> Outcome:
    """Read ``data``; the contract: a valid Radiograph or one one-line BadRadiographError
    naming the file, never quoting patient data."""
    from svdh.core.errors import BadRadiographError
    from svdh.core.io import read_radiograph_bytes

    try:
        rad = read_radiograph_bytes(data, name, max_pixels=FUZZ_MAX_PIXELS)
    except BadRadiographError as exc:
        msg = str(exc)
        if "\n" in msg or not msg.startswith(name) or PHI in msg:
            return Outcome("broken-contract", f"bad message: {msg[:200]!r}")
        return Outcome("refused", msg)
    except Exception as exc:  # noqa: BLE001  (counting them is the point)
        return Outcome("foreign", f"{type(exc).__name__}: {str(exc)[:200]}")
    px = rad.pixels
    problems = []
    if px.ndim != 2 or px.dtype != np.float32:
        problems.append(f"pixels {px.shape} {px.dtype}")
    elif not np.isfinite(px).all() or px.min() < 0 or px.max() > 1:
        problems.append("pixels outside [0, 1] or not finite")
    elif (rad.meta.get("width"), rad.meta.get("height")) != (px.shape[1], px.shape[0]):
        problems.append("meta width/height disagree with the pixels")
    if any(PHI in str(n) for n in rad.meta.get("decoder_notes", [])):
        problems.append("a decoder note quotes patient data")
    if problems:
        return Outcome("broken-contract", "; ".join(problems))
    return Outcome("ok")
