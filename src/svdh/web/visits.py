"""A patient's visits side by side on the web page, with the change between them.

Uploaded films with a patient, a side and a visit (DICOM PatientID/StudyDate, or the form's
``patient_id``/``side``/``visit`` fields) are grouped per patient; every patient with two or
more visits gets its visits in time order (each with its films and hands-and-wrists total) and,
between consecutive visits, the predicted change (0-280), its calibrated interval, the
progression call and its probability (:class:`svdh.inference.changes.ChangeCollector`, with the
bundle's change calibration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from svdh.core.visits import order_visits
from svdh.inference.changes import ChangeCollector


def visit_groups(
    results: Sequence[Mapping[str, Any]],
    patients: Sequence[Mapping[str, Any]],
    calibration: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    """``[{patient_id, visits: [{visit, total, images: [{image, side, src}]}], changes}]``."""
    collector = ChangeCollector(calibration)
    for r in results:
        collector.add(r)
    changes = collector.records()
    if not changes:
        return []
    totals = {(p["patient_id"], p.get("visit")): p for p in patients}
    groups = []
    for pid in dict.fromkeys(c["patient_id"] for c in changes):
        films = [r for r in results if r.get("patient_id") == pid and r.get("visit")]
        visits = []
        for v in order_visits(r["visit"] for r in films):
            here = sorted((r for r in films if r["visit"] == v), key=lambda r: r.get("side") or "")
            visits.append(
                {
                    "visit": v,
                    "total": (totals.get((pid, v)) or {}).get("total"),
                    "images": [
                        {
                            "image": r["image"],
                            "side": r.get("side"),
                            "score": r.get("score"),
                            "src": (r.get("views") or {}).get("image"),
                        }
                        for r in here
                    ],
                }
            )
        groups.append(
            {
                "patient_id": pid,
                "visits": visits,
                "changes": [c for c in changes if c["patient_id"] == pid],
                "level": (calibration or {}).get("level"),
                "threshold": (calibration or {}).get("threshold", 5.0),
            }
        )
    return groups
