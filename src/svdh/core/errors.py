"""Error types a user can act on.

Every error that reaches the command line is one of these: the CLI prints
``error: <message>`` on one line and exits with a non-zero code, no stack trace.
Messages name the file, row or option at fault and say what to do.
"""

from __future__ import annotations


class SvdhError(Exception):
    """Base class of all errors meant for the user."""

    exit_code = 2


class BadRadiographError(SvdhError):
    """An image file that cannot be read as a radiograph."""


class BadDatasetError(SvdhError):
    """A data source, manifest, CSV or label that is missing, malformed or out of range."""


class BadConfigError(SvdhError):
    """An invalid option, experiment file or combination of settings."""


class BadBundleError(SvdhError):
    """A model bundle that is corrupt, tampered with or from an incompatible version."""


class BadRunError(SvdhError):
    """A run or ensemble directory that is incomplete or inconsistent."""


class WeightsUnavailableError(SvdhError):
    """Pretrained weights that cannot be found locally nor downloaded."""


#: Longest echoed value (characters) before it is cut with "...".
ECHO_LIMIT = 80


def quote(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as a quoted, escaped, length-limited token for a one-line message.

    Everything a user or a file supplied (a CSV cell, a path, a DICOM UID or patient id) goes
    through here before it is echoed: control characters (newline, NUL, escape sequences) are
    escaped, so a message stays one line and a terminal never interprets them, and a long
    value is cut. ``quote("a\\nb")`` gives ``'a\\\\nb'``.
    """
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    cut = len(text) > limit
    text = text[:limit]
    out = repr(text)
    return out[:-1] + "...'" if cut else out


def scrub(message: object, limit: int = 160) -> str:
    """A library's warning or exception text made safe for a log: one line, no file content.

    Decoders (pydicom, Pillow) quote the values they choke on, and a malformed element's
    "value" can run on into the next elements (the patient's name and id). Everything from the
    first quote on is dropped, as is anything that is not printable ASCII, so what remains is
    the library's own wording (``"The value length (399) exceeds the maximum length of 64
    allowed for VR UI. Invalid value for VR UI"``).
    """
    text = str(message)
    if isinstance(message, BaseException) and not text:
        text = type(message).__name__
    cuts = [i for i in (text.find(q) for q in ("'", '"', "\n", "\r", "\x00")) if i >= 0]
    if cuts:
        text = text[: min(cuts)]
    text = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in text)
    text = " ".join(text.split()).rstrip(" :=,(")
    if text.endswith(" b"):  # the prefix of a bytes literal b'...'
        text = text[:-2].rstrip(" :=,(")
    return text[:limit] or "no details"


class OutOfSpaceError(SvdhError):
    """A disk that filled up while svdh was writing (ENOSPC / EDQUOT)."""


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system saying the disk (or the quota) is full."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


def out_of_space(path: object, what: str = "") -> OutOfSpaceError:
    """The one-line error for a full disk, naming the folder and its free space."""
    import os
    import shutil

    folder = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    probe = folder
    while probe and not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    try:
        free = f"{shutil.disk_usage(probe or '.').free / 1e6:,.0f} MB free"
    except OSError:
        free = "free space unknown"
    doing = f" while writing {what}" if what else ""
    return OutOfSpaceError(
        f"{quote(folder)}: no space left on the disk{doing} ({free}); nothing partial was kept "
        "under the final name: free space or choose another folder, then rerun"
    )
