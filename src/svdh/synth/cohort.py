"""Write phantom cohorts in the layouts of the real data sets, in parallel, reproducibly.

* RA mode: the RA2-DREAM layout - ``training.csv`` (``Patient_ID``, ``Overall_Tol``,
  ``Overall_erosion``, ``Overall_narrowing`` for hands and wrists, then every hand joint column
  as named in :mod:`svdh.core.scoring`; the feet columns are absent) beside ``<Patient_ID>-LH.png``
  and ``-RH.png`` (or one ``-BH`` image of both hands with ``dual_hand``).
* Child mode: the RSNA Bone Age layout - ``boneage.csv`` (``id, boneage, male``) beside
  ``<id>.png``.
* Both: ``landmarks.json`` (schema in ``docs/synth.md``): for every image its size, hands,
  pixel coordinates of every landmark of :data:`svdh.core.scoring.LANDMARKS` and, in RA mode, each
  joint's erosion and JSN score.

Images are PNG (8 or 16 bit, written by Pillow with fixed options) or DICOM (pydicom, with
deterministic UIDs and dates). Work is split by patient over worker processes; every patient
has its own random streams, so the bytes do not depend on the number of workers.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdh import __version__
from svdh.core import scoring
from svdh.core.errors import BadConfigError
from svdh.core.landmarks import LANDMARKS_FILE, LANDMARKS_FORMAT, LANDMARKS_VERSION
from svdh.core.landmarks import load_landmarks as load_landmarks  # re-exported by svdh.synth
from svdh.synth.damage import PatientDisease, parse_severity
from svdh.synth.faults import apply_faults, fault_rng, parse_faults
from svdh.synth.phantom import MODES, Patient, RenderedImage, make_patient, quantize, render_patient

FORMATS = ("png", "dicom")
#: PNG zlib level: low, because quantum noise barely compresses and encoding dominates time.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class CohortOptions:
    """Everything that determines a cohort's bytes (stored in ``landmarks.json``)."""

    mode: str = "ra"
    n: int = 10
    size: int = 512
    seed: int = 0
    severity: str = "cohort"
    format: str = "png"
    bits: int = 8
    dual_hand: bool = False
    id_prefix: str = "SYN"
    #: film faults of :mod:`svdh.synth.faults` and the probability of each
    faults: tuple[str, ...] = ()
    fault_rate: float = 0.5

    def validate(self) -> CohortOptions:
        if self.mode not in MODES:
            raise BadConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise BadConfigError(f"--n must be a positive whole number, got {self.n!r}")
        if not isinstance(self.size, int) or not 32 <= self.size <= 4096:
            raise BadConfigError(f"--size must be 32-4096 pixels, got {self.size!r}")
        if self.format not in FORMATS:
            raise BadConfigError(f"--format must be png or dicom, got {self.format!r}")
        if self.bits not in (8, 16):
            raise BadConfigError(f"--bits must be 8 or 16, got {self.bits!r}")
        if self.seed < 0:
            raise BadConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.dual_hand and self.mode != "ra":
            raise BadConfigError(
                "--dual-hand applies to RA mode only (child mode draws one hand, as RSNA Bone Age)"
            )
        if not self.id_prefix.isalnum():
            raise BadConfigError(
                f"patient id prefix must be letters and digits, got {self.id_prefix!r}"
            )
        parse_severity(self.severity)
        object.__setattr__(self, "faults", parse_faults(self.faults))
        if not 0.0 <= float(self.fault_rate) <= 1.0:
            raise BadConfigError(f"--fault-rate must be 0-1, got {self.fault_rate!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "n": self.n,
            "size": self.size,
            "seed": self.seed,
            "severity": self.severity,
            "format": self.format,
            "bits": self.bits,
            "dual_hand": self.dual_hand,
            "id_prefix": self.id_prefix,
            # only when used: the bytes of fault-free cohorts stay as they were
            **({"faults": list(self.faults), "fault_rate": self.fault_rate} if self.faults else {}),
        }


@dataclass
class CohortSummary:
    """What :func:`generate_cohort` wrote."""

    out_dir: Path
    options: CohortOptions
    n_images: int
    n_patients: int
    labels_csv: Path
    landmarks_json: Path
    images: list[str]
    totals: list[float]  # RA: per-patient hands-and-wrists totals; child: bone ages (months)

    def describe(self) -> str:
        t = np.asarray(self.totals, dtype=float)
        what = "patient totals" if self.options.mode == "ra" else "bone age (months)"
        return (
            f"{self.n_images} images of {self.n_patients} {'patients' if self.options.mode == 'ra' else 'children'}"
            f" in {self.out_dir}; {what}: min {t.min():g}, median {np.median(t):g}, max {t.max():g}"
        )


# --------------------------------------------------------------------------- writers


def _ext(fmt: str) -> str:
    return ".png" if fmt == "png" else ".dcm"


def write_png(path: Path, pixels: np.ndarray) -> None:
    """PNG via Pillow with fixed options (no timestamps, fixed zlib level): same pixels, same bytes."""
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _study_date(seed: int, index: int) -> str:
    day = _dt.date(2015, 1, 1) + _dt.timedelta(days=(seed * 977 + index * 37) % 3650)
    return day.strftime("%Y%m%d")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    laterality: str,
    seed: int,
    index: int,
    image_key: str,
    mm_per_pixel: float,
    sex: str = "O",
    age_months: int | None = None,
    monochrome1: bool = False,
    study_date: str | None = None,
    study_key: str = "",
) -> None:
    """A CR DICOM file with the usual tags (deterministic UIDs, dates and bytes).

    ``study_date`` (YYYYMMDD) and ``study_key`` (part of the study UID's entropy) let the
    visits of one patient be separate studies; by default one study per patient.

    8-bit pixels are stored as they are; 16-bit ones as 12-bit stored values (like a CR
    plate) with a rescale intercept and a window covering the full range, so a reader must
    apply rescale and window to get the image back.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cr_storage = "1.2.840.10008.5.1.4.1.1.1"
    ent = [f"svdh-phantom/{seed}/{index}{study_key}"]
    study_uid = generate_uid(entropy_srcs=[*ent, "study"])
    series_uid = generate_uid(entropy_srcs=[*ent, image_key, "series"])
    sop_uid = generate_uid(entropy_srcs=[*ent, image_key, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = cr_storage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    meta.ImplementationVersionName = "SVDH_SYNTH"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = cr_storage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = f"PHANTOM^{patient_id}"
    ds.PatientSex = sex
    if age_months is not None:
        ds.PatientAge = f"{age_months // 12:03d}Y"
    date = study_date or _study_date(seed, index)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"{seed % 100000:05d}{index:06d}"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "CR"
    ds.BodyPartExamined = "HAND"
    ds.ViewPosition = "PA"
    ds.Laterality = laterality
    ds.ImageLaterality = laterality
    ds.Manufacturer = "svdh phantom"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ImagerPixelSpacing = [f"{mm_per_pixel:.6f}", f"{mm_per_pixel:.6f}"]
    ds.PixelSpacing = [f"{mm_per_pixel:.6f}", f"{mm_per_pixel:.6f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelRepresentation = 0
    if pixels.dtype == np.uint8:
        stored = pixels if not monochrome1 else (255 - pixels)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.WindowCenter, ds.WindowWidth = "127.5", "256"
    else:
        v = np.rint(pixels.astype(np.float64) * (4095.0 / 65535.0)).astype(np.uint16)
        stored = v if not monochrome1 else (4095 - v).astype(np.uint16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.WindowCenter, ds.WindowWidth = "1023.5", "4096"
    ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------- one patient


def _hand_summary(img: RenderedImage, side: str) -> dict[str, Any]:
    scores = img.scores.get(side)
    if scores is None:
        return {}
    ero = sum(v for k, v in scores.items() if k.startswith("ero_"))
    jsn = sum(v for k, v in scores.items() if k.startswith("jsn_"))
    return {"erosion": ero, "jsn": jsn, "total": ero + jsn}


def _landmark_points(img: RenderedImage, side: str, prefix: str) -> dict[str, Any]:
    """``{prefix + landmark: {x, y[, erosion, jsn]}}`` of one hand."""
    pts = img.landmarks[side]
    scores = img.scores.get(side)
    by_landmark: dict[str, dict[str, int]] = {}
    if scores is not None:
        for j in scoring.JOINTS:
            by_landmark.setdefault(j.landmark, {})[j.kind] = int(scores[j.key])
    out: dict[str, Any] = {}
    for name in scoring.LANDMARKS:
        x, y = pts[name]
        e: dict[str, Any] = {"x": round(x, 2), "y": round(y, 2)}
        if scores is not None:
            e["erosion"] = by_landmark[name].get(scoring.EROSION)
            e["jsn"] = by_landmark[name].get(scoring.JSN)
        out[prefix + name] = e
    return out


def _image_entry(img: RenderedImage, patient: Patient, side: str) -> dict[str, Any]:
    h, w = img.image.shape
    both = len(img.sides) > 1
    landmarks: dict[str, Any] = {}
    for sd in img.sides:  # a dual-hand film keys its points "R:mcp2", "L:mcp2"
        landmarks.update(_landmark_points(img, sd, f"{sd}:" if both else ""))
    entry: dict[str, Any] = {
        "patient_id": patient.patient_id,
        "width": int(w),
        "height": int(h),
        "side": "both" if side == "B" else side,
        "mm_per_pixel": round(1.0 / img.px_per_mm, 5),
        "joint_radius_px": round(img.joint_radius_px, 2),
    }
    if patient.mode == "child":
        entry["boneage"] = patient.boneage_months
        entry["male"] = patient.male
    else:
        entry["hands"] = {sd: _hand_summary(img, sd) for sd in img.sides}
    entry["landmarks"] = landmarks
    if "faults" in img.extra:
        entry["faults"] = img.extra["faults"]
    return entry


def _write_image(
    path: Path,
    img: RenderedImage,
    opts: CohortOptions,
    patient: Patient,
    side: str,
    monochrome1: bool,
) -> None:
    px = quantize(img.image, opts.bits)
    if opts.format == "png":
        write_png(path, px)
    else:
        sex = "O" if patient.male is None else ("M" if patient.male else "F")
        write_dicom(
            path,
            px,
            patient_id=patient.patient_id,
            laterality=side,
            seed=opts.seed,
            index=patient.index,
            image_key=path.name,
            mm_per_pixel=1.0 / img.px_per_mm,
            sex=sex,
            age_months=patient.boneage_months,
            monochrome1=monochrome1,
        )


def _with_faults(
    img: RenderedImage, opts: CohortOptions, patient: Patient, side: str
) -> RenderedImage:
    if not opts.faults:
        return img
    rng = fault_rng(opts.seed, patient.index, side)
    return apply_faults(img, opts.faults, rng, opts.fault_rate)


def make_patient_files(
    opts: CohortOptions, index: int, out_dir: str, monochrome1: bool = False
) -> dict[str, Any]:
    """Render and write one patient's images; return its label row and landmark entries."""
    out = Path(out_dir)
    patient = make_patient(opts.seed, index, opts.mode, opts.severity, id_prefix=opts.id_prefix)
    ext = _ext(opts.format)
    images: dict[str, Any] = {}
    if opts.mode == "child":
        side = patient.child_side
        img = _with_faults(render_patient(patient, opts.size, side), opts, patient, side)
        name = f"{patient.patient_id}{ext}"
        _write_image(out / name, img, opts, patient, side, monochrome1)
        images[name] = _image_entry(img, patient, side)
        row = {
            "id": patient.patient_id,
            "boneage": patient.boneage_months,
            "male": bool(patient.male),
        }
        return {"row": row, "images": images, "value": float(patient.boneage_months or 0)}
    sides = ("B",) if opts.dual_hand else ("L", "R")
    for side in sides:
        img = _with_faults(render_patient(patient, opts.size, side), opts, patient, side)
        name = f"{patient.patient_id}-{side}H{ext}"
        _write_image(out / name, img, opts, patient, side, monochrome1)
        images[name] = _image_entry(img, patient, side)
    assert patient.disease is not None
    row = ra2_label_row(patient.patient_id, patient.disease)
    return {"row": row, "images": images, "value": float(row["Overall_Tol"])}


def ra2_label_row(patient_id: str, d: PatientDisease, **extra: Any) -> dict[str, Any]:
    """One ``training.csv`` row in the RA2-DREAM challenge's layout: the id, ``extra`` columns
    (a visit, its date), the hands-and-wrists totals, then every joint column (erosions first)."""
    row: dict[str, Any] = {"Patient_ID": patient_id, **extra}
    row["Overall_Tol"] = d.hand_total("L") + d.hand_total("R")
    row["Overall_erosion"] = d.hand_erosion("L") + d.hand_erosion("R")
    row["Overall_narrowing"] = d.hand_jsn("L") + d.hand_jsn("R")
    for kind in (scoring.EROSION, scoring.JSN):
        for side in scoring.SIDES:
            for j in scoring.JOINTS:
                if j.kind == kind:
                    row[j.column(side)] = d.scores[side][j.key]
    return row


def ra_columns() -> list[str]:
    """Column order of a phantom ``training.csv`` (RA2-DREAM order, hands only)."""
    cols = ["Patient_ID", "Overall_Tol", "Overall_erosion", "Overall_narrowing"]
    for kind in (scoring.EROSION, scoring.JSN):
        for side in scoring.SIDES:
            cols += [j.column(side) for j in scoring.JOINTS if j.kind == kind]
    return cols


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core; OpenCV threads would only fight over them


def _work(args: tuple[CohortOptions, int, str, bool]) -> dict[str, Any]:
    return make_patient_files(*args)


# --------------------------------------------------------------------------- the cohort


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BadConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        entries = [p.name for p in out.iterdir()]
        if entries and LANDMARKS_FILE not in entries:
            raise BadConfigError(
                f"--out {out} is not empty and holds no phantom cohort ({len(entries)} entries); "
                "choose a new or empty folder"
            )


def generate_cohort(
    out_dir: str | os.PathLike[str],
    n: int = 10,
    mode: str = "ra",
    size: int = 512,
    seed: int = 0,
    severity: str = "cohort",
    fmt: str = "png",
    bits: int = 8,
    workers: int = 1,
    dual_hand: bool = False,
    id_prefix: str = "SYN",
    monochrome1: bool = False,
    faults: str | tuple[str, ...] = (),
    fault_rate: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> CohortSummary:
    """Generate ``n`` phantom patients (RA: two hand images each, or one dual-hand image;
    child: one image each) into ``out_dir`` and write the labels and ``landmarks.json``.

    Re-running with the same arguments rewrites the same bytes. ``progress`` is called with
    the number of patients finished so far. ``faults`` (e.g. ``"rotate,mirror,wrist"``, see
    :mod:`svdh.synth.faults`) damage each film like clinic films, each with probability
    ``fault_rate``; what was done is in each image's ``faults`` entry of ``landmarks.json``.
    """
    opts = CohortOptions(
        mode,
        n,
        size,
        seed,
        severity,
        fmt,
        bits,
        dual_hand,
        id_prefix,
        parse_faults(faults),
        fault_rate,
    ).validate()
    if not isinstance(workers, int) or workers < 1:
        raise BadConfigError(f"--workers must be a positive whole number, got {workers!r}")
    out = Path(out_dir)
    _check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".svdh-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BadConfigError(
            f"--out {out}: cannot write there ({exc.strerror or exc}); choose a writable folder"
        ) from None
    tasks = [(opts, i, str(out), monochrome1) for i in range(n)]
    results: list[dict[str, Any]] = []
    workers = min(workers, n)
    if workers == 1:
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
    else:
        import multiprocessing as mp

        # spawn: no inherited locks or thread pools from the parent (OpenCV, torch)
        ctx = mp.get_context("spawn")
        chunk = max(1, min(16, n // (4 * workers)))
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_worker_init
        ) as ex:
            for i, r in enumerate(ex.map(_work, tasks, chunksize=chunk)):
                results.append(r)
                if progress:
                    progress(i + 1)
    labels = out / ("training.csv" if mode == "ra" else "boneage.csv")
    cols = ra_columns() if mode == "ra" else ["id", "boneage", "male"]
    _write_csv(labels, cols, (r["row"] for r in results))
    images: dict[str, Any] = {}
    for r in results:
        images.update(r["images"])
    doc = {
        "format": LANDMARKS_FORMAT,
        "version": LANDMARKS_VERSION,
        "generator": {"svdh": __version__, **opts.to_dict(), "monochrome1": monochrome1},
        "coordinates": "pixels of the written image: x to the right, y down, (0, 0) = centre of the top-left pixel",
        "landmark_names": list(scoring.LANDMARKS),
        "images": images,
    }
    lm = out / LANDMARKS_FILE
    tmp = lm.with_suffix(".json.tmp")
    tmp.write_text(_dump_landmarks(doc), encoding="utf-8")
    tmp.replace(lm)
    return CohortSummary(
        out, opts, len(images), n, labels, lm, list(images), [r["value"] for r in results]
    )


def _dump_landmarks(doc: dict[str, Any]) -> str:
    """JSON with the header indented and one line per image (readable, and small for big cohorts)."""
    head = {k: v for k, v in doc.items() if k != "images"}
    text = json.dumps(head, indent=1)[:-2]
    lines = [
        f" {json.dumps(name)}: {json.dumps(entry, separators=(',', ':'))}"
        for name, entry in doc["images"].items()
    ]
    return text + ',\n "images": {\n' + ",\n".join(lines) + "\n }\n}\n"


def _write_csv(path: Path, cols: list[str], rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    tmp.replace(path)
