"""Visits: a patient's films over time, labelled by a visit index or a date.

A visit label is a whole number (``1``, ``2``, ... in time order; ``V2`` and ``02`` are read as
``2``), a calendar date (``2016-03-01``; ``20160301`` as DICOM writes it, ``2016/03/01`` and
``01.03.2016`` are accepted and written back as ISO dates), or a study's own word kept as it
is (``baseline``, ``y1``, ``week52``: ordered by ``baseline``/``screening`` first, then by the
number in the label). Within one patient dates and other labels cannot be mixed.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Sequence

from svdh.core.errors import BadDatasetError

_INDEX = re.compile(r"^(?:v|visit)?\s*0*(\d+)$", re.IGNORECASE)
_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%d.%m.%Y")
#: Days per year for change rates between dated visits.
DAYS_PER_YEAR = 365.25


def normalize_visit(value: object) -> str:
    """A visit label as stored in manifests: ``""`` (none), ``"3"`` or ``"2016-03-01"``.

    Raises ValueError with a one-line reason for anything else (the caller names the row).
    """
    s = "" if value is None else str(value).strip()
    if s == "" or s.lower() in ("nan", "none"):
        return ""
    if s.endswith(".0") and s[:-2].isdigit():  # a spreadsheet's float cell
        s = s[:-2]
    m = _INDEX.match(s)
    if m and len(s) < 8:  # 8 digits is a DICOM date, not an index
        return str(int(m.group(1)))
    d = parse_date(s)
    if d is not None:
        return d.isoformat()
    if len(s) > 40 or "," in s:
        raise ValueError(
            f"visit {s[:40]!r} is not a visit number, a date (YYYY-MM-DD) or a short label"
        )
    return s


def parse_date(value: object) -> _dt.date | None:
    """A date from the accepted spellings, or None."""
    s = str(value).strip()
    for fmt in _FORMATS:
        try:
            return _dt.datetime.strptime(s, fmt).date()
        except ValueError:
            continue
    return None


def is_date(label: str) -> bool:
    return parse_date(label) is not None and not label.isdigit()


_FIRST = ("baseline", "screening", "bl", "base", "v0")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


def visit_key(label: str) -> tuple[float, str]:
    """Sort key of one normalised label: numbers by value, dates by date, words as above."""
    if label.isdigit():
        return (float(label), "")
    if is_date(label):
        return (0.0, label)
    if label.lower() in _FIRST:
        return (-1.0, label)
    m = _NUMBER.search(label)
    return (float(m.group(1)) if m else math.inf, label)


def order_visits(labels: Iterable[str], *, where: str = "") -> list[str]:
    """The distinct labels of one patient in time order; dates mixed with others is an error."""
    uniq = sorted({str(v) for v in labels if str(v) != ""}, key=visit_key)
    kinds = {is_date(label) for label in uniq}
    if len(kinds) > 1:
        raise BadDatasetError(
            f"{where or 'visits'}: visit labels mix dates and other labels ({', '.join(uniq)}); "
            "use one kind per patient"
        )
    return uniq


def years_between(a: str, b: str, dates: Sequence[str] | None = None) -> float:
    """Years from visit ``a`` to ``b`` where both are dates (or ``dates`` gives them); else NaN."""
    da, db = parse_date(a) if is_date(a) else None, parse_date(b) if is_date(b) else None
    if (da is None or db is None) and dates is not None and len(dates) == 2:
        da, db = parse_date(dates[0]), parse_date(dates[1])
    if da is None or db is None:
        return float("nan")
    return (db - da).days / DAYS_PER_YEAR
