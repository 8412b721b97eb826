"""Per-patient change between visits for ``svdh predict`` and the web page.

Images with a patient id, a side (L/R) and a visit (DICOM StudyDate, or the ``visit`` column of
a ``--patients`` CSV) are collected as they are scored (a small tuple each); once all are
scored, :meth:`ChangeCollector.table` pairs each patient's consecutive visits
(:func:`svdh.evaluate.change.change_table`): the predicted change of each hand and of the
patient (0-280), erosion and JSN change where the model has them, the change interval and the
probability of progression from the bundle's change calibration (``Bundle.change``), and the
progression call (change > threshold).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from svdh.core.visits import normalize_visit

if TYPE_CHECKING:
    import pandas as pd


class _Film(NamedTuple):
    image: str
    patient_id: str
    side: str
    visit: str
    score: float
    erosion: float
    jsn: float


def visit_of(meta: Mapping[str, Any] | None, given: str | None = None) -> str:
    """The visit label of an image: ``given`` (a --patients CSV's visit), else the DICOM
    StudyDate as an ISO date, else ``""``."""
    for v in (given, (meta or {}).get("study_date")):
        if v:
            try:
                return normalize_visit(v)
            except ValueError:
                continue
    return ""


def _num(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


class ChangeCollector:
    """Collects scored images with visits; :meth:`table` gives the per-patient change table."""

    def __init__(self, calibration: Mapping[str, Any] | None = None) -> None:
        self.calibration = dict(calibration) if calibration else None
        self._films: list[_Film] = []

    def add(self, row: Mapping[str, Any]) -> None:
        pid, side, visit = row.get("patient_id"), row.get("side"), row.get("visit")
        score = _num(row.get("score"))
        if not pid or not visit or side not in ("L", "R") or not math.isfinite(score):
            return
        self._films.append(
            _Film(
                str(row.get("image", "")),
                str(pid),
                str(side),
                str(visit),
                score,
                _num(row.get("erosion")),
                _num(row.get("jsn")),
            )
        )

    def frame(self) -> pd.DataFrame:
        """The collected films as a prediction table (``y_pred``, ``erosion_pred``, ...)."""
        import pandas as pd

        df = pd.DataFrame(self._films, columns=list(_Film._fields))
        return df.rename(columns={"score": "y_pred", "erosion": "erosion_pred", "jsn": "jsn_pred"})

    def table(self) -> pd.DataFrame:
        from svdh.evaluate.change import CHANGE_COLUMNS, ChangeCalibration, change_table

        if not self._films:
            import pandas as pd

            return pd.DataFrame(columns=CHANGE_COLUMNS)
        cal = ChangeCalibration.from_dict(self.calibration) if self.calibration else None
        t = change_table(self.frame(), cal)
        return t.drop(columns=["true_change"])

    def records(self) -> list[dict[str, Any]]:
        """The change table as JSON-ready dicts (NaN as None)."""
        t = self.table()
        return [
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in r.items()
            }
            for r in t.astype(object).to_dict("records")
        ]


def write_change_table(path: str | Path, collector: ChangeCollector) -> Path | None:
    """Write ``path`` (CSV) when any patient has two visits; return it, else None."""
    t = collector.table()
    if t.empty:
        return None
    p = Path(path)
    t.to_csv(p, index=False)
    return p
