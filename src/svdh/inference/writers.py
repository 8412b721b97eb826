"""Writing predictions: :class:`ResultWriter` (CSV or JSON, streamed) and :func:`predict_files`,
what ``svdh predict`` does with a list of files (score, heat-map files, patient totals, writing).

Every row is a :class:`~svdh.inference.prediction.Prediction` rendered by its own
:meth:`~svdh.inference.prediction.Prediction.to_row` / :meth:`~svdh.inference.prediction.Prediction.to_json`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError, is_out_of_space, out_of_space
from svdh.core.files import atomic_write_text
from svdh.core.hands import PatientTotals
from svdh.inference.changes import ChangeCollector, write_change_table
from svdh.inference.inputs import PatientInfo
from svdh.inference.prediction import BONEAGE, SVDH, Prediction

#: Columns of ``out_patients.csv``.
PATIENT_COLUMNS = [
    "patient_id",
    "visit",
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
        "visit": p.get("visit") or "",
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
        # Rows stream into a temporary file, renamed to the final name when done (or
        # interrupted): a failure (a full disk) never leaves an empty or cut file under it.
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._fh = open(self._tmp, "w", newline="")
        self._first = True
        self._done = False
        self._csv: csv.DictWriter[str] | None = None
        with self._guard():
            if self.kind == "json":
                head = json.dumps(dict(header or {}))
                self._fh.write("{\n" + f'"model": {head},\n"images": [\n')
            else:
                cols = Prediction.columns(n_classes, self.member_names, family)
                self._csv = csv.DictWriter(self._fh, fieldnames=cols)
                self._csv.writeheader()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Any OS error while writing: drop the temporary file; a full disk is one line."""
        try:
            yield
        except OSError as exc:
            self.abort()
            if is_out_of_space(exc):
                raise out_of_space(self.path.parent, self.path.name) from None
            raise

    def abort(self) -> None:
        """Close and remove the temporary file; nothing appears under the final name."""
        self._done = True
        with contextlib.suppress(OSError):
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def write(self, pred: Prediction) -> None:
        with self._guard():
            if self._csv is not None:
                self._csv.writerow(pred.to_row(self.n_classes, self.member_names))
            else:
                sep = "" if self._first else ",\n"
                self._fh.write(sep + json.dumps(pred.to_json(), allow_nan=False))
        self._first = False

    def close(
        self,
        patients: list[dict[str, Any]],
        summary: Mapping[str, Any],
        changes: ChangeCollector | None = None,
    ) -> list[Path]:
        if self._done:
            return []
        written = [self.path]
        with self._guard():
            if self._csv is None:
                self._fh.write(
                    "\n],\n"
                    + f'"patients": {json.dumps(patients, allow_nan=False)},\n'
                    + f'"changes": {json.dumps(changes.records() if changes else [], allow_nan=False)},\n'
                    + f'"summary": {json.dumps(dict(summary), allow_nan=False)}\n'
                    + "}\n"
                )
            self._fh.close()
            os.replace(self._tmp, self.path)
            self._done = True
            if self._csv is not None:
                written += self._side_tables(patients, changes)
        return written

    def _side_tables(
        self, patients: list[dict[str, Any]], changes: ChangeCollector | None
    ) -> list[Path]:
        """``out_changes.csv`` (patients with two or more visits) and ``out_patients.csv``."""
        written: list[Path] = []
        if changes is not None:
            cpath = write_change_table(
                self.path.with_name(self.path.stem + "_changes.csv"), changes
            )
            written += [cpath] if cpath else []
        if patients:
            ppath = self.path.with_name(self.path.stem + "_patients.csv")
            buf = io.StringIO()
            wr = csv.DictWriter(buf, fieldnames=PATIENT_COLUMNS)
            wr.writeheader()
            wr.writerows(patient_row(p) for p in patients)
            atomic_write_text(ppath, buf.getvalue())
            written.append(ppath)
        return written


class _CamFiles:
    """Writes each prediction's heat maps under ``cam_dir`` (``{stem}.cam.png`` ...; the hands
    of a both-hands film ``{stem}.hand1.cam.png``, ``{stem}.hand2.cam.png``) and, once a film's
    hands are all written, ``{stem}.film_cam.png``: the whole film with every hand's map
    projected back onto it. A number is added to the stem where two files of one name come
    from different folders."""

    def __init__(self, cam_dir: str | Path, preprocess: Any = None) -> None:
        self.cam_dir = Path(cam_dir)
        self.preprocess = preprocess
        self.stems: dict[str, int] = {}
        self.film: list[Prediction] = []  # the hands of the film being written
        self.film_stem = ""

    def write(self, pred: Prediction) -> None:
        from svdh.inference.gradcam import CamResult, write_cam

        if not pred.hand or pred.hand.startswith("1/"):  # a new film
            self.flush()
            stem = Path(pred.image).stem
            self.stems[stem] = self.stems.get(stem, 0) + 1
            self.film_stem = stem if self.stems[stem] == 1 else f"{stem}_{self.stems[stem]}"
        self.film.append(pred)
        if pred.cam is None:
            return
        stem = self.film_stem + (f".hand{pred.hand.split('/')[0]}" if pred.hand else "")
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

    def flush(self) -> None:
        """Write the film overlay of the hands seen since the last film (if any has a map)."""
        hands, self.film = self.film, []
        if not any(p.cam is not None for p in hands):
            return
        from PIL import Image

        from svdh.core.canonical import model_inputs
        from svdh.core.errors import SvdhError
        from svdh.core.io import read_radiograph
        from svdh.inference.gradcam import film_overlay, hand_label

        try:  # the film again: the predictions keep only their hands' pixels
            rad = read_radiograph(hands[0].image)
            inputs = [p.model_input for p in hands]
            if any(i is None for i in inputs):
                inputs = model_inputs(rad, self.preprocess)
        except (SvdhError, OSError):
            return  # the per-hand maps are written; the film view is a convenience
        if len(inputs) != len(hands):
            return
        labels = [hand_label(p.hand, p.side) for p in hands]
        _, heat = film_overlay(rad, inputs, [p.cam for p in hands], labels=labels)
        self.cam_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(heat).save(self.cam_dir / f"{self.film_stem}.film_cam.png")


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
    cams = (
        _CamFiles(cam_dir, getattr(predictor, "preprocess_config", None))
        if cam_dir is not None
        else None
    )
    totals = PatientTotals(bins, predictor.bundle.score_scope) if bins is not None else None
    changes = ChangeCollector(predictor.bundle.change) if bins is not None else None
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
            if changes is not None:
                changes.add(pred)
            if writer is not None:
                writer.write(pred)
            if on_row is not None:
                on_row(pred)
        if cams is not None:
            cams.flush()
        patient_rows = totals.totals() if totals is not None else []
        summary: dict[str, Any] = {
            "n_images": n,
            "n_scored": n - n_failed,
            "n_failed": n_failed,
            "n_warned": n_warned,
            "n_patients_with_total": sum(p["total"] is not None for p in patient_rows),
        }
        change_rows = changes.records() if changes is not None else []
        summary["n_patient_changes"] = len(change_rows)
        outputs = writer.close(patient_rows, summary, changes) if writer is not None else []
        writer = None
    finally:
        if writer is not None:  # interrupted: keep what was scored, under the final name
            writer.close([], {"n_images": n, "interrupted": True})
    summary["patients"] = patient_rows
    summary["changes"] = change_rows
    summary["outputs"] = [str(p) for p in outputs]
    return summary
