"""The same phantom patients at successive visits, with exactly known change (``svdh synth --visits``).

Each patient is the cohort's patient (:func:`svdh.synth.make_patient`: anatomy, baseline damage)
followed over ``visits`` visits about ``interval_days`` apart:

* **Damage never heals.** A progressing patient gains score points between visits
  (Poisson with the patient's yearly rate times the years elapsed); the points go to joints by
  the same reinforced urn as the baseline damage (damaged joints worsen most) and a joint's
  score never drops. A share of patients (``stable_share``) is stable: no change at all.
* **Patient-specific rates.** A progressor's yearly rate (hands-and-wrists total, 0-280) is
  ``progression_rate`` times a gamma factor of mean 1 (some fast, most slow).
* **Each visit is a new film**: positioning, exposure, collimation, noise and marker are drawn
  anew (:attr:`svdh.synth.phantom.Patient.film`); anatomy and the lesions of a joint at an
  unchanged score stay the same. Visit 1's first film is the plain cohort's image.
* **Repeat films** (``repeat``): every visit is filmed twice (``film`` 1 and 2; no true change
  between them), so the model's own measurement error can be measured as the literature does
  with two readings of the same pair.

Layouts written into one folder, both reading the same images:

* ``training.csv``, RA2-DREAM style: ``Patient_ID, visit, date, film``, the overall and joint
  columns; one row per patient, visit and film; images ``<Patient_ID>-V<visit>-LH.png``
  (``-V<visit>-F2-LH.png`` for the repeat film). Read by ``ra2-dream:DIR``.
* ``visits.csv``, the csv source: ``image, image_id, patient_id, side, visit, date, film,
  svdh, erosion, jsn, patient_svdh``. Read by ``csv:DIR/visits.csv``.
* ``landmarks.json``: one entry per film (the cohort schema plus ``visit``, ``date``, ``film``).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from svdh import __version__
from svdh.core import scoring
from svdh.core.errors import BadConfigError
from svdh.synth import cohort as _cohort
from svdh.synth.damage import JOINT_KEYS, PROPENSITY, PatientDisease
from svdh.synth.phantom import Patient, make_patient, quantize, render_patient

VISITS_CSV = "visits.csv"
#: Random-stream purpose of a patient's disease course (phantom.py uses 0-6).
_COURSE = 20
_BETA = 1.1  # urn reinforcement, as for the baseline damage
_MAXS = np.array([scoring.JOINTS_BY_KEY[k].max_score for k in JOINT_KEYS] * 2, dtype=np.int64)


@dataclass(frozen=True)
class VisitOptions:
    """How a cohort is followed over time (stored in ``landmarks.json``)."""

    visits: int = 2
    progression_rate: float = 6.0
    interval_days: int = 365
    stable_share: float = 0.35
    repeat: bool = False

    def validate(self) -> VisitOptions:
        if not isinstance(self.visits, int) or not 1 <= self.visits <= 20:
            raise BadConfigError(f"--visits must be 1-20, got {self.visits!r}")
        if not 0 <= self.progression_rate <= 100:
            raise BadConfigError(
                f"--progression-rate must be 0-100 SvdH units a year, got {self.progression_rate!r}"
            )
        if not 30 <= self.interval_days <= 3650:
            raise BadConfigError(f"visit interval must be 30-3650 days, got {self.interval_days}")
        if not 0 <= self.stable_share <= 1:
            raise BadConfigError(f"stable share must be 0-1, got {self.stable_share}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Visit:
    """One visit of a patient: its date and the disease then."""

    number: int  # 1-based
    date: _dt.date
    disease: PatientDisease


# --------------------------------------------------------------------------- the disease course


def _urn_weights(rng: np.random.Generator) -> np.ndarray:
    """Per-site weights of new damage (the formula of :func:`svdh.synth.damage.allocate`)."""
    n = len(JOINT_KEYS)
    prop = np.array([PROPENSITY[k] for k in JOINT_KEYS], dtype=np.float64)
    joint_eff = np.exp(rng.normal(0.0, 0.6, n))
    hand_eff = np.exp(rng.normal(0.0, 0.25, 2))
    erosive = math.exp(rng.normal(0.0, 0.45))
    kind = np.array([erosive if k.startswith("ero_") else 1.0 / erosive for k in JOINT_KEYS])
    return np.concatenate(
        [prop * joint_eff * kind * hand_eff[h] * np.exp(rng.normal(0.0, 0.35, n)) for h in range(2)]
    )


def _flat(scores: dict[str, dict[str, int]]) -> np.ndarray:
    return np.array([scores[s][k] for s in ("L", "R") for k in JOINT_KEYS], dtype=np.int64)


def _unflat(s: np.ndarray) -> dict[str, dict[str, int]]:
    n = len(JOINT_KEYS)
    return {
        "L": {k: int(v) for k, v in zip(JOINT_KEYS, s[:n], strict=True)},
        "R": {k: int(v) for k, v in zip(JOINT_KEYS, s[n:], strict=True)},
    }


def grow(
    rng: np.random.Generator, scores: dict[str, dict[str, int]], points: int, weights: np.ndarray
) -> dict[str, dict[str, int]]:
    """``scores`` plus ``points`` new score points (fewer where joints reach their maximum).

    Every joint's score is at least what it was: damage never heals.
    """
    s = _flat(scores)
    for _ in range(int(points)):
        p = weights * (1.0 + _BETA * s) * (s < _MAXS)
        c = np.cumsum(p)
        if c[-1] <= 0:
            break
        i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
        s[min(i, len(s) - 1)] += 1
    return _unflat(s)


def _baseline_date(seed: int, index: int) -> _dt.date:
    return _dt.date(2015, 1, 1) + _dt.timedelta(days=(seed * 977 + index * 37) % 3650)


def _disease_at(base: PatientDisease, scores: dict[str, dict[str, int]]) -> PatientDisease:
    """The disease with new scores; osteopenia and ulnar deviation follow the severity."""
    total = int(sum(sum(h.values()) for h in scores.values()))
    s0, s1 = base.total / scoring.MAX_PATIENT, total / scoring.MAX_PATIENT
    bmd = float(np.clip(base.bone_density - 0.45 * (s1**0.8 - s0**0.8), 0.4, 1.2))
    dev = base.deviation * (s1 / s0) ** 0.8 if s0 > 0 else 14.0 * s1**0.8
    return PatientDisease(total, scores, base.activity, bmd, float(dev))


def patient_course(patient: Patient, opts: VisitOptions) -> tuple[list[Visit], dict[str, float]]:
    """The patient's visits and its course (``rate`` a year, ``stable``)."""
    if patient.disease is None:
        raise BadConfigError("visits need RA phantoms (mode 'ra')")
    rng = np.random.default_rng(
        np.random.SeedSequence(patient.seed, spawn_key=(patient.index, 0, _COURSE))
    )
    stable = bool(rng.random() < opts.stable_share)
    rate = 0.0 if stable else float(opts.progression_rate * rng.gamma(2.0, 0.5))
    weights = _urn_weights(rng)
    date = _baseline_date(patient.seed, patient.index)
    visits = [Visit(1, date, patient.disease)]
    scores = patient.disease.scores
    for k in range(2, opts.visits + 1):
        step = opts.interval_days + int(rng.integers(-14, 15))
        years = step / 365.25
        points = int(rng.poisson(rate * years)) if rate > 0 else 0
        scores = grow(rng, scores, points, weights)
        date = date + _dt.timedelta(days=step)
        visits.append(Visit(k, date, _disease_at(patient.disease, scores)))
    return visits, {"rate": rate, "stable": stable}


# --------------------------------------------------------------------------- files of one patient


def film_stem(patient_id: str, visit: str, film: int, side: str) -> str:
    """File stem of one film: ``<id>-V<visit>-LH``, ``-V<visit>-F2-LH`` for a repeat film."""
    return f"{patient_id}-V{visit}" + (f"-F{film}" if film > 1 else "") + f"-{side}H"


def _write(
    path: Path, img: Any, opts: _cohort.CohortOptions, p: Patient, side: str, v: Visit
) -> None:
    px = quantize(img.image, opts.bits)
    if opts.format == "png":
        _cohort.write_png(path, px)
        return
    _cohort.write_dicom(
        path,
        px,
        patient_id=p.patient_id,
        laterality=side,
        seed=opts.seed,
        index=p.index,
        image_key=path.name,
        mm_per_pixel=1.0 / img.px_per_mm,
        study_date=v.date.strftime("%Y%m%d"),
        study_key=f"/visit{v.number}",
    )


def _label_row(p: Patient, v: Visit, film: int) -> dict[str, Any]:
    return _cohort.ra2_label_row(
        p.patient_id, v.disease, visit=v.number, date=v.date.isoformat(), film=film
    )


def make_visit_files(
    opts: _cohort.CohortOptions, vopts: VisitOptions, index: int, out_dir: str
) -> dict[str, Any]:
    """Render and write every film of one patient; return its label rows and landmark entries."""
    out = Path(out_dir)
    base = make_patient(opts.seed, index, "ra", opts.severity, id_prefix=opts.id_prefix)
    visits, course = patient_course(base, vopts)
    ext = ".png" if opts.format == "png" else ".dcm"
    rows, csv_rows, images = [], [], {}
    for v in visits:
        for f in range(1, 3 if vopts.repeat else 2):
            p = replace(base, disease=v.disease, film=2 * (v.number - 1) + (f - 1))
            rows.append(_label_row(p, v, f))
            for side in ("L", "R"):
                img = render_patient(p, opts.size, side)
                stem = film_stem(p.patient_id, str(v.number), f, side)
                _write(out / f"{stem}{ext}", img, opts, p, side, v)
                entry = _cohort._image_entry(img, p, side)
                entry.update(visit=v.number, date=v.date.isoformat(), film=f)
                images[f"{stem}{ext}"] = entry
                csv_rows.append(_csv_row(f"{stem}{ext}", stem, p, side, v, f))
    totals = [float(v.disease.total) for v in visits]
    return {"rows": rows, "csv_rows": csv_rows, "images": images, "totals": totals, **course}


def _csv_row(name: str, stem: str, p: Patient, side: str, v: Visit, film: int) -> dict[str, Any]:
    d = v.disease
    return {
        "image": name,
        "image_id": stem,
        "patient_id": p.patient_id,
        "side": side,
        "visit": v.number,
        "date": v.date.isoformat(),
        "film": film,
        "svdh": d.hand_total(side),
        "erosion": d.hand_erosion(side),
        "jsn": d.hand_jsn(side),
        "patient_svdh": d.hand_total("L") + d.hand_total("R"),
    }


CSV_COLUMNS = [
    "image",
    "image_id",
    "patient_id",
    "side",
    "visit",
    "date",
    "film",
    "svdh",
    "erosion",
    "jsn",
    "patient_svdh",
]


def _work(args: tuple[_cohort.CohortOptions, VisitOptions, int, str]) -> dict[str, Any]:
    return make_visit_files(*args)


# --------------------------------------------------------------------------- the cohort


def generate_visits(
    out_dir: str | os.PathLike[str],
    n: int = 10,
    *,
    visits: int = 2,
    progression_rate: float = 6.0,
    repeat: bool = False,
    interval_days: int = 365,
    stable_share: float = 0.35,
    size: int = 512,
    seed: int = 0,
    severity: str = "cohort",
    fmt: str = "png",
    bits: int = 8,
    workers: int = 1,
    id_prefix: str = "SYN",
    progress: Callable[[int], None] | None = None,
) -> _cohort.CohortSummary:
    """Write ``n`` phantom patients at ``visits`` visits (see the module docstring)."""
    opts = _cohort.CohortOptions(
        "ra", n, size, seed, severity, fmt, bits, False, id_prefix
    ).validate()
    vopts = VisitOptions(visits, progression_rate, interval_days, stable_share, repeat).validate()
    if not isinstance(workers, int) or workers < 1:
        raise BadConfigError(f"--workers must be a positive whole number, got {workers!r}")
    out = Path(out_dir)
    _cohort._check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(opts, vopts, i, str(out)) for i in range(n)]
    results = _run(tasks, min(workers, n), progress)
    cols = ["Patient_ID", "visit", "date", "film", *_cohort.ra_columns()[1:]]
    _cohort._write_csv(out / "training.csv", cols, (r for res in results for r in res["rows"]))
    _cohort._write_csv(
        out / VISITS_CSV, CSV_COLUMNS, (r for res in results for r in res["csv_rows"])
    )
    images: dict[str, Any] = {}
    for r in results:
        images.update(r["images"])
    doc = {
        "format": _cohort.LANDMARKS_FORMAT,
        "version": _cohort.LANDMARKS_VERSION,
        "generator": {"svdh": __version__, **opts.to_dict(), **vopts.to_dict()},
        "coordinates": "pixels of the written image: x to the right, y down, (0, 0) = centre of the top-left pixel",
        "landmark_names": list(scoring.LANDMARKS),
        "courses": {
            f"{id_prefix}{i + 1:05d}": {"rate": round(r["rate"], 3), "stable": r["stable"]}
            for i, r in enumerate(results)
        },
        "images": images,
    }
    lm = out / _cohort.LANDMARKS_FILE
    lm.write_text(_cohort._dump_landmarks(doc), encoding="utf-8")
    return _cohort.CohortSummary(
        out,
        opts,
        len(images),
        n,
        out / "training.csv",
        lm,
        list(images),
        [r["totals"][-1] - r["totals"][0] for r in results],
    )


def _run(
    tasks: list[tuple[Any, ...]], workers: int, progress: Callable[[int], None] | None
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    if workers <= 1:
        import cv2

        before = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for i, t in enumerate(tasks):
                results.append(_work(t))
                if progress:
                    progress(i + 1)
        finally:
            cv2.setNumThreads(before)
        return results
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    chunk = max(1, min(8, len(tasks) // (4 * workers)))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_cohort._worker_init
    ) as ex:
        for i, r in enumerate(ex.map(_work, tasks, chunksize=chunk)):
            results.append(r)
            if progress:
                progress(i + 1)
    return results
