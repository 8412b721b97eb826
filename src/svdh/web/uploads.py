"""Reading uploads safely: streaming multipart parsing in memory, size limits (the content
sniffing is :func:`svdh.core.io.sniff_format`, the same as for files).

Why not Starlette's ``request.form()``: it spools every file part over 1 MB to a temporary
file on disk, and uploaded radiographs are patient data that must not touch the disk unless
the operator asked for it (``--keep``). So the body is streamed through python-multipart's
parser (the same maintained parser Starlette uses) into in-memory buffers, and a file part is
refused the moment it grows past the limit, not after the whole body has been read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from svdh.core.errors import quote
from svdh.core.io import sniff_format

__all__ = [
    "FORMATS",
    "ParsedForm",
    "UploadError",
    "UploadedFile",
    "not_an_image",
    "parse_multipart",
    "too_large",
    "sniff_format",  # the one sniffer, svdh.core.io's: uploads are judged by content
]

#: Formats the scorer reads, named as in messages to users.
FORMATS = "PNG, JPEG, BMP, TIFF or DICOM"
#: Text fields of one form (patient_id and side once per file, and a few more), their total
#: size, and the size of one part's headers: bounds that hold for chunked bodies too.
MAX_FIELDS = 64
MAX_FIELDS_BYTES = 64 * 1024
MAX_PART_HEADER_BYTES = 8 * 1024


class UploadError(Exception):
    """An upload refused as a whole or for one file; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, filename: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.filename = filename


def too_large(filename: str, max_file_bytes: int) -> UploadError:
    """The 413 of one file over the per-file limit."""
    return UploadError(
        413,
        f"{quote(filename)} is larger than the limit of {max_file_bytes / 1e6:g} MB per file",
        filename,
    )


def not_an_image(filename: str) -> UploadError:
    """The 415 of one file whose content is no image format the scorer reads."""
    return UploadError(
        415,
        f"{quote(filename)} is not an image the scorer reads ({FORMATS}); "
        "the type is judged by the file's content, not its name",
        filename,
    )


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


class _FormReader:
    """python-multipart's callbacks, filling a :class:`ParsedForm` within the limits."""

    def __init__(
        self,
        file_field: str,
        max_file_bytes: int,
        max_files: int,
        max_field_bytes: int,
        max_oversize_drain: int,
    ) -> None:
        self.form = ParsedForm()
        self.file_field, self.max_files = file_field, max_files
        self.max_file_bytes, self.max_field_bytes = max_file_bytes, max_field_bytes
        self.max_oversize_drain = max_oversize_drain
        self.headers: dict[bytes, bytes] = {}
        self.field, self.value = b"", b""
        self.part: UploadedFile | None = None
        self.text: tuple[str, bytearray] | None = None
        self.dropped = 0
        self.n_fields = 0  # text fields, counted and bounded with their total size
        self.field_bytes = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.headers, self.part, self.text = {}, None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]
        self._header_size()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]
        self._header_size()

    def _header_size(self) -> None:
        if len(self.field) + len(self.value) > MAX_PART_HEADER_BYTES:
            raise UploadError(400, "a multipart part header is too long")

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, disp = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in disp:
            self.n_fields += 1
            if self.n_fields > MAX_FIELDS:
                raise UploadError(413, f"too many form fields: at most {MAX_FIELDS}")
            self.text = (name, bytearray())
            return
        if name != self.file_field:
            raise UploadError(
                400, f"file parts must be named '{self.file_field}', got {quote(name, 40)}"
            )
        if len(self.form.files) >= self.max_files:
            raise UploadError(
                413,
                f"too many files in one request: at most {self.max_files}; send the rest "
                "in another request",
            )
        # Browsers send only the base name; strip any path a client might add.
        fname = disp[b"filename"].decode("utf-8", "replace").replace("\\", "/").split("/")[-1]
        self.part = UploadedFile(
            filename=fname or f"file{len(self.form.files) + 1}",
            content_type=self.headers.get(b"content-type", b"").decode("latin-1"),
        )
        self.form.files.append(self.part)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part is not None:
            self._file_data(self.part, data, start, end)
        elif self.text is not None:
            name, buf = self.text
            if len(buf) + end - start > self.max_field_bytes:
                raise UploadError(413, f"form field {quote(name, 40)} is too long")
            self.field_bytes += end - start
            if self.field_bytes > MAX_FIELDS_BYTES:
                raise UploadError(
                    413, f"the form fields are too long in all (at most {MAX_FIELDS_BYTES:,} bytes)"
                )
            buf += data[start:end]

    def _file_data(self, part: UploadedFile, data: bytes, start: int, end: int) -> None:
        n = end - start
        part.size += n
        if not part.oversize and part.size <= self.max_file_bytes:
            part.data += data[start:end]
            return
        if not part.oversize:
            part.oversize = True
            self.dropped += len(part.data)
            part.data = bytearray()  # free what was held: it will never be scored
        self.dropped += n
        if self.dropped > self.max_oversize_drain:
            raise too_large(part.filename, self.max_file_bytes)

    def on_part_end(self) -> None:
        if self.text is not None:
            name, buf = self.text
            self.form.fields.setdefault(name, []).append(buf.decode("utf-8", "replace").strip())
        self.part, self.text = None, None


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
    reader = _FormReader(file_field, max_file_bytes, max_files, max_field_bytes, max_oversize_drain)
    parser = MultipartParser(boundary, cast(Any, reader.callbacks()))
    try:
        async for chunk in stream:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    return reader.form
