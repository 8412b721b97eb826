"""What ``svdh predict`` reads besides the model: the input files and the patients CSV.

:func:`expand_inputs` turns files, folders and globs into image paths; :func:`read_patients_csv`
reads a ``--patients`` map (image -> patient id and side, sides by :func:`svdh.core.hands.norm_side`);
:func:`lookup_patient` finds an image's entry. File names in the RA2-DREAM style
(``<patient>-LH.png``) give patient and side too: :func:`patient_from_name`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from svdh.core.errors import BadConfigError, BadDatasetError
from svdh.core.hands import norm_side
from svdh.core.visits import normalize_visit

#: File name endings read from folders (an explicitly named file is read whatever its name).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
_SIDE_NAME = re.compile(r"^(?P<pid>.+?)[-_](?P<side>[LRB])H?$", re.IGNORECASE)
_VISIT_NAME = re.compile(r"^(?P<pid>.+?)-V(?P<visit>\d+)(?:-F\d+)?$")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (recursive: image suffixes, plus extension-less DICOM files) and globs,
    in a stable order without duplicates. A path that matches nothing is a clear error."""
    import glob

    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in inputs:
        s = str(raw)
        p = Path(s).expanduser()
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file() and not q.name.startswith(".") and _folder_image(q):
                    add(q)
        elif p.is_file():
            add(p)
        elif any(ch in s for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise BadConfigError(f"{s}: the pattern matches no file")
            for m in files:
                add(m)
        else:
            raise BadConfigError(f"{s}: no such file or folder")
    return out


def _folder_image(p: Path) -> bool:
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if p.suffix == "" and p.name.upper() != "DICOMDIR":
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
            return head[128:132] == b"DICM"
        except OSError:
            return False
    return False


@dataclass(frozen=True)
class PatientInfo:
    patient_id: str | None
    side: str | None
    visit: str | None = None  # a --patients CSV's visit column, or <id>-V<visit>-LH names
    sex: str | None = None  # M or F (bone age), from a sex or male column


def read_patients_csv(path: str | Path) -> dict[str, PatientInfo]:
    """A CSV map ``image, patient_id[, side][, visit][, sex]``; ``image`` is matched against a
    file's path, name or stem (in that order). Side is L or R (``left``/``right``/``LH``/``RH``
    accepted); visit a number or a date (:mod:`svdh.core.visits`); sex (for bone age) M or F,
    from a ``sex`` column or the RSNA ``male`` one."""
    import pandas as pd

    from svdh.inference.sex import norm_sex

    p = Path(path)
    if not p.is_file():
        raise BadDatasetError(f"{p}: patients CSV not found")
    try:
        df = pd.read_csv(p, dtype=str).fillna("")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadDatasetError(f"{p}: not a readable CSV ({exc})") from None
    missing = [c for c in ("image", "patient_id") if c not in df.columns]
    if missing:
        raise BadDatasetError(
            f"{p}: missing column(s) {', '.join(missing)}; expected image,patient_id[,side]"
        )
    out: dict[str, PatientInfo] = {}
    for i, row in enumerate(df.itertuples(index=False), start=2):
        img, pid = str(row.image).strip(), str(row.patient_id).strip()
        if not img or not pid:
            raise BadDatasetError(f"{p}: row {i}: image and patient_id must not be empty")
        side = norm_side(getattr(row, "side", "") or "", f"{p}: row {i}")
        sex_cell = getattr(row, "sex", "") or getattr(row, "male", "") or ""
        sex = norm_sex(sex_cell, f"{p}: row {i}: sex")
        if img in out:
            raise BadDatasetError(f"{p}: row {i}: image {img!r} is listed twice")
        try:
            visit = normalize_visit(getattr(row, "visit", "")) or None
        except ValueError as exc:
            raise BadDatasetError(f"{p}: row {i}: {exc}") from None
        out[img] = PatientInfo(pid, side, visit=visit, sex=sex)
    return out


def lookup_patient(
    mapping: Mapping[str, PatientInfo] | None, path: Path | str
) -> PatientInfo | None:
    if not mapping:
        return None
    p = Path(str(path))
    for key in (str(p), str(p.resolve()) if p.exists() else None, p.name, p.stem):
        if key and key in mapping:
            return mapping[key]
    return None


def patient_from_name(name: str | Path) -> PatientInfo | None:
    """Patient and side from an RA2-DREAM-style file name (``<patient>-LH.png``, ``_R``,
    ``-BH`` for both hands: side None)."""
    m = _SIDE_NAME.match(Path(name).stem)
    if not m:
        return None
    side = m.group("side").upper()
    hand_side = None if side == "B" else side  # -BH: each hand's side is the canonical stage's
    v = _VISIT_NAME.match(m.group("pid"))  # svdh synth --visits: <id>-V2-LH, <id>-V2-F2-LH
    if v:
        return PatientInfo(v.group("pid"), hand_side, v.group("visit"))
    return PatientInfo(m.group("pid"), hand_side)
