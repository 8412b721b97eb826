"""Dataset sources: read each native layout into one validated manifest.

* ``rsna-boneage:DIR``: the Kaggle layout (``boneage-training-dataset.csv`` beside a folder
  ``boneage-training-dataset/``, possibly nested once more) or a flat folder with
  ``boneage.csv`` (``id, boneage, male``) beside ``<id>.png`` or under ``images/``.
* ``ra2-dream:DIR``: ``training.csv`` (RA2-DREAM columns) beside ``<Patient_ID>-LH.jpg`` and
  ``-RH.jpg``; one row per hand image with that hand's erosion, JSN and total, and the patient's
  hands-and-wrists total. A dual-hand film ``<Patient_ID>-BH.*`` gives one row with side
  ``both`` scored on the patient scale, or, with ``split_both_hands`` (canonical training),
  two rows, one per hand (``film_side`` both), each with that hand's scores. Images may be
  JPEG, PNG, DICOM or TIFF. Feet ignored.
* ``csv:FILE``: columns ``image``, ``patient_id``, ``svdh`` and optionally ``erosion``, ``jsn``,
  ``side``, ``visit``, ``reader2``, ``image_id``, ``patient_svdh``, ``score_scope``; image
  paths relative to the CSV's folder. With ``split_both_hands`` two rows of one image, side L
  and R, are the two hands of a both-hands film, and a ``both`` row (a patient total only) is
  a problem of its row: canonical training needs each hand's score.

A spec without a prefix is recognised from what lies there (a ``.csv`` file, a folder with
``training.csv`` or a bone-age CSV).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from svdh.core.errors import BadConfigError, BadDatasetError, quote
from svdh.core.scoring import (
    JOINTS,
    MAX_EROSION_HAND,
    MAX_HAND,
    MAX_JSN_HAND,
    MAX_PATIENT,
    hand_score,
)
from svdh.core.sex import norm_sex
from svdh.core.visits import normalize_visit
from svdh.data.manifest import FILM_BOTH, Problem, finalize, new_row

#: File extensions of images that sources link to rows (case-insensitive), in order of preference.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".dcm",
    ".dicom",
    ".tif",
    ".tiff",
    ".bmp",
)
KINDS = ("rsna-boneage", "ra2-dream", "csv")
#: Bone age range accepted (months): RSNA labels lie within 1-228.
MAX_BONEAGE_MONTHS = 240.0


def load_source(
    spec: str | os.PathLike[str], skip_invalid: bool = False, *, split_both_hands: bool = False
) -> pd.DataFrame:
    """Read a data source into a manifest DataFrame (one row per image).

    ``spec``: ``rsna-boneage:DIR``, ``ra2-dream:DIR``, ``csv:FILE``, or a bare path whose
    layout is recognised. Problems (missing images, duplicate ids, NaN or out-of-range labels)
    raise one :class:`BadDatasetError` listing the offending rows, unless ``skip_invalid``:
    then they are left out, with a warning, and counted in ``df.attrs['n_skipped']``.

    ``split_both_hands`` (canonical training, where prediction cuts a both-hands film into its
    hands): a both-hands film gives one row per hand, ``side`` L or R, ``film_side`` both,
    ``image_id`` ``<film id>:L`` / ``:R``, scored with that hand's own scores; a both-hands film
    with only a patient total is a problem of its row.
    """
    kind, path = parse_spec(spec)
    name = f"{kind}:{path}"
    if kind == "rsna-boneage":
        return _rsna(path, name, skip_invalid)
    if kind == "ra2-dream":
        return _ra2_dream(path, name, skip_invalid, split_both_hands)
    return _csv(path, name, skip_invalid, split_both_hands)


def parse_spec(spec: str | os.PathLike[str]) -> tuple[str, Path]:
    """Split ``kind:path`` (or recognise a bare path); check that the path exists."""
    text = os.fspath(spec)
    if "\x00" in text or not text.isprintable():
        raise BadDatasetError(
            f"{quote(text)}: the source path contains a NUL byte or control characters"
        )
    kind, sep, rest = text.partition(":")
    if sep and kind in KINDS:
        path = Path(rest).expanduser()
        if not rest:
            raise BadDatasetError(f"{text}: the source needs a path after '{kind}:'")
    elif sep and kind and "/" not in kind and len(kind) > 1:
        raise BadDatasetError(
            f"{text}: unknown source kind {kind!r}; use one of {', '.join(k + ':PATH' for k in KINDS)}"
        )
    else:
        path = Path(text).expanduser()
        kind = _guess_kind(path, text)
    if not path.exists():
        raise BadDatasetError(f"{text}: {path} does not exist")
    if kind == "csv" and not path.is_file():
        raise BadDatasetError(f"{text}: csv: needs a CSV file, {path} is a folder")
    if kind != "csv" and not path.is_dir():
        raise BadDatasetError(f"{text}: {kind}: needs a folder, {path} is a file")
    return kind, path.resolve()


def _guess_kind(path: Path, text: str) -> str:
    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    if path.is_dir():
        if (path / "training.csv").is_file():
            return "ra2-dream"
        if (path / "boneage.csv").is_file() or (path / "boneage-training-dataset.csv").is_file():
            return "rsna-boneage"
    if not path.exists():
        raise BadDatasetError(f"{text}: no such file or folder")
    raise BadDatasetError(
        f"{text}: cannot tell the layout; name it: rsna-boneage:DIR, ra2-dream:DIR or csv:FILE"
    )


# --------------------------------------------------------------------------- helpers


def _index_images(*folders: Path) -> dict[str, list[Path]]:
    """Map file stem -> image files in the given folders (non-recursive, first folder first)."""
    found: dict[str, list[Path]] = defaultdict(list)
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            entries = sorted((e.name for e in it if e.is_file()), key=lambda n: (_ext_rank(n), n))
        for name in entries:
            stem, ext = os.path.splitext(name)
            if ext.lower() in IMAGE_EXTENSIONS:
                found[stem].append(folder / name)
    return found


def _unusable_images(*folders: Path) -> dict[str, str]:
    """Stem -> why an image-named entry of the folders cannot be read (a broken symbolic link,
    a link loop, a FIFO...): folder scans name these instead of skipping them silently."""
    out: dict[str, str] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as it:
            for e in sorted(it, key=lambda e: e.name):
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in IMAGE_EXTENSIONS and not e.is_file():
                    why = _unusable_entry(Path(e.path))
                    if why is not None:
                        out.setdefault(stem, f"{e.name} {why}")
    return out


def _unusable_entry(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image file, or None when it is a regular file or
    absent (callers say "not found")."""
    import errno
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is a broken symbolic link" if os.path.islink(path) else None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be opened ({exc.strerror or exc})"
    except ValueError:
        return "has a NUL byte in its path"
    if stat.S_ISREG(st.st_mode):
        return None
    return "is a folder" if stat.S_ISDIR(st.st_mode) else "is not a regular file (a FIFO or device)"


def _ext_rank(name: str) -> int:
    ext = os.path.splitext(name)[1].lower()
    return IMAGE_EXTENSIONS.index(ext) if ext in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS)


def _read_csv(path: Path, spec: str) -> pd.DataFrame:
    try:
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        df = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise BadDatasetError(f"{spec}: {path.name} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise BadDatasetError(f"{spec}: {path.name} is not a readable CSV ({first})") from None
    _refuse_duplicate_columns(path, sep, spec)
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _refuse_duplicate_columns(path: Path, sep: str, spec: str) -> None:
    """pandas renames a repeated header (``svdh``, ``svdh.1``) and the first would win
    silently: refuse it, naming the column."""
    import csv

    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        header = next(csv.reader(fh, delimiter=sep), [])
    seen: dict[str, int] = {}
    dups = []
    for i, name in enumerate(header, 1):
        key = name.strip().lower()
        if key in seen and key:
            dups.append(f"{quote(name.strip())} (columns {seen[key]} and {i})")
        seen.setdefault(key, i)
    if dups:
        raise BadDatasetError(
            f"{spec}: {path.name} has duplicated column(s) {', '.join(dups)}; keep one of each"
        )


def _columns(
    df: pd.DataFrame, wanted: dict[str, tuple[str, ...]], required: set[str], where: str
) -> dict[str, str]:
    """Find columns case-insensitively; ``wanted`` maps canonical name -> accepted spellings."""
    lower = {c.lower(): c for c in df.columns}
    found = {}
    for name, spellings in wanted.items():
        for s in spellings:
            if s.lower() in lower:
                found[name] = lower[s.lower()]
                break
    missing = sorted(required - set(found))
    if missing:
        raise BadDatasetError(
            f"{where}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'}"
        )
    return found


def _number(value: Any) -> float:
    """A CSV cell as float: '' -> NaN; raises ValueError for text."""
    if value is None:
        return math.nan
    s = str(value).strip()
    if s == "" or s.lower() in ("nan", "na", "n/a", "none", "null"):
        return math.nan
    return float(s)


def _cell(value: Any) -> str:
    """A CSV cell as echoed in ``where``: unchanged when printable, else quoted and escaped."""
    text = str(value)
    return text if text.isprintable() and len(text) <= 200 else quote(text, 200)


def _score_problem(raw: Any, hi: float) -> tuple[float, str | None]:
    """A score cell as a number, and what is wrong with it (None when it is fine or empty).

    NaN (an empty cell) is missing, which callers handle; infinities (``inf``, ``1e400``) and
    text are refused here, naming the value as written."""
    try:
        v = _number(raw)
    except ValueError:
        return math.nan, f"{quote(raw)} is not a number"
    if math.isinf(v):
        return math.nan, f"{quote(raw)} is not a finite number"
    if math.isfinite(v) and not 0 <= v <= hi:
        return v, f"{v:g} is out of range 0-{hi:g}"
    return v, None


def _joint_problems(values: dict[str, Any], side: str) -> list[str]:
    """Every bad joint score of one hand (RA2-DREAM columns), each with its column."""
    missing = [j.column(side) for j in JOINTS if j.column(side) not in values]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return [f"missing column(s) {', '.join(missing[:3])}{more}"]
    out = []
    for joint in JOINTS:
        col = joint.column(side)
        v, problem = _score_problem(values[col], joint.max_score)
        label = f"{col} ({joint.anatomy})"
        if problem and "out of range" in problem:
            out.append(f"{label} = {v:g} is out of range 0-{joint.max_score} for {joint.kind}")
        elif problem:
            out.append(f"{label} = {problem}")
        elif math.isnan(v):
            out.append(f"{label} is missing (NaN)")
        elif not v.is_integer():
            out.append(f"{label} = {v:g} is not a whole number (joint scores are 0, 1, 2...)")
    return out


def _number_or_text(value: Any) -> Any:
    try:
        v = _number(value)
    except ValueError:
        return value
    return int(v) if math.isfinite(v) and v.is_integer() else v  # messages show "7", not "7.0"


# --------------------------------------------------------------------------- RSNA Bone Age


def _rsna(root: Path, spec: str, skip_invalid: bool) -> pd.DataFrame:
    kaggle = root / "boneage-training-dataset.csv"
    flat = root / "boneage.csv"
    if flat.is_file():
        csv_path, folders = flat, (root, root / "images")
    elif kaggle.is_file():
        sub = root / "boneage-training-dataset"
        csv_path, folders = kaggle, (sub / "boneage-training-dataset", sub, root)
    else:
        raise BadDatasetError(
            f"{spec}: no boneage.csv (flat layout: id, boneage, male beside <id>.png or images/) "
            "nor boneage-training-dataset.csv (Kaggle layout) in the folder"
        )
    table = _read_csv(csv_path, spec)
    cols = _columns(
        table,
        {
            "id": ("id", "image_id", "Image ID"),
            "boneage": ("boneage", "bone_age", "Bone Age (months)"),
            "male": ("male", "sex"),
        },
        {"id", "boneage"},
        f"{spec}: {csv_path.name}",
    )
    images, unusable = _index_images(*folders), _unusable_images(*folders)
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2  # 1-based, after the header: what a spreadsheet shows
        image_id = str(rec[cols["id"]]).strip()
        where = f"{csv_path.name} row {line} (id {_cell(image_id) or '?'})"
        idx = len(rows)
        row = new_row(image_id=image_id, patient_id=image_id, score_scope="hand")
        rows.append(row)

        def note(msg: str, where: str = where, idx: int = idx) -> None:
            problems.append(Problem(where, msg, idx))

        if not image_id:
            note("empty id")
            continue
        if image_id in seen:
            note(f"duplicate id (first on row {seen[image_id]})")
            continue
        seen[image_id] = line
        files = images.get(image_id)
        if not files and image_id in unusable:
            note(f"image {unusable[image_id]}")
        elif not files:
            note(f"image {_cell(image_id)}.png not found in {_folders(folders, root)}")
        else:
            row["image"] = str(files[0])
        _rsna_targets(row, rec, cols, note)
    linked = {Path(r["image"]).stem for r in rows if r["image"]}
    n_unlinked = sum(1 for stem in images if stem not in linked)
    return finalize(rows, problems, spec, skip_invalid, n_unlinked=n_unlinked)


def _rsna_targets(
    row: dict[str, Any], rec: dict[str, Any], cols: dict[str, str], note: Callable[[str], None]
) -> None:
    """Read ``boneage`` (months, checked against its range) and ``male`` into ``row``."""
    age, bad = _score_problem(rec[cols["boneage"]], math.inf)
    if bad:
        note(f"boneage {bad}")
        return
    if not np.isfinite(age):
        note("boneage is missing")
    elif not 0 <= age <= MAX_BONEAGE_MONTHS:
        note(f"boneage {age:g} months is out of range 0-{MAX_BONEAGE_MONTHS:g}")
    row["boneage"] = age
    if "male" in cols:
        raw = rec[cols["male"]]
        try:
            sex = norm_sex(raw, "male")
        except BadConfigError:
            note(f"male {quote(raw)} is not True/False")
        else:
            row["male"] = {"M": 1.0, "F": 0.0}.get(sex or "", math.nan)


def _folders(folders: tuple[Path, ...], root: Path) -> str:
    names = []
    for f in folders:
        if f.is_dir():
            rel = os.path.relpath(f, root)
            names.append("./" if rel == "." else f"{rel}/")
    return " or ".join(names) or str(root)


# --------------------------------------------------------------------------- RA2-DREAM


def _ra2_dream(root: Path, spec: str, skip_invalid: bool, split: bool = False) -> pd.DataFrame:
    csv_path = root / "training.csv"
    if not csv_path.is_file():
        raise BadDatasetError(
            f"{spec}: no training.csv in the folder (RA2-DREAM layout: training.csv beside "
            "<Patient_ID>-LH.jpg and -RH.jpg)"
        )
    table = _read_csv(csv_path, spec)
    from svdh.data.visits import has_visits, ra2_dream_visits

    if has_visits(table):  # one row per patient and visit (svdh synth --visits)
        return ra2_dream_visits(
            root,
            table,
            spec,
            skip_invalid,
            columns=_columns,
            images=_index_images(root),
            number=_number_or_text,
            split_both_hands=split,
        )
    cols = _columns(table, {"pid": ("Patient_ID", "patient_id")}, {"pid"}, f"{spec}: training.csv")
    images, unusable = _index_images(root), _unusable_images(root)
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2
        pid = str(rec[cols["pid"]]).strip()
        where = f"training.csv row {line} ({_cell(pid) or '?'})"
        if not pid:
            problems.append(Problem(where, "empty Patient_ID"))
            continue
        if pid in seen:
            problems.append(Problem(where, f"duplicate Patient_ID (first on row {seen[pid]})"))
            continue
        seen[pid] = line
        _Ra2Patient(pid, where, images, rows, problems, unusable, split).add_rows(rec)
    known = {r["image_id"].split(":")[0] for r in rows}
    n_unlinked = sum(
        1 for stem in images if stem.rsplit("-", 1)[-1] in ("LH", "RH", "BH") and stem not in known
    )
    return finalize(rows, problems, spec, skip_invalid, n_unlinked=n_unlinked)


@dataclass
class _Ra2Patient:
    """The manifest rows of one RA2-DREAM patient: one per hand image, and for a dual-hand
    film (``<pid>-BH``) that stands for both hands one row (or, with ``split``, one per hand)."""

    pid: str
    where: str
    images: dict[str, list[Path]]
    rows: list[dict[str, Any]]
    problems: list[Problem]
    unusable: dict[str, str] = field(default_factory=dict)
    split: bool = False

    def add_rows(self, rec: dict[str, Any]) -> None:
        pid, where, images = self.pid, self.where, self.images
        scores: dict[str, Any] = {}
        score_errors: dict[str, str] = {}
        values = {k: _number_or_text(v) for k, v in rec.items()}  # '' is a missing score (NaN)
        for side in ("L", "R"):
            bad_joints = _joint_problems(rec, side)
            if bad_joints:  # every bad joint named, not only the first
                score_errors[side] = "; ".join(bad_joints)
                continue
            try:
                scores[side] = hand_score(values, side, row_id=f"{pid}")
            except BadDatasetError as exc:
                score_errors[side] = str(exc).removeprefix(f"row {pid}: ")
        patient = None
        if not score_errors:
            left, right = scores["L"], scores["R"]
            patient = (left.erosion + right.erosion, left.jsn + right.jsn)
        total = patient[0] + patient[1] if patient else math.nan

        has_both = f"{pid}-BH" in images
        if has_both and self.split:
            self.add_film_hands(f"{pid}-BH", scores, score_errors, total)
        elif has_both:
            both = patient or (math.nan, math.nan)
            idx = self.add(f"{pid}-BH", "both", *both, "patient", total)
            if score_errors:
                self.problems.append(Problem(where, "; ".join(score_errors.values()), idx))
        for side in ("L", "R"):
            stem = f"{pid}-{side}H"
            if stem not in images and has_both:
                continue  # a dual-hand film stands for both hands
            s = scores.get(side)
            erosion, jsn = (s.erosion, s.jsn) if s else (math.nan, math.nan)
            idx = self.add(stem, side, erosion, jsn, "hand", total)
            if stem not in images and stem in self.unusable:
                self.problems.append(Problem(where, f"image {self.unusable[stem]}", idx))
            elif stem not in images:
                self.problems.append(
                    Problem(where, f"image {_cell(stem)}.jpg (or .png/.dcm/.tif) not found", idx)
                )
            elif side in score_errors:
                self.problems.append(Problem(where, score_errors[side], idx))

    def add_film_hands(
        self, stem: str, scores: dict[str, Any], errors: dict[str, str], total: float
    ) -> None:
        """The two hands of a both-hands film, each with its own scores (``split``)."""
        for side in ("L", "R"):
            s = scores.get(side)
            erosion, jsn = (s.erosion, s.jsn) if s else (math.nan, math.nan)
            idx = self.add(stem, side, erosion, jsn, "hand", total, film_side=FILM_BOTH)
            if side in errors:
                self.problems.append(Problem(self.where, errors[side], idx))

    def add(
        self,
        stem: str,
        side: str,
        erosion: float,
        jsn: float,
        scope: str,
        total: float,
        film_side: str = "",
    ) -> int:
        files = self.images.get(stem, [])
        idx = len(self.rows)
        self.rows.append(
            new_row(
                image=str(files[0]) if files else "",
                image_id=f"{stem}:{side}" if film_side else stem,
                patient_id=self.pid,
                side=side,
                svdh=erosion + jsn,
                erosion=erosion,
                jsn=jsn,
                patient_svdh=total,
                score_scope=scope,
                film_side=film_side,
            )
        )
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            self.problems.append(
                Problem(self.where, f"several images for {stem}: {names}; keep one", idx)
            )
        return idx


# --------------------------------------------------------------------------- generic CSV

_SIDE_WORDS = {
    "l": "L",
    "left": "L",
    "lh": "L",
    "r": "R",
    "right": "R",
    "rh": "R",
    "both": "both",
    "b": "both",
    "bh": "both",
    "lr": "both",
    "bilateral": "both",
    "": "",
}


def _csv(csv_path: Path, spec: str, skip_invalid: bool, split: bool = False) -> pd.DataFrame:
    table = _read_csv(csv_path, spec)
    name = csv_path.name
    optional = (
        "erosion",
        "jsn",
        "side",
        "visit",
        "reader2",
        "image_id",
        "patient_svdh",
        "score_scope",
    )
    cols = _columns(
        table,
        {
            "image": ("image", "path", "file"),
            "patient_id": ("patient_id", "patient"),
            "svdh": ("svdh", "total", "svdh_total"),
            **{c: (c,) for c in optional},
        },
        {"image", "patient_id", "svdh"},
        f"{spec}: {name}",
    )
    base = csv_path.parent
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen = _Seen(split)
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2
        raw_image = str(rec[cols["image"]]).strip()
        pid = str(rec[cols["patient_id"]]).strip()
        where = f"{name} row {line} ({_cell(raw_image) or '?'})"
        idx = len(rows)
        row = new_row(patient_id=pid)
        rows.append(row)

        def note(msg: str, where: str = where, idx: int = idx) -> None:
            problems.append(Problem(where, msg, idx))

        if not raw_image:
            note("empty image path")
            continue
        if "\x00" in raw_image:
            note("the image path contains a NUL byte")
            continue
        path = _csv_image(row, rec, cols, raw_image, base)
        if not pid:
            note("empty patient_id")
        seen.check(row, rec, cols, line, note)
        why = _unusable_entry(path)
        if why is not None:
            note(f"image {_cell(path)} {why}")
        elif not path.is_file():
            note(f"image not found: {_cell(path)}")
        _csv_side_and_scope(row, rec, cols, note)
        row["_side"] = row["side"]
        if split and row["side"] == "both":
            note(_WHOLE_FILM)
        _csv_scores(row, rec, cols, note)
    _fill_patient_totals(rows)
    for r in rows:
        r.pop("_side", None)
    return finalize(rows, problems, spec, skip_invalid)


_WHOLE_FILM = (
    "a both-hands film with a patient total only: canonical training scores each hand; give "
    "two rows of this image, side L and R, each with its hand's score (or train with "
    "--no-canonical)"
)


@dataclass
class _Seen:
    """Duplicate images and ids of a CSV source. With ``split`` a second row of an image, the
    other of sides L and R, makes the two rows the hands of a both-hands film (``film_side``
    both; default ids ``<id>:L`` / ``<id>:R``)."""

    split: bool
    image: dict[str, int] = field(default_factory=dict)
    image_id: dict[str, int] = field(default_factory=dict)
    first: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(
        self,
        row: dict[str, Any],
        rec: dict[str, Any],
        cols: dict[str, str],
        line: int,
        note: Callable[[str], None],
    ) -> None:
        side = _SIDE_WORDS.get(_text(rec, cols, "side").lower())
        first = self.first.setdefault(row["image"], row)
        pair = first is not row and {first.get("_side"), side} == {"L", "R"}
        if pair and self.split and not first.get("film_side"):
            named = bool(_text(rec, cols, "image_id"))
            for r, sd in ((first, first["_side"]), (row, side)):
                r["film_side"] = FILM_BOTH
                r["image_id"] = r["image_id"] if named else f"{r['image_id']}:{sd}"
            self.image_id.setdefault(first["image_id"], self.image[row["image"]])
        elif first is not row:
            hint = (
                "; rows of one image with side L and R are a both-hands film's hands, for "
                "canonical training (--canonical); else give the film one row, side both"
                if pair
                else ""
            )
            note(f"duplicate image (first on row {self.image[row['image']]}){hint}")
        elif row["image_id"] in self.image_id:
            note(
                f"duplicate image_id {quote(row['image_id'])} (first on row "
                f"{self.image_id[row['image_id']]})"
            )
        self.image.setdefault(row["image"], line)
        self.image_id.setdefault(row["image_id"], line)


def _text(rec: dict[str, Any], cols: dict[str, str], key: str) -> str:
    """The stripped text of optional column ``key`` ('' where the column or value is absent)."""
    return str(rec.get(cols.get(key, ""), "") or "").strip()


def _csv_image(
    row: dict[str, Any], rec: dict[str, Any], cols: dict[str, str], raw_image: str, base: Path
) -> Path:
    """Set the row's ``image`` (absolute; relative paths are from the CSV's folder) and
    ``image_id`` (the image_id column, else the path relative to the CSV without suffix)."""
    path = Path(raw_image).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        row["image"] = str(path.resolve())
    except (OSError, RuntimeError):  # a symbolic-link loop (RuntimeError before 3.13)
        row["image"] = os.path.abspath(path)
    try:
        rel = Path(row["image"]).relative_to(base.resolve()).as_posix()
    except ValueError:  # an absolute path outside the CSV's folder
        rel = Path(row["image"]).name
    default_id = os.path.splitext(rel)[0]
    row["image_id"] = _text(rec, cols, "image_id") or default_id
    return path


def _csv_side_and_scope(
    row: dict[str, Any], rec: dict[str, Any], cols: dict[str, str], note: Callable[[str], None]
) -> None:
    """Set ``side``, ``visit`` and ``score_scope`` (a both-hands film scores the patient)."""
    side_raw = _text(rec, cols, "side")
    side = _SIDE_WORDS.get(side_raw.lower())
    if side is None:
        note(f"side {quote(side_raw)} is not L, R or both")
        side = ""
    row["side"] = side
    try:
        row["visit"] = normalize_visit(_text(rec, cols, "visit"))
    except ValueError as exc:
        note(str(exc))
    scope_raw = _text(rec, cols, "score_scope").lower()
    if scope_raw and scope_raw not in ("hand", "patient"):
        note(f"score_scope {quote(scope_raw)} is not hand or patient")
        scope_raw = ""
    row["score_scope"] = scope_raw or ("patient" if side == "both" else "hand")


def _csv_scores(
    row: dict[str, Any], rec: dict[str, Any], cols: dict[str, str], note: Callable[[str], None]
) -> None:
    """Read the score columns into ``row``, each checked against its range for the row's scope
    (a patient-scope row may hold twice a hand's score), and erosion + jsn against svdh."""
    scope = row["score_scope"]
    factor = 2 if scope == "patient" else 1
    limits = {
        "svdh": MAX_HAND * factor,
        "erosion": MAX_EROSION_HAND * factor,
        "jsn": MAX_JSN_HAND * factor,
        "reader2": MAX_HAND * factor,
        "patient_svdh": MAX_PATIENT,
    }
    for col, hi in limits.items():
        if col not in cols:
            continue
        v, bad = _score_problem(rec[cols[col]], math.inf)
        if bad:
            note(f"{col} {bad}")
            continue
        row[col] = v
        if not np.isfinite(v):
            if col == "svdh":
                note("svdh is missing")
            continue
        if not 0 <= v <= hi:
            hint = (
                "; mark dual-hand films side=both or add a score_scope column"
                if scope == "hand" and col in ("svdh", "reader2") and v <= MAX_PATIENT
                else ""
            )
            note(f"{col} {v:g} is out of range 0-{hi:g} ({scope}){hint}")
    e, j, t = row["erosion"], row["jsn"], row["svdh"]
    if all(np.isfinite(x) for x in (e, j, t)) and abs(e + j - t) > 0.5:
        note(f"erosion {e:g} + jsn {j:g} != svdh {t:g}")


def _fill_patient_totals(rows: list[dict[str, Any]]) -> None:
    """Patient hands-and-wrists totals where not given: a dual-hand film's score, or L + R."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["patient_id"], r["visit"])].append(r)
    for members in groups.values():
        if all(np.isfinite(r["patient_svdh"]) for r in members):
            continue
        both = [r["svdh"] for r in members if r["side"] == "both" and np.isfinite(r["svdh"])]
        left = [r["svdh"] for r in members if r["side"] == "L" and np.isfinite(r["svdh"])]
        right = [r["svdh"] for r in members if r["side"] == "R" and np.isfinite(r["svdh"])]
        if both:
            total = both[0]
        elif len(left) == 1 and len(right) == 1:
            total = left[0] + right[0]
        else:
            continue
        for r in members:
            if not np.isfinite(r["patient_svdh"]):
                r["patient_svdh"] = total
