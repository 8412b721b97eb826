"""The manifest: one validated row per image, whatever the source layout.

Columns (see docs/architecture.md, "Manifests"): ``image``, ``image_id``, ``patient_id``,
``side``, ``visit``, ``svdh``, ``erosion``, ``jsn``, ``patient_svdh``, ``score_scope``,
``boneage``, ``male``, ``reader2``, ``film_side``. Sources collect :class:`Problem` s while reading; then
:func:`finalize` either raises one :class:`BadDatasetError` listing the offending rows or, with
``skip_invalid``, drops them, warns and records what was skipped in ``df.attrs``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from svdh.core.errors import BadDatasetError

log = logging.getLogger("svdh.data")

STR_COLUMNS: tuple[str, ...] = (
    "image",
    "image_id",
    "patient_id",
    "side",
    "visit",
    "score_scope",
    "film_side",
)
FLOAT_COLUMNS: tuple[str, ...] = (
    "svdh",
    "erosion",
    "jsn",
    "patient_svdh",
    "boneage",
    "male",
    "reader2",
)
COLUMNS: tuple[str, ...] = (
    "image",
    "image_id",
    "patient_id",
    "side",
    "visit",
    "svdh",
    "erosion",
    "jsn",
    "patient_svdh",
    "score_scope",
    "boneage",
    "male",
    "reader2",
    "film_side",
)
SIDES = ("L", "R", "both", "")
#: ``film_side`` of a row that is one hand (``side`` L or R) cut out of a film of both hands:
#: the canonical training cache (:mod:`svdh.data.cache`) cuts that hand out, as prediction does.
FILM_BOTH = "both"

#: How many problems an error message lists before "and N more".
MAX_LISTED = 10


@dataclass(frozen=True)
class Problem:
    """Something wrong with one input row.

    ``where`` locates it for a person (``"training.csv row 4 (UAB004)"``), ``message`` says
    what is wrong; ``index`` is the manifest row it invalidates (None when the input row
    produced no manifest row at all).
    """

    where: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def new_row(**values: Any) -> dict[str, Any]:
    """A manifest row with every column, defaults filled (NaN targets, empty strings)."""
    row: dict[str, Any] = {c: "" for c in STR_COLUMNS}
    row.update({c: np.nan for c in FLOAT_COLUMNS})
    row["score_scope"] = "hand"
    row.update(values)
    return row


def finalize(
    rows: Sequence[dict[str, Any]],
    problems: Sequence[Problem],
    spec: str,
    skip_invalid: bool,
    *,
    n_unlinked: int = 0,
) -> pd.DataFrame:
    """Build the manifest DataFrame, or raise listing every problem (first :data:`MAX_LISTED`).

    With ``skip_invalid`` the rows with problems are dropped; ``df.attrs`` then holds
    ``problems`` (messages) and ``n_skipped`` (input rows or images left out).
    """
    problems = list(problems)
    if problems and not skip_invalid:
        raise BadDatasetError(
            f"{spec}: {len(problems)} problem(s): {describe(problems)}; fix them or pass "
            "--skip-invalid to leave those rows out"
        )
    bad = {p.index for p in problems if p.index is not None}
    kept = [r for i, r in enumerate(rows) if i not in bad]
    n_skipped = len(bad) + sum(1 for p in problems if p.index is None)
    if problems:
        log.warning("%s: skipped %d row(s) with problems: %s", spec, n_skipped, describe(problems))
    df = to_frame(kept)
    if df.empty:
        raise BadDatasetError(
            f"{spec}: no usable images"
            + (f" ({len(problems)} problem(s): {describe(problems)})" if problems else "")
        )
    df.attrs["source"] = spec
    df.attrs["problems"] = [str(p) for p in problems]
    df.attrs["n_skipped"] = n_skipped
    df.attrs["n_unlinked"] = n_unlinked
    return df


def whole_film_problems(df: pd.DataFrame) -> list[Problem]:
    """The rows a canonical training cache cannot use: a film of both hands kept as one row
    (side ``both``) scored on the patient scale. Prediction cuts such a film into its two hands
    and scores each; training needs each hand's own score (two rows, ``film_side`` both)."""
    out = []
    for i, (iid, side, fs) in enumerate(
        zip(df["image_id"], df["side"], df["film_side"], strict=True)
    ):
        if side == "both" and fs != FILM_BOTH:
            out.append(
                Problem(
                    str(iid),
                    "a both-hands film with one patient-scope row: canonical training scores "
                    "each hand, so it needs each hand's own score (two rows side L and R of "
                    "this image); give them, leave the film out (--skip-invalid) or train "
                    "with --no-canonical",
                    i,
                )
            )
    return out


def describe(problems: Sequence[Problem], limit: int = MAX_LISTED) -> str:
    """Problems as one line: the first ``limit`` of them, then how many more."""
    shown = "; ".join(str(p) for p in problems[:limit])
    more = len(problems) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


def to_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts) to a DataFrame with exactly :data:`COLUMNS` and their dtypes."""
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for c in STR_COLUMNS:
        df[c] = df[c].fillna("").astype(str)
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df.reset_index(drop=True)


def read_manifest_csv(path: str | Path) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest_csv` (ids stay strings: "007" != 7)."""
    dtypes = {c: str for c in STR_COLUMNS}
    df = pd.read_csv(
        path, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in FLOAT_COLUMNS}
    )
    for c in STR_COLUMNS:
        if c in df:
            df[c] = df[c].fillna("").astype(str)
    for c in FLOAT_COLUMNS:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


def write_manifest_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest as CSV (NaN as empty cells)."""
    df.to_csv(path, index=False)


def source_kind(df: pd.DataFrame) -> str:
    """``ra2-dream``, ``rsna-boneage``, ``csv`` or ``""`` from ``df.attrs['source']``."""
    spec = str(df.attrs.get("source", ""))
    return spec.split(":", 1)[0] if ":" in spec else ""
