"""Writing predictions: :class:`ResultWriter` (CSV or JSON, streamed) and :func:`predict_files`,
what ``svdh predict`` does with a list of files (score, heat-map files, patient totals, writing).

Every row is a :class:`~svdh.inference.prediction.Prediction` rendered by its own
:meth:`~svdh.inference.prediction.Prediction.to_row` / :meth:`~svdh.inference.prediction.Prediction.to_json`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError
from svdh.core.hands import PatientTotals
from svdh.inference.inputs import PatientInfo
from svdh.inference.prediction import BONEAGE, SVDH, Prediction

#: Columns of ``out_patients.csv``.
PATIENT_COLUMNS = [
    "patient_id",
    "total",
    "interval_lo",
    "interval_hi",
    "severity_class",
    "severity_label",
    "erosion",
    "jsn",
    "images",
    "note",
]


def _r(v: Any, nd: int = 3) -> Any:
    return "" if v is None else round(float(v), nd)


def patient_row(p: Mapping[str, Any]) -> dict[str, Any]:
    """One ``out_patients.csv`` row of a :meth:`PatientTotals.totals` entry."""
    iv = p.get("interval") or [None, None]
    return {
        "patient_id": p["patient_id"],
        "total": _r(p["total"]),
        "interval_lo": _r(iv[0]),
        "interval_hi": _r(iv[1]),
        "severity_class": "" if p["severity_class"] is None else p["severity_class"],
        "severity_label": p["severity_label"] or "",
        "erosion": _r(p["erosion"]),
        "jsn": _r(p["jsn"]),
        "images": " ".join(p["images"]),
        "note": p["note"],
    }


class ResultWriter:
    """Streams predictions to ``out.csv`` (plus ``out_patients.csv``) or ``out.json`` as they come."""

    def __init__(
        self,
        path: str | Path,
        n_classes: int,
        member_names: Sequence[str],
        header: Mapping[str, Any] | None = None,
        family: str = SVDH,
    ) -> None:
        self.path = Path(path)
        self.kind = "json" if self.path.suffix.lower() == ".json" else "csv"
        if self.path.suffix.lower() not in (".csv", ".json"):
            raise BadConfigError(f"-o {self.path}: write .csv or .json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.n_classes, self.member_names = n_classes, list(member_names)
        self._fh = open(self.path, "w", newline="")
        self._first = True
        self._csv: csv.DictWriter[str] | None = None
        if self.kind == "json":
            self._fh.write("{\n" + f'"model": {json.dumps(dict(header or {}))},\n"images": [\n')
        else:
            cols = Prediction.columns(n_classes, self.member_names, family)
            self._csv = csv.DictWriter(self._fh, fieldnames=cols)
            self._csv.writeheader()

    def write(self, pred: Prediction) -> None:
        if self._csv is not None:
            self._csv.writerow(pred.to_row(self.n_classes, self.member_names))
        else:
            sep = "" if self._first else ",\n"
            self._fh.write(sep + json.dumps(pred.to_json(), allow_nan=False))
        self._first = False

    def close(self, patients: list[dict[str, Any]], summary: Mapping[str, Any]) -> list[Path]:
        written = [self.path]
        if self._csv is not None:
            self._fh.close()
            if patients:
                ppath = self.path.with_name(self.path.stem + "_patients.csv")
                with open(ppath, "w", newline="") as fh:
                    wr = csv.DictWriter(fh, fieldnames=PATIENT_COLUMNS)
                    wr.writeheader()
                    wr.writerows(patient_row(p) for p in patients)
                written.append(ppath)
        else:
            self._fh.write(
                "\n],\n"
                + f'"patients": {json.dumps(patients, allow_nan=False)},\n'
                + f'"summary": {json.dumps(dict(summary), allow_nan=False)}\n'
                + "}\n"
            )
            self._fh.close()
        return written


class _CamFiles:
    """Writes each prediction's heat maps under ``cam_dir`` (``{stem}.cam.png`` ...), with a
    number added to the stem where two files of one name come from different folders."""

    def __init__(self, cam_dir: str | Path) -> None:
        self.cam_dir = Path(cam_dir)
        self.stems: dict[str, int] = {}

    def write(self, pred: Prediction) -> None:
        from svdh.inference.gradcam import CamResult, write_cam

        if pred.cam is None:
            return
        stem = Path(pred.image).stem
        self.stems[stem] = self.stems.get(stem, 0) + 1
        if self.stems[stem] > 1:
            stem = f"{stem}_{self.stems[stem]}"
        result = CamResult(
            members=np.asarray(pred.cam_members)[:, None],
            ensemble=np.asarray(pred.cam)[None],
            member_names=list(pred.cam_member_names or []),
        )
        title = (
            f"{Path(pred.image).name}: {pred.bone_age_months:.0f} months"
            if pred.family == BONEAGE and pred.bone_age_months is not None
            else f"{Path(pred.image).name}: {pred.score:.1f}"
        )
        image = pred.display if pred.display is not None else pred.preprocessed
        assert image is not None, "a prediction with a heat map has its image"
        pred.cam_path = write_cam(self.cam_dir, stem, image, result, 0, title)["overlay"]


def predict_files(
    predictor: Any,
    paths: Sequence[Path],
    *,
    out: str | Path | None = None,
    cam_dir: str | Path | None = None,
    patients: Mapping[str, PatientInfo] | None = None,
    on_row: Callable[[Prediction], None] | None = None,
) -> dict[str, Any]:
    """Score ``paths`` with a :class:`~svdh.inference.predictor.Predictor`, streaming into
    ``out`` (and Grad-CAM files into ``cam_dir``); returns a summary: ``n_images``,
    ``n_scored``, ``n_failed``, ``n_warned``, ``n_patients_with_total``, ``patients``, ``outputs``."""
    bins = predictor.bins  # None for bone age: months, no classes, no two-hand totals
    family = SVDH if bins is not None else BONEAGE
    writer = (
        ResultWriter(
            out,
            bins.n_classes if bins is not None else 0,
            predictor.names,
            predictor.bundle.summary(),
            family,
        )
        if out
        else None
    )
    cams = _CamFiles(cam_dir) if cam_dir is not None else None
    totals = PatientTotals(bins, predictor.bundle.score_scope) if bins is not None else None
    n = n_failed = n_warned = 0
    try:
        for pred in predictor.predict_paths(paths, patients=patients, cam=cams is not None):
            n += 1
            n_failed += bool(pred.error)
            n_warned += bool(not pred.error and pred.warnings)
            if cams is not None:
                cams.write(pred)
            if totals is not None:
                totals.add(pred)
            if writer is not None:
                writer.write(pred)
            if on_row is not None:
                on_row(pred)
        patient_rows = totals.totals() if totals is not None else []
        summary: dict[str, Any] = {
            "n_images": n,
            "n_scored": n - n_failed,
            "n_failed": n_failed,
            "n_warned": n_warned,
            "n_patients_with_total": sum(p["total"] is not None for p in patient_rows),
        }
        outputs = writer.close(patient_rows, summary) if writer is not None else []
        writer = None
    finally:
        if writer is not None:
            writer.close([], {"n_images": n, "interrupted": True})
    summary["patients"] = patient_rows
    summary["outputs"] = [str(p) for p in outputs]
    return summary
