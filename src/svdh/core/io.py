"""Read any radiograph a user has: PNG (8/16 bit), JPEG, BMP, TIFF and DICOM.

One entry point, :func:`read_radiograph` (and :func:`read_radiograph_bytes` for data held in
memory, e.g. web uploads), returns a :class:`Radiograph`: float32 pixels in [0, 1] with bone
bright (MONOCHROME2), plus metadata. The format is recognised by content, not by file name.

DICOM goes through pydicom: the modality LUT (rescale slope/intercept), then the VOI LUT or
window where the file has one, then MONOCHROME1 is inverted. Compressed transfer syntaxes are
decoded by the pylibjpeg plugins; where the plugin is missing the error names it.

Every bad input raises :class:`svdh.core.errors.BadRadiographError` with a one-line message naming
the file and what is wrong: not an image, empty or truncated, zero size, more pixels than the
configured limit (decompression bombs), or a colour photograph.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadRadiographError

#: Default pixel limit (width x height). Clinical radiographs are at most ~20-30 megapixels
#: (a 43 x 43 cm detector at 0.1 mm pitch is 18.5 MP); anything far beyond is refused before it
#: is decoded. Override per call (``max_pixels``) or with the environment variable SVDH_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 64_000_000

#: Raster formats read through Pillow, by Pillow's format name.
_PIL_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF"}

#: The pylibjpeg plugin that decodes each compressed DICOM transfer syntax, by UID.
_DICOM_PLUGINS: dict[str, str] = {
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.81",
        ),
        "pylibjpeg-libjpeg",
    ),
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
        ),
        "pylibjpeg-openjpeg",
    ),
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}


@dataclass
class Radiograph:
    """A decoded radiograph.

    ``pixels``: float32 H x W in [0, 1], bright = bone (MONOCHROME2).
    ``meta``: ``source`` (path or name), ``format``, ``width``, ``height``, ``bit_depth``,
    ``photometric`` (as stored: MONOCHROME1/2, RGB...), and for DICOM where present
    ``patient_id``, ``patient_sex`` (M, F or O), ``study_date``, ``laterality`` (and
    ``view``, ``body_part``).
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))


def _max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get("SVDH_MAX_PIXELS")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise BadRadiographError(
                f"SVDH_MAX_PIXELS={env!r} is not a number; set it to a pixel count such as 64000000"
            ) from None
    return DEFAULT_MAX_PIXELS


def read_radiograph(path: str | os.PathLike[str], max_pixels: int | None = None) -> Radiograph:
    """Read one radiograph file (PNG, JPEG, BMP, TIFF or DICOM) into a :class:`Radiograph`.

    Raises :class:`BadRadiographError` naming ``path`` for any file that is not a readable
    greyscale radiograph within ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`).
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadRadiographError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise BadRadiographError(f"{p}: is a folder, not an image file") from None
    except OSError as exc:
        raise BadRadiographError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    return read_radiograph_bytes(data, str(p), max_pixels=max_pixels)


def read_radiograph_bytes(data: bytes, name: str, max_pixels: int | None = None) -> Radiograph:
    """Decode a radiograph held in memory; ``name`` is used in metadata and error messages."""
    limit = _max_pixels(max_pixels)
    if len(data) == 0:
        raise BadRadiographError(f"{name}: the file is empty (0 bytes); re-export or re-copy it")
    kind = sniff_format(data)
    if kind == "dicom":
        return _read_dicom(data, name, limit)
    if kind == "png":
        _check_png_header(data, name, limit)
    if kind is None:
        hint = ""
        head = data[:64].lstrip()
        if head[:1] in (b"<", b"{", b"[") or _looks_like_text(data[:512]):
            hint = " (it looks like a text file)"
        raise BadRadiographError(
            f"{name}: not an image{hint}; expected PNG, JPEG, BMP, TIFF or DICOM"
        )
    return _read_raster(data, name, limit)


# --------------------------------------------------------------------------- format detection


#: Magic numbers of the raster formats, by the name :func:`sniff_format` gives.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
)
#: First tags of DICOM data sets written without the 128-byte preamble (old ACR-NEMA style
#: exports), little-endian: group 0002 (file meta) or 0008 (identification) element numbers.
_RAW_DICOM_STARTS = (
    b"\x02\x00\x00\x00",
    b"\x02\x00\x01\x00",
    b"\x08\x00\x05\x00",
    b"\x08\x00\x00\x00",
    b"\x08\x00\x08\x00",
    b"\x08\x00\x16\x00",
)
#: The smallest BMP: a 14-byte file header and a 12-byte core header ("BM" alone is too weak).
_BMP_MIN_BYTES = 26


def sniff_format(data: bytes | bytearray) -> str | None:
    """The image format of ``data`` judged by its content ("magic numbers"), never by its name.

    Returns ``png``, ``jpeg``, ``bmp``, ``tiff`` or ``dicom``, or None for anything else (the
    one sniffer: :func:`read_radiograph_bytes` and the web uploads both use it). DICOM is
    recognised by ``DICM`` at offset 128 (Part 10 files) and, for data sets written without the
    preamble, by a group 0002/0008 first tag: one of the usual first elements, or any element
    of those groups where pydicom then reads a data set with image rows and columns.
    """
    head = bytes(data[:132])
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            if fmt == "bmp" and len(data) < _BMP_MIN_BYTES:
                return None
            return fmt
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in _RAW_DICOM_STARTS or _looks_like_raw_dicom(data):
        return "dicom"
    return None


def _looks_like_raw_dicom(data: bytes | bytearray) -> bool:
    """DICOM without the preamble starting at another group 0002/0008 tag: demand real image
    attributes, since pydicom's ``force=True`` "reads" anything."""
    if len(data) < 16 or bytes(data[:2]) not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(bytes(data)), force=True, stop_before_pixels=True)
        return "Rows" in ds and "Columns" in ds
    except Exception:  # any decoder error means: not a DICOM data set
        return False


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable / len(head) > 0.95


def _check_png_header(data: bytes, name: str, limit: int) -> None:
    # Pillow refuses a PNG whose IHDR says 0 x N with "cannot identify image file", which would
    # read as "not an image"; the header tells us the real problem, so read it ourselves.
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise BadRadiographError(f"{name}: truncated PNG (the header is incomplete)")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise BadRadiographError(f"{name}: zero-size image ({width} x {height} pixels)")
    _check_limit(width, height, name, limit)


def _check_limit(width: int, height: int, name: str, limit: int) -> None:
    if width * height > limit:
        raise BadRadiographError(
            f"{name}: {width} x {height} = {width * height:,} pixels exceeds the limit of "
            f"{limit:,} (a guard against decompression bombs); raise it with max_pixels or "
            "SVDH_MAX_PIXELS if the image is genuine"
        )


# --------------------------------------------------------------------------- PNG/JPEG/BMP/TIFF


def _read_raster(data: bytes, name: str, limit: int) -> Radiograph:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadRadiographError(
            f"{name}: {exc}; it exceeds Pillow's decompression-bomb limit"
        ) from None
    except UnidentifiedImageError:
        raise BadRadiographError(
            f"{name}: not a readable image (the header is damaged or the format unsupported)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRadiographError(f"{name}: truncated or corrupt image ({exc})") from None
    fmt = im.format or "?"
    if fmt not in _PIL_FORMATS:
        raise BadRadiographError(
            f"{name}: {fmt} images are not supported; convert it to PNG, JPEG, TIFF or DICOM"
        )
    width, height = im.size
    if width == 0 or height == 0:
        raise BadRadiographError(f"{name}: zero-size image ({width} x {height} pixels)")
    _check_limit(width, height, name, limit)
    try:
        im.load()
        # Phones and some exporters store the orientation in EXIF rather than in the pixels.
        im = ImageOps.exif_transpose(im) if fmt in ("JPEG", "MPO", "TIFF") else im
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        msg = str(exc)
        what = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise BadRadiographError(
            f"{name}: {what} image file ({msg}); re-export or re-copy it"
        ) from None
    mode = im.mode
    meta: dict[str, Any] = {
        "source": name,
        "format": "JPEG" if fmt == "MPO" else ("BMP" if fmt == "DIB" else fmt),
        "width": int(im.size[0]),
        "height": int(im.size[1]),
        "mode": mode,
    }
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.float32) / 65535.0
        meta.update(bit_depth=16, photometric="MONOCHROME2")
    elif mode == "I":
        raw = np.asarray(im)
        # 16-bit PNG/TIFF may arrive as 32-bit ints; scale by the range actually possible.
        top = 65535.0 if raw.max(initial=0) <= 65535 and raw.min(initial=0) >= 0 else None
        arr = _stretch(raw.astype(np.float64), top)
        meta.update(bit_depth=16 if top else 32, photometric="MONOCHROME2")
    elif mode == "F":
        arr = _stretch(np.asarray(im, dtype=np.float64), None)
        meta.update(bit_depth=32, photometric="MONOCHROME2")
    elif mode in ("L", "1"):
        arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        meta.update(bit_depth=1 if mode == "1" else 8, photometric="MONOCHROME2")
    elif mode in ("LA", "La"):
        arr = np.asarray(im.getchannel(0), dtype=np.float32) / 255.0
        meta.update(bit_depth=8, photometric="MONOCHROME2")
    else:  # RGB, RGBA, P, CMYK, YCbCr ...: accept only when it is grey stored as colour
        rgb_im = im.convert("RGB")
        _refuse_colour(np.asarray(rgb_im), name)
        # Grey stored as RGB: the luma conversion is the grey value (R = G = B up to noise).
        arr = np.asarray(rgb_im.convert("L"), dtype=np.float32) / 255.0
        meta.update(bit_depth=8, photometric="RGB")
    return Radiograph(np.ascontiguousarray(arr, dtype=np.float32), meta)


def _stretch(arr: np.ndarray, top: float | None) -> np.ndarray:
    if top is not None:
        return (arr / top).astype(np.float32)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def colourfulness(rgb: np.ndarray) -> float:
    """Fraction of pixels whose chroma (max - min over R, G, B, scaled to [0, 1]) exceeds 0.12.

    Greyscale stored as RGB has chroma near 0 everywhere (JPEG chroma noise stays under
    ~0.05); a colour photograph has a large share of clearly coloured pixels.
    """
    sub = rgb[:: max(1, rgb.shape[0] // 512), :: max(1, rgb.shape[1] // 512)]
    if sub.dtype == np.uint8:
        sub = sub.astype(np.float32) / 255.0
    chroma = sub.max(axis=2) - sub.min(axis=2)
    return float((chroma > 0.12).mean())


def _refuse_colour(rgb: np.ndarray, name: str) -> None:
    frac = colourfulness(rgb)
    # A few percent of coloured pixels is allowed for burnt-in coloured annotations.
    if frac > 0.05:
        raise BadRadiographError(
            f"{name}: a colour photograph ({frac:.0%} of pixels are coloured), not a greyscale "
            "radiograph; export the radiograph itself (DICOM or greyscale PNG)"
        )


# --------------------------------------------------------------------------- DICOM


def _read_dicom(data: bytes, name: str, limit: int) -> Radiograph:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error, KeyError) as exc:
        raise BadRadiographError(f"{name}: truncated or corrupt DICOM file ({exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        if sop is None and "Rows" not in ds:
            raise BadRadiographError(f"{name}: not an image (no DICOM image data found)")
        what = f" (SOP class {getattr(sop, 'name', sop)})" if sop else ""
        raise BadRadiographError(f"{name}: DICOM file without pixel data{what}; not an image")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows == 0 or cols == 0:
        raise BadRadiographError(f"{name}: zero-size image ({cols} x {rows} pixels)")
    _check_limit(cols, rows, name, limit)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # A data set without the preamble and file meta (old ACR-NEMA-style exports): tell
        # pydicom the encoding it found, or it cannot decode the pixels.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        if not hasattr(ds, "file_meta"):
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    arr = _dicom_pixels(ds, name, tsuid)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        arr = arr[0]  # a radiograph is one frame; multi-frame files give their first
    meta: dict[str, Any] = {
        "source": name,
        "format": "DICOM",
        "width": cols,
        "height": rows,
        "bit_depth": int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8),
        "photometric": photometric,
        "transfer_syntax": tsuid,
    }
    for key, tag in (
        ("patient_id", "PatientID"),
        ("patient_sex", "PatientSex"),
        ("study_date", "StudyDate"),
        ("laterality", "ImageLaterality"),
        ("view", "ViewPosition"),
        ("body_part", "BodyPartExamined"),
        ("modality", "Modality"),
    ):
        value = ds.get(tag)
        if key == "laterality" and not value:
            value = ds.get("Laterality")
        if value not in (None, ""):
            meta[key] = str(value)
    if n_frames > 1:
        meta["n_frames"] = n_frames

    if samples == 3 or photometric.startswith(("RGB", "YBR")):
        # pydicom's pixel_array already converts YBR to RGB.
        top = float(2 ** int(ds.get("BitsStored", 8) or 8) - 1)
        rgb = np.clip(arr.astype(np.float32) / top, 0, 1)
        _refuse_colour(rgb, name)
        return Radiograph(np.ascontiguousarray(rgb.mean(axis=2), np.float32), meta)
    if photometric == "PALETTE COLOR":
        raise BadRadiographError(
            f"{name}: a palette-colour DICOM image, not a greyscale radiograph"
        )

    values = _dicom_to_unit(arr, ds, name)
    if photometric == "MONOCHROME1":
        values = 1.0 - values  # MONOCHROME1 stores bone dark; flip so bone is bright
    return Radiograph(np.ascontiguousarray(values, np.float32), meta)


def _dicom_pixels(ds: Any, name: str, tsuid: str) -> np.ndarray:
    """Decode the stored pixel values, translating decoder failures into one-line errors."""
    try:
        return np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        if tsuid in _DICOM_PLUGINS and (
            "plugin" in msg.lower()
            or "no pixel data decoders" in msg.lower()
            or "available" in msg.lower()
        ):
            from pydicom.uid import UID

            raise BadRadiographError(
                f"{name}: compressed DICOM ({UID(tsuid).name}) needs the {_DICOM_PLUGINS[tsuid]} "
                f"decoder plugin, which is not installed: pip install pylibjpeg {_DICOM_PLUGINS[tsuid]}"
            ) from None
        raise BadRadiographError(
            f"{name}: DICOM pixel data cannot be decoded ({msg.splitlines()[0]})"
        ) from None
    except (
        ValueError,
        AttributeError,
        KeyError,
        EOFError,
        OSError,
        struct.error,
        TypeError,
    ) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadRadiographError(
            f"{name}: truncated or corrupt DICOM pixel data ({first})"
        ) from None


def _dicom_to_unit(arr: np.ndarray, ds: Any, name: str) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, then scale to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        modality = np.asarray(apply_modality_lut(arr, ds))
    except (ValueError, TypeError, KeyError) as exc:
        raise BadRadiographError(f"{name}: invalid rescale / modality LUT ({exc})") from None
    values = modality.astype(np.float64)

    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        # A VOI LUT maps values to the LUT's own output range; normalise by that range.
        try:
            item = voi_seq[0]
            # A LUT is indexed by integer values (rescaled values are integral in practice).
            lut_in = modality if modality.dtype.kind in "iu" else np.rint(modality).astype(np.int64)
            out = np.asarray(apply_voi(lut_in, ds, index=0), dtype=np.float64)
            lut = np.asarray(item.LUTData, dtype=np.float64)
            lo, hi = float(lut.min()), float(lut.max())
            if hi > lo:
                return np.clip((out - lo) / (hi - lo), 0.0, 1.0)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            pass  # fall back to the window or the full range below
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        # PS3.3 C.11.2.1.2 written out: pydicom's apply_windowing returns values on the
        # stored-value scale, whose bounds swap when the rescale slope is negative, so the
        # [0, 1] ramp is computed here directly.
        func = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if func == "SIGMOID":
            return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        if func == "LINEAR_EXACT":
            return np.clip((values - center) / width + 0.5, 0.0, 1.0)
        w1 = max(width - 1.0, 1e-6)
        return np.clip((values - (center - 0.5)) / w1 + 0.5, 0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float64)
    return (values - lo) / (hi - lo)


def _first(value: Any) -> float | None:
    """First value of a possibly multi-valued DICOM element (WindowCenter may hold several)."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes, int, float)):
        try:
            value = value[0]
        except (TypeError, IndexError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
