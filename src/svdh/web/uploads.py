"""Reading uploads safely: streaming multipart parsing in memory, size limits, content sniffing.

Why not Starlette's ``request.form()``: it spools every file part over 1 MB to a temporary
file on disk, and uploaded radiographs are patient data that must not touch the disk unless
the operator asked for it (``--keep``). So the body is streamed through python-multipart's
parser (the same maintained parser Starlette uses) into in-memory buffers, and a file part is
refused the moment it grows past the limit, not after the whole body has been read.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

#: Formats the scorer reads, named as in messages to users.
FORMATS = "PNG, JPEG, BMP, TIFF or DICOM"


class UploadError(Exception):
    """An upload refused as a whole or for one file; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, filename: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.filename = filename


@dataclass
class UploadedFile:
    """One file part, held in memory; ``oversize`` when it passed the limit and was dropped."""

    filename: str
    content_type: str
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    oversize: bool = False


@dataclass
class ParsedForm:
    """The multipart form of a score request: files in order, text fields (last value wins)."""

    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def field(self, name: str) -> str | None:
        vals = self.fields.get(name)
        return vals[-1] if vals else None


async def parse_multipart(
    content_type: str | None,
    stream: AsyncIterator[bytes],
    *,
    file_field: str = "files",
    max_file_bytes: int,
    max_files: int,
    max_field_bytes: int = 16 * 1024,
    max_oversize_drain: int = 256 * 1024 * 1024,
) -> ParsedForm:
    """Parse a ``multipart/form-data`` body from ``stream`` into memory.

    A file part larger than ``max_file_bytes`` stops being stored as soon as it passes the
    limit (its bytes are counted and dropped) and is marked ``oversize``; the caller decides
    whether that refuses the request (413) or only that file. The rest of the body is still
    read (up to ``max_oversize_drain`` bytes past the limit) so the client gets the answer
    instead of a reset connection. Other malformed input raises :class:`UploadError` (400).
    """
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise UploadError(
            400,
            "send the radiographs as multipart/form-data with one or more parts named "
            f"'{file_field}'",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "the multipart/form-data request has no boundary")

    form = ParsedForm()
    state: dict = {"headers": {}, "field": b"", "value": b"", "part": None, "text": None}
    dropped = 0

    def on_part_begin() -> None:
        state["headers"] = {}
        state["part"] = None
        state["text"] = None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = b""
        state["value"] = b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disp:
            if name != file_field:
                raise UploadError(400, f"file parts must be named '{file_field}', got '{name}'")
            if len(form.files) >= max_files:
                raise UploadError(
                    413,
                    f"too many files in one request: at most {max_files}; send the rest "
                    "in another request",
                )
            # Browsers send only the base name; strip any path a client might add.
            fname = disp[b"filename"].decode("utf-8", "replace").replace("\\", "/").split("/")[-1]
            part = UploadedFile(
                filename=fname or f"file{len(form.files) + 1}",
                content_type=state["headers"].get(b"content-type", b"").decode("latin-1"),
            )
            form.files.append(part)
            state["part"] = part
        else:
            state["text"] = (name, bytearray())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal dropped
        part: UploadedFile | None = state["part"]
        n = end - start
        if part is not None:
            part.size += n
            if part.oversize or part.size > max_file_bytes:
                if not part.oversize:
                    part.oversize = True
                    dropped += len(part.data)
                    part.data = bytearray()  # free what was held: it will never be scored
                dropped += n
                if dropped > max_oversize_drain:
                    raise UploadError(
                        413,
                        f"'{part.filename}' is larger than the limit of "
                        f"{max_file_bytes / 1e6:g} MB per file",
                        part.filename,
                    )
                return
            part.data += data[start:end]
        elif state["text"] is not None:
            buf = state["text"][1]
            if len(buf) + n > max_field_bytes:
                raise UploadError(413, f"form field '{state['text'][0]}' is too long")
            buf += data[start:end]

    def on_part_end() -> None:
        if state["text"] is not None:
            name, buf = state["text"]
            form.fields.setdefault(name, []).append(buf.decode("utf-8", "replace").strip())
        state["part"] = None
        state["text"] = None

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    return form


# --------------------------------------------------------------------------- content sniffing

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
)


def sniff_format(data: bytes | bytearray) -> str | None:
    """The image format of ``data`` judged by its content, never by its name.

    Returns ``png``, ``jpeg``, ``bmp``, ``tiff`` or ``dicom``, or None for anything else.
    DICOM is recognised by ``DICM`` at offset 128 (Part 10 files) and, for files written
    without the preamble, by pydicom reading a plausible data set from the start.
    """
    head = bytes(data[:132])
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            if fmt == "bmp" and len(head) < 26:  # "BM" alone is too weak a signature
                return None
            return fmt
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if _looks_like_raw_dicom(data):
        return "dicom"
    return None


def _looks_like_raw_dicom(data: bytes | bytearray) -> bool:
    """DICOM without the 128-byte preamble: a data set starting at a group 0002/0008 tag."""
    if len(data) < 16 or bytes(data[:2]) not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(bytes(data)), force=True, stop_before_pixels=True)
        # force=True "reads" anything; demand real image attributes before calling it DICOM.
        return "Rows" in ds and "Columns" in ds
    except Exception:
        return False
