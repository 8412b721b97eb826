"""RA2-DREAM-style folders with visits: ``training.csv`` with a ``visit`` column.

One row per patient, visit and film (``film``: 1, or 2 for a repeat film of the same visit;
optional, default 1), the RA2-DREAM score columns, and images
``<Patient_ID>-V<visit>-LH.*`` / ``-RH.*`` (``-V<visit>-F2-LH.*`` for film 2; ``-BH`` for a
dual-hand film), as ``svdh synth --visits`` writes them. ``visit`` is a visit number or a date
(:mod:`svdh.core.visits`); ``date``, where present, is only documentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from svdh.core.errors import BadDatasetError
from svdh.core.scoring import hand_score
from svdh.core.visits import normalize_visit
from svdh.data.manifest import FILM_BOTH, Problem, finalize, new_row


def has_visits(table: pd.DataFrame) -> bool:
    return any(str(c).strip().lower() == "visit" for c in table.columns)


def _stem(pid: str, visit: str, film: int, side: str) -> str:
    return f"{pid}-V{visit}" + (f"-F{film}" if film > 1 else "") + f"-{side}H"


def ra2_dream_visits(
    root: Path,
    table: pd.DataFrame,
    spec: str,
    skip_invalid: bool,
    *,
    columns: Callable[..., dict[str, str]],
    images: dict[str, list[Path]],
    number: Callable[[Any], Any],
    split_both_hands: bool = False,
) -> pd.DataFrame:
    """The manifest of an RA2-DREAM-style folder whose ``training.csv`` has a ``visit`` column.

    ``columns``, ``images`` and ``number`` are the RA2-DREAM reader's column finder, image index
    and cell parser (:mod:`svdh.data.sources`), passed in so the two modules import one way.
    ``split_both_hands``: a dual-hand film gives one row per hand (``film_side`` both), as
    :func:`svdh.data.sources.load_source` says.
    """
    cols = columns(
        table,
        {"pid": ("Patient_ID", "patient_id"), "visit": ("visit",), "film": ("film",)},
        {"pid", "visit"},
        f"{spec}: training.csv",
    )
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str, int], int] = {}
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2
        pid = str(rec[cols["pid"]]).strip()
        where = f"training.csv row {line} ({pid or '?'})"
        try:
            visit = normalize_visit(rec[cols["visit"]])
            film = int(float(str(rec.get(cols.get("film", ""), "") or 1)))
        except ValueError as exc:
            problems.append(Problem(where, str(exc)))
            continue
        if not pid or not visit:
            problems.append(Problem(where, "empty Patient_ID or visit"))
            continue
        key = (pid, visit, film)
        if key in seen:
            problems.append(Problem(where, f"duplicate visit {visit} (first on row {seen[key]})"))
            continue
        seen[key] = line
        values = {k: number(v) for k, v in rec.items()}
        _add_visit_rows(rows, problems, images, values, (pid, visit, film), where, split_both_hands)
    known = {r["image_id"].split(":")[0] for r in rows}
    n_unlinked = sum(
        1 for stem in images if stem.rsplit("-", 1)[-1] in ("LH", "RH", "BH") and stem not in known
    )
    return finalize(rows, problems, spec, skip_invalid, n_unlinked=n_unlinked)


def _add_visit_rows(
    rows: list[dict[str, Any]],
    problems: list[Problem],
    images: dict[str, list[Path]],
    values: dict[str, Any],
    key: tuple[str, str, int],
    where: str,
    split: bool = False,
) -> None:
    pid, visit, film = key
    scores: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for side in ("L", "R"):
        try:
            scores[side] = hand_score(values, side, row_id=pid)
        except BadDatasetError as exc:
            errors[side] = str(exc).removeprefix(f"row {pid}: ")
    total = sum(s.erosion + s.jsn for s in scores.values()) if not errors else math.nan
    both = _stem(pid, visit, film, "B")
    sides = ("both",) if both in images and not split else ("L", "R")
    for side in sides:
        on_film = both in images and split  # one hand of the dual-hand film
        stem = both if side == "both" or on_film else _stem(pid, visit, film, side)
        files = images.get(stem, [])
        if side == "both":
            ero = sum(s.erosion for s in scores.values()) if not errors else math.nan
            jsn = sum(s.jsn for s in scores.values()) if not errors else math.nan
        else:
            s = scores.get(side)
            ero, jsn = (s.erosion, s.jsn) if s else (math.nan, math.nan)
        idx = len(rows)
        rows.append(
            new_row(
                image=str(files[0]) if files else "",
                image_id=f"{stem}:{side}" if on_film else stem,
                patient_id=pid,
                side=side,
                visit=visit,
                svdh=ero + jsn,
                erosion=ero,
                jsn=jsn,
                patient_svdh=total,
                score_scope="patient" if side == "both" else "hand",
                film_side=FILM_BOTH if on_film else "",
            )
        )
        if not files:
            problems.append(Problem(where, f"image {stem}.png (or .jpg/.dcm/.tif) not found", idx))
        elif len(files) > 1:
            problems.append(
                Problem(
                    where, f"several images for {stem}: {', '.join(f.name for f in files)}", idx
                )
            )
        bad = "; ".join(errors.values()) if side == "both" else errors.get(side)
        if bad:
            problems.append(Problem(where, bad, idx))
