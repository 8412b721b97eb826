"""Read any radiograph a user has: PNG (8/16 bit), JPEG, BMP, TIFF and DICOM.

One entry point, :func:`read_radiograph` (and :func:`read_radiograph_bytes` for data held in
memory, e.g. web uploads), returns a :class:`Radiograph`: float32 pixels in [0, 1] with bone
bright (MONOCHROME2), plus metadata. The format is recognised by content, not by file name.

DICOM goes through pydicom: the modality LUT (rescale slope/intercept), then the VOI LUT or
window where the file has one, then MONOCHROME1 is inverted. Compressed transfer syntaxes are
decoded by the pylibjpeg plugins; where the plugin is missing the error names it.

Every bad input raises :class:`svdh.core.errors.BadRadiographError` with a one-line message naming
the file and what is wrong: not an image, empty or truncated, zero size, more pixels than the
configured limit (decompression bombs), a shape no radiograph has, NaN or infinite pixels, or a
colour photograph. No other exception escapes the two readers (a property test mutating files of
every format checks it: tests/test_hardening_fuzz.py, benchmarks/fuzz_readers.py).

Memory stays bounded whatever the file claims: width x height x frames is checked against the
pixel limit from the header, before decoding; an image more than :data:`MAX_ASPECT` times longer
than wide is refused; and an image whose longer side exceeds sqrt(limit) is reduced at decode
(JPEG draft mode, else block averaging) so that padding it to a square later never makes more
than ``limit`` pixels. Decoder warnings never reach a log as they are (they can quote patient
data); see :func:`capture_library_messages`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import re
import stat
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from svdh.core.errors import BadRadiographError, quote, scrub

log = logging.getLogger("svdh.io")

#: Default pixel limit (width x height). Clinical radiographs are at most ~20-30 megapixels
#: (a 43 x 43 cm detector at 0.1 mm pitch is 18.5 MP); anything far beyond is refused before it
#: is decoded. Override per call (``max_pixels``) or with the environment variable SVDH_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 64_000_000

#: Longer side / shorter side beyond which a file is refused as not a radiograph. Hand, foot and
#: even long-leg films stay within 1:4; padding a 1:40 strip to a square would multiply its
#: memory by 40 (an "aspect-ratio bomb").
MAX_ASPECT = 8.0

#: Largest file read (bytes). An uncompressed 64-megapixel 16-bit DICOM is 128 MB.
MAX_FILE_BYTES = 1 << 30

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


def safe_name(name: object) -> str:
    """A file name as echoed in messages: unchanged when printable, else quoted and escaped."""
    text = os.fspath(name) if isinstance(name, os.PathLike) else str(name)
    return text if text.isprintable() and len(text) <= 300 else quote(text, 300)


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
    greyscale radiograph within ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`), and for
    anything that is not a regular file (a FIFO or device is refused before it is opened, so
    it cannot block), a broken symbolic link or a symbolic-link loop.
    """
    p = Path(path)
    name = safe_name(p)
    data = _read_file(p, name)
    return read_radiograph_bytes(data, str(p), max_pixels=max_pixels)


def _read_file(p: Path, name: str) -> bytes:
    """The bytes of a regular file; one-line errors for everything else (never blocks)."""
    if "\x00" in str(p):
        raise BadRadiographError(f"{name}: the path contains a NUL byte; not a file name")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise BadRadiographError(
                f"{name}: a broken symbolic link (its target {safe_name(os.readlink(p))} does "
                "not exist)"
            ) from None
        raise BadRadiographError(f"{name}: file not found") from None
    except OSError as exc:
        raise BadRadiographError(f"{name}: {_os_reason(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadRadiographError(f"{name}: is a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise BadRadiographError(f"{name}: {_file_kind(st.st_mode)}, not a regular image file")
    if st.st_size > MAX_FILE_BYTES:
        raise BadRadiographError(
            f"{name}: {st.st_size:,} bytes is larger than any radiograph (limit "
            f"{MAX_FILE_BYTES:,} bytes)"
        )
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the stat, open() still
        # returns at once, and the fstat below refuses it.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise BadRadiographError(f"{name}: {_os_reason(exc)}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadRadiographError(f"{name}: not a regular image file")
        try:
            return fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise BadRadiographError(f"{name}: {_os_reason(exc)}") from None


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop (the link points back to itself); fix or remove the link"
    if exc.errno == errno.EACCES:
        return "permission denied; check the file's permissions"
    if exc.errno == errno.EISDIR:
        return "is a folder, not an image file"
    return f"cannot be read ({exc.strerror or type(exc).__name__})"


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def read_radiograph_bytes(data: bytes, name: str, max_pixels: int | None = None) -> Radiograph:
    """Decode a radiograph held in memory; ``name`` is used in metadata and error messages.

    The one error it raises is :class:`BadRadiographError`, whatever the decoders do with a
    damaged file. Their warnings never reach the terminal or a log as they are (they may quote
    patient data): they are kept, scrubbed, in ``meta["decoder_notes"]`` and reported in one
    line on the ``svdh.io`` logger.
    """
    label = safe_name(name)
    limit = _max_pixels(max_pixels)
    with capture_library_messages() as notes:
        try:
            rad = _decode(bytes(data), name, label, limit)
        except BadRadiographError:
            raise
        except MemoryError:
            raise BadRadiographError(
                f"{label}: not enough memory to decode this image; lower SVDH_MAX_PIXELS or "
                "free memory"
            ) from None
        except Exception as exc:  # the contract: a damaged file never raises anything else
            raise BadRadiographError(
                f"{label}: damaged or unsupported image data ({type(exc).__name__}: "
                f"{scrub(exc)}); re-export or re-copy it"
            ) from None
    if notes:
        rad.meta["decoder_notes"] = list(dict.fromkeys(notes))
        _report_notes(label, rad.meta["decoder_notes"])
    return rad


#: Files whose decoder warnings get their own log line; later ones are counted at DEBUG level.
NOTE_LINES = 10
_NOTED = {"files": 0}


def _report_notes(label: str, unique: list[str]) -> None:
    with _CAPTURE_LOCK:
        _NOTED["files"] += 1
        n = _NOTED["files"]
    level = logging.WARNING if n <= NOTE_LINES else logging.DEBUG
    log.log(
        level,
        "%s: read, with %d decoder warning(s) (scrubbed of file content): %s",
        label,
        len(unique),
        "; ".join(unique)[:300],
    )
    if n == NOTE_LINES:
        log.warning("decoder warnings of further files are not shown (set svdh.io to DEBUG)")


def _decode(data: bytes, name: str, label: str, limit: int) -> Radiograph:
    if len(data) == 0:
        raise BadRadiographError(f"{label}: the file is empty (0 bytes); re-export or re-copy it")
    kind = sniff_format(data)
    if kind == "dicom":
        return _read_dicom(data, name, label, limit)
    if kind == "png":
        _check_png_header(data, label, limit)
    if kind is None:
        hint = ""
        head = data[:64].lstrip()
        if head[:1] in (b"<", b"{", b"[") or _looks_like_text(data[:512]):
            hint = " (it looks like a text file)"
        raise BadRadiographError(
            f"{label}: not an image{hint}; expected PNG, JPEG, BMP, TIFF or DICOM"
        )
    return _read_raster(data, name, label, limit)


# --------------------------------------------------------------------------- library messages

_CAPTURE_LOCK = threading.Lock()
_CAPTURE: dict[str, Any] = {"depth": 0, "cm": None, "shown": None}
_BUCKETS: dict[int, list[str]] = {}
#: Warnings of no interest to a user (Pillow's own bomb warning: our limit is stricter).
_QUIET = ("DecompressionBombWarning",)


def _route_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    bucket = _BUCKETS.get(threading.get_ident())
    if bucket is None:  # another thread, not reading a file: hand it on unchanged
        shown = _CAPTURE["shown"]
        if shown is not None:
            shown(message, category, filename, lineno, file, line)
        return
    if category.__name__ not in _QUIET:
        bucket.append(scrub(message))


class _LibraryLogFilter(logging.Filter):
    """On pydicom's and Pillow's loggers: records made while this thread reads a file join
    its notes; any other record is scrubbed, so no logged line quotes file content."""

    def filter(self, record: logging.LogRecord) -> bool:
        bucket = _BUCKETS.get(threading.get_ident())
        text = scrub(record.getMessage())
        if bucket is not None:
            if record.levelno >= logging.WARNING:
                bucket.append(text)
            return False
        record.msg, record.args = text, ()
        return True


_LOG_FILTER = _LibraryLogFilter()


def _install_log_filters() -> None:
    import PIL.Image
    import pydicom.pixels  # noqa: F401  (registers the pydicom loggers)

    PIL.Image.init()  # import the format plugins, whose loggers get the filter too
    # Logger filters do not apply to records of child loggers: each one gets it. Rerun at
    # every first capture, for loggers of modules imported since.
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(("pydicom", "PIL"))]
    for n in names:
        lg = logging.getLogger(n)
        if _LOG_FILTER not in lg.filters:
            lg.addFilter(_LOG_FILTER)


@contextlib.contextmanager
def capture_library_messages() -> Iterator[list[str]]:
    """Collect, scrubbed, what pydicom and Pillow warn or log while this thread reads a file.

    ``warnings.catch_warnings`` is process-wide (not thread-safe before Python 3.14), so one
    capture is held while any thread reads, and each warning is routed to the thread that
    raised it; warnings from other threads pass through unchanged.
    """
    tid = threading.get_ident()
    notes: list[str] = []
    with _CAPTURE_LOCK:
        if _CAPTURE["depth"] == 0:
            _install_log_filters()
            cm = warnings.catch_warnings()
            cm.__enter__()
            warnings.simplefilter("always")
            _CAPTURE.update(cm=cm, shown=warnings.showwarning)
            warnings.showwarning = _route_warning
        _CAPTURE["depth"] += 1
        outer = _BUCKETS.get(tid)
        _BUCKETS[tid] = notes
    try:
        yield notes
    finally:
        with _CAPTURE_LOCK:
            if outer is None:
                _BUCKETS.pop(tid, None)
            else:
                _BUCKETS[tid] = outer
                outer.extend(notes)
            _CAPTURE["depth"] -= 1
            if _CAPTURE["depth"] == 0:
                cm = _CAPTURE["cm"]
                _CAPTURE.update(cm=None, shown=None)
                cm.__exit__(None, None, None)


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

        with capture_library_messages():  # the sniffer's parse warns like the reader's
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


def _check_limit(width: int, height: int, name: str, limit: int, frames: int = 1) -> None:
    """Refuse, from the header, before decoding: too many pixels, or a shape no film has."""
    total = width * height * max(frames, 1)
    if total > limit:
        what = f"{width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
        raise BadRadiographError(
            f"{name}: {what} = {total:,} pixels exceeds the limit of "
            f"{limit:,} (a guard against decompression bombs); raise it with max_pixels or "
            "SVDH_MAX_PIXELS if the image is genuine"
        )
    long, short = max(width, height), max(min(width, height), 1)
    if long / short > MAX_ASPECT:
        raise BadRadiographError(
            f"{name}: {width} x {height} pixels is a {long / short:.0f}:1 strip, not a "
            f"radiograph (at most {MAX_ASPECT:g}:1 is accepted)"
        )


def _reduction(width: int, height: int, limit: int) -> int:
    """Integer factor that brings the longer side to at most sqrt(limit): the square the
    image is later padded to then holds at most ``limit`` pixels."""
    side = max(math.isqrt(max(limit, 1)), 1)
    return max(1, math.ceil(max(width, height) / side))


def _reduce(arr: np.ndarray, k: int) -> np.ndarray:
    """Block means over k x k (the edge rows/columns beyond a multiple of k are dropped)."""
    if k <= 1:
        return arr
    h, w = (arr.shape[0] // k) * k, (arr.shape[1] // k) * k
    blocks = arr[:h, :w].reshape(h // k, k, w // k, k, *arr.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _refuse_non_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind != "f":
        return
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise BadRadiographError(
            f"{name}: {bad:,} pixel(s) are NaN or infinite (floating-point image data); "
            "re-export it with finite values (e.g. as 16-bit integers)"
        )


# --------------------------------------------------------------------------- PNG/JPEG/BMP/TIFF


def _read_raster(data: bytes, name: str, label: str, limit: int) -> Radiograph:
    im, fmt = _open_raster(data, label, limit)
    width, height = im.size
    k = _reduction(width, height, limit)
    try:
        if k > 1 and fmt in ("JPEG", "MPO"):
            # Decode at 1/2, 1/4 or 1/8 scale in the DCT domain: the full image is never made.
            im.draft(im.mode, (math.ceil(width / k), math.ceil(height / k)))
        im.load()
        # Phones and some exporters store the orientation in EXIF rather than in the pixels.
        im = _exif_transpose(im) if fmt in ("JPEG", "MPO", "TIFF") else im
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        msg = scrub(exc)
        what = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise BadRadiographError(
            f"{label}: {what} image file ({msg}); re-export or re-copy it"
        ) from None
    arr, meta = _raster_pixels(im, label)
    meta.update(
        source=name,
        format="JPEG" if fmt == "MPO" else ("BMP" if fmt == "DIB" else fmt),
        width=int(im.size[0]),
        height=int(im.size[1]),
        mode=im.mode,
    )
    drafted = k > 1 and fmt in ("JPEG", "MPO")
    k = _reduction(arr.shape[1], arr.shape[0], limit)
    if k > 1 or drafted:
        arr = _reduce(arr, k)
        meta.update(stored_width=width, stored_height=height)
        meta.update(width=int(arr.shape[1]), height=int(arr.shape[0]))
    return Radiograph(np.ascontiguousarray(arr, dtype=np.float32), meta)


def _open_raster(data: bytes, label: str, limit: int) -> tuple[Any, str]:
    """Open (header only) and check format, size and shape before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        im: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadRadiographError(
            f"{label}: {scrub(exc)}; it exceeds Pillow's decompression-bomb limit"
        ) from None
    except UnidentifiedImageError:
        raise BadRadiographError(
            f"{label}: not a readable image (the header is damaged or the format unsupported)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRadiographError(f"{label}: truncated or corrupt image ({scrub(exc)})") from None
    fmt = im.format or "?"
    if fmt not in _PIL_FORMATS:
        raise BadRadiographError(
            f"{label}: {fmt} images are not supported; convert it to PNG, JPEG, TIFF or DICOM"
        )
    width, height = im.size
    if width == 0 or height == 0:
        raise BadRadiographError(f"{label}: zero-size image ({width} x {height} pixels)")
    _check_limit(width, height, label, limit)
    return im, fmt


def _exif_transpose(im: Any) -> Any:
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except (KeyError, TypeError, ZeroDivisionError):  # a damaged EXIF block: keep the pixels
        return im


def _raster_pixels(im: Any, label: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decoded Pillow image -> float32 [0, 1] grey pixels and what the mode says."""
    mode = im.mode
    meta: dict[str, Any] = {}
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = _unit(np.asarray(im), 65535.0)
        meta.update(bit_depth=16, photometric="MONOCHROME2")
    elif mode == "I":
        raw = np.asarray(im)
        # 16-bit PNG/TIFF may arrive as 32-bit ints; scale by the range actually possible.
        top = 65535.0 if raw.max(initial=0) <= 65535 and raw.min(initial=0) >= 0 else None
        arr = _stretch(raw.astype(np.float64), top)
        meta.update(bit_depth=16 if top else 32, photometric="MONOCHROME2")
    elif mode == "F":
        raw = np.asarray(im, dtype=np.float32)
        _refuse_non_finite(raw, label)
        arr = _stretch(raw.astype(np.float64), None)
        meta.update(bit_depth=32, photometric="MONOCHROME2")
    elif mode in ("L", "1"):
        arr = _unit(np.asarray(im if mode == "L" else im.convert("L")), 255.0)
        meta.update(bit_depth=1 if mode == "1" else 8, photometric="MONOCHROME2")
    elif mode in ("LA", "La"):
        arr = _unit(np.asarray(im.getchannel(0)), 255.0)
        meta.update(bit_depth=8, photometric="MONOCHROME2")
    else:  # RGB, RGBA, P, CMYK, YCbCr ...: accept only when it is grey stored as colour
        rgb_im = im.convert("RGB")
        _refuse_colour(np.asarray(rgb_im), label)
        # Grey stored as RGB: the luma conversion is the grey value (R = G = B up to noise).
        arr = _unit(np.asarray(rgb_im.convert("L")), 255.0)
        meta.update(bit_depth=8, photometric="RGB")
    if arr.ndim != 2:
        raise BadRadiographError(f"{label}: unexpected pixel layout {arr.shape} for mode {mode}")
    return arr, meta


def _unit(raw: np.ndarray, top: float) -> np.ndarray:
    """Integer pixels to float32 in [0, 1], in place (one float copy, not two)."""
    out = raw.astype(np.float32)
    out /= np.float32(top)
    return out


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


def _read_dicom(data: bytes, name: str, label: str, limit: int) -> Radiograph:
    ds = _parse_dicom(data, label)
    rows, cols = _int_tag(ds, "Rows", 0, label), _int_tag(ds, "Columns", 0, label)
    n_frames = max(_int_tag(ds, "NumberOfFrames", 1, label), 1)
    if rows == 0 or cols == 0:
        raise BadRadiographError(f"{label}: zero-size image ({cols} x {rows} pixels)")
    _check_limit(cols, rows, label, limit, frames=n_frames)
    tsuid = _transfer_syntax(ds)
    arr = _dicom_pixels(ds, label, tsuid, n_frames)
    photometric = _text_tag(ds, "PhotometricInterpretation", "MONOCHROME2").upper()
    samples = _int_tag(ds, "SamplesPerPixel", 1, label) or 1
    want = (rows, cols) if samples == 1 else (rows, cols, samples)
    if arr.shape != want:
        raise BadRadiographError(
            f"{label}: the pixel data decodes to {arr.shape}, not the {want} that Rows, Columns "
            "and SamplesPerPixel declare (BitsAllocated or NumberOfFrames is wrong); re-export it"
        )
    _refuse_non_finite(arr, label)
    k = _reduction(cols, rows, limit)
    if k > 1:  # reduce the stored values, before any float copy is made
        arr = _reduce(arr, k)
    meta: dict[str, Any] = {
        "source": name,
        "format": "DICOM",
        "width": int(arr.shape[1]),
        "height": int(arr.shape[0]),
        "bit_depth": _int_tag(ds, "BitsStored", 0, label)
        or _int_tag(ds, "BitsAllocated", 8, label)
        or 8,
        "photometric": _meta_text(photometric),
        "transfer_syntax": tsuid,
    }
    if k > 1:
        meta.update(stored_width=cols, stored_height=rows)
    meta.update(_dicom_meta(ds))
    if n_frames > 1:
        meta["n_frames"] = n_frames

    if samples == 3 or photometric.startswith(("RGB", "YBR")):
        # pydicom's pixel_array already converts YBR to RGB.
        top = float(2 ** min(max(int(meta["bit_depth"]), 1), 32) - 1)
        rgb = np.clip(arr.astype(np.float32) / top, 0, 1)
        if rgb.ndim != 3:
            raise BadRadiographError(f"{label}: colour DICOM without 3 samples per pixel")
        _refuse_colour(rgb, label)
        return Radiograph(np.ascontiguousarray(rgb.mean(axis=2), np.float32), meta)
    if photometric == "PALETTE COLOR":
        raise BadRadiographError(
            f"{label}: a palette-colour DICOM image, not a greyscale radiograph"
        )

    values = _dicom_to_unit(arr, ds, label)
    if photometric == "MONOCHROME1":
        values = 1.0 - values  # MONOCHROME1 stores bone dark; flip so bone is bright
    return Radiograph(np.ascontiguousarray(values, np.float32), meta)


#: A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1).
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _parse_dicom(data: bytes, label: str) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, struct.error, KeyError) as exc:
        raise BadRadiographError(
            f"{label}: truncated or corrupt DICOM file ({scrub(exc)})"
        ) from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = str(ds.get("SOPClassUID", "") or "")
        if not sop and "Rows" not in ds:
            raise BadRadiographError(f"{label}: not an image (no DICOM image data found)")
        if b"\xe0\x7f\x10\x00" in data[-(1 << 24) :] or b"\x7f\xe0\x00\x10" in data[-(1 << 24) :]:
            raise BadRadiographError(
                f"{label}: damaged DICOM header (an element's length or VR is wrong, so the "
                "pixel data cannot be reached); re-export or re-copy it"
            )
        if sop and len(sop) <= 64 and _UID.fullmatch(sop):
            from pydicom.uid import UID

            what = f" (SOP class {UID(sop).name})"
        else:
            what = " (with an invalid SOP Class UID)" if sop else ""
        raise BadRadiographError(f"{label}: DICOM file without pixel data{what}; not an image")
    return ds


def _int_tag(ds: Any, keyword: str, default: int, label: str) -> int:
    try:
        value = ds.get(keyword, default)
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            value = value[0] if len(value) else default
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError, OverflowError, IndexError):
        raise BadRadiographError(f"{label}: invalid {keyword} in the DICOM header") from None


def _text_tag(ds: Any, keyword: str, default: str) -> str:
    value = ds.get(keyword)
    return default if value in (None, "") else str(value)


def _meta_text(value: Any) -> str:
    """A DICOM text value for metadata: control characters escaped, at most 64 characters."""
    text = str(value)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text[:64]


def _dicom_meta(ds: Any) -> dict[str, str]:
    meta: dict[str, str] = {}
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
            meta[key] = _meta_text(value)
    return meta


def _transfer_syntax(ds: Any) -> str:
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
    return str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""


def _dicom_pixels(ds: Any, label: str, tsuid: str, n_frames: int) -> np.ndarray:
    """Decode the stored pixel values of the first frame, translating decoder failures into
    one-line errors."""
    from pydicom.pixels import pixel_array

    if tsuid in _DICOM_PLUGINS and tsuid != "1.2.840.10008.1.2.5":
        _check_codestream_end(ds, label, n_frames)
    try:
        return np.asarray(pixel_array(ds, index=0) if n_frames > 1 else ds.pixel_array)
    except (RuntimeError, NotImplementedError) as exc:
        from pydicom.uid import UID

        if tsuid in _DICOM_PLUGINS and not _decoder_available(tsuid):
            raise BadRadiographError(
                f"{label}: compressed DICOM ({UID(tsuid).name}) needs the {_DICOM_PLUGINS[tsuid]} "
                f"decoder plugin, which is not installed: pip install pylibjpeg {_DICOM_PLUGINS[tsuid]}"
            ) from None
        if tsuid in _DICOM_PLUGINS:
            raise BadRadiographError(
                f"{label}: corrupt {UID(tsuid).name} pixel data (the installed decoder "
                f"{_DICOM_PLUGINS[tsuid]} cannot read the stream); re-export or re-copy it"
            ) from None
        raise BadRadiographError(
            f"{label}: DICOM pixel data cannot be decoded ({scrub(exc)})"
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
        raise BadRadiographError(
            f"{label}: truncated or corrupt DICOM pixel data ({scrub(exc)})"
        ) from None


def _decoder_available(tsuid: str) -> bool:
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(tsuid).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def _check_codestream_end(ds: Any, label: str, n_frames: int) -> None:
    """JPEG, JPEG-LS and JPEG 2000 streams end with the marker FF D9 (EOI / EOC). Decoders fill
    in a cut stream without complaint, so check it here, as Pillow does for a plain JPEG."""
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=n_frames))
    except (StopIteration, ValueError, KeyError, struct.error, TypeError) as exc:
        raise BadRadiographError(
            f"{label}: truncated or corrupt encapsulated pixel data ({scrub(exc)})"
        ) from None
    if not bytes(frame).rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise BadRadiographError(
            f"{label}: truncated compressed pixel data (the stream has no end-of-image marker); "
            "re-export or re-copy it"
        )


def _dicom_to_unit(arr: np.ndarray, ds: Any, name: str) -> np.ndarray:
    """Modality LUT, then VOI LUT or window, then scale to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    try:
        modality = np.asarray(apply_modality_lut(arr, ds))
    except (ValueError, TypeError, KeyError) as exc:
        raise BadRadiographError(f"{name}: invalid rescale / modality LUT ({scrub(exc)})") from None
    values = modality.astype(np.float64)
    if not np.isfinite(values).all():
        raise BadRadiographError(
            f"{name}: the rescale slope / intercept give NaN or infinite values; re-export it"
        )

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
