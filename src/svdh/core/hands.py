"""Hands and patients: the one side normalisation and the one L + R -> patient-total rule.

Every stage that meets a side (the ``--patients`` CSV, DICOM ImageLaterality, web form fields,
a run's prediction tables) calls :func:`norm_side` / :func:`side_or_none`, and every
hands-and-wrists total (``svdh predict``'s ``*_patients.csv``, the web API's ``patients``, the
patient-level metrics of ``svdh evaluate``) is made by :func:`is_left_right_pair` and
:func:`sum_hands`; :class:`PatientTotals` applies them to a stream of per-image predictions.

A total needs exactly one left and one right hand image of a patient, and a model that scores
one hand per image (``score_scope == "hand"``). Its interval is the sum of the two bounds: each
hand's interval holds with probability >= level, so both hold together with >= 1 - 2(1 - level)
(80% for 90% intervals), usually close to level since the two hands' errors are positively
correlated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from svdh.core.errors import BadDatasetError
from svdh.core.scoring import MAX_HAND, SeverityBins

_LEFT = ("L", "LH", "LEFT")
_RIGHT = ("R", "RH", "RIGHT")
_BOTH = ("B", "BOTH")


def norm_side(s: Any, where: str = "") -> str | None:
    """``L``, ``R`` or ``both`` from what a person or a file wrote (``left``, ``LH``, ``r``...);
    None for an empty value; :class:`BadDatasetError` naming ``where`` for anything else."""
    t = str(s if s is not None else "").strip().upper()
    if not t:
        return None
    if t in _LEFT:
        return "L"
    if t in _RIGHT:
        return "R"
    if t in _BOTH:
        return "both"
    raise BadDatasetError(f"{where}: side {s!r} is not L or R")


def side_or_none(s: Any) -> str | None:
    """:func:`norm_side` where an unknown value only means "side not known" (DICOM tags, form
    fields, table columns): None instead of an error."""
    try:
        return norm_side(s)
    except BadDatasetError:
        return None


def is_left_right_pair(sides: Sequence[str | None]) -> bool:
    """True when the images of a patient are exactly one left and one right hand."""
    return sorted(s or "?" for s in sides) == ["L", "R"]


def sum_hands(values: Iterable[float | None]) -> float | None:
    """The patient's sum of a per-hand value; None where any hand lacks it (None or NaN)."""
    vals = list(values)
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return float(sum(vals))  # type: ignore[arg-type]


def patient_bins(hand_bins: SeverityBins) -> SeverityBins:
    """Bins for a hands-and-wrists total: the per-hand bins' edges doubled (bins already on the
    0-280 patient scale are kept)."""
    if hand_bins.max_score <= MAX_HAND:
        return SeverityBins.patient([2 * e for e in hand_bins.edges])
    return hand_bins


class RowLike(Protocol):
    """What :meth:`PatientTotals.add` reads: a mapping or a ``Prediction`` (``get`` by name)."""

    def get(self, key: str, default: Any = None) -> Any: ...


class _Hand(NamedTuple):
    image: str
    side: str | None
    score: float
    lo: float | None
    hi: float | None
    erosion: float | None
    jsn: float | None


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


class PatientTotals:
    """Collects per-hand scores and gives hands-and-wrists totals per patient.

    Only a small tuple per image with a patient id is kept (~0.3 KB), not the rows.
    """

    def __init__(self, hand_bins: SeverityBins, score_scope: str = "hand") -> None:
        self.scope = score_scope
        self.bins = patient_bins(hand_bins)
        self._rows: dict[tuple[str, str], list[_Hand]] = {}  # (patient, visit)

    def add(self, row: RowLike) -> None:
        pid = row.get("patient_id")
        if not pid or row.get("error") or row.get("score") is None:
            return
        if row.get("in_totals") is False:  # wrist-only views (svdh.core.canonical) never count
            return
        iv = row.get("interval") or (None, None)
        hand = _Hand(
            str(row.get("image")),
            row.get("side"),
            float(row.get("score")),
            _opt(iv[0]),
            _opt(iv[1]),
            _opt(row.get("erosion")),
            _opt(row.get("jsn")),
        )
        self._rows.setdefault((str(pid), str(row.get("visit") or "")), []).append(hand)

    def totals(self) -> list[dict[str, Any]]:
        return [self._total(key, rows) for key, rows in self._rows.items()]

    def _total(self, key: tuple[str, str], rows: list[_Hand]) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "patient_id": key[0],
            "visit": key[1] or None,  # one total per patient and visit
            "images": [r.image for r in rows],
            "total": None,
            "interval": None,
            "severity_class": None,
            "severity_label": None,
            "erosion": None,
            "jsn": None,
            "note": "",
        }
        sides = [r.side for r in rows]
        if self.scope != "hand":
            entry["note"] = "the model scores both hands per image; see the image rows"
            return entry
        if not is_left_right_pair(sides):
            entry["note"] = (
                f"{len(rows)} image(s) with sides {', '.join(s or '?' for s in sides)}; "
                "a total needs one left and one right hand"
            )
            return entry
        total = float(sum(r.score for r in rows))
        entry["total"] = total
        lo, hi = sum_hands(r.lo for r in rows), sum_hands(r.hi for r in rows)
        if lo is not None and hi is not None:
            entry["interval"] = [lo, float(min(self.bins.max_score, hi))]
        k = int(self.bins.to_class(total))
        entry["severity_class"], entry["severity_label"] = k, self.bins.labels[k]
        ero, jsn = sum_hands(r.erosion for r in rows), sum_hands(r.jsn for r in rows)
        if ero is not None and jsn is not None:
            entry["erosion"], entry["jsn"] = ero, jsn
        return entry
