"""The sex of a child, an input of bone-age models, from wherever a user gives it.

Bone age matures earlier in girls, so bone-age models take the sex as an input (as the
RSNA 2017 winners did). At prediction time it comes from, in this order of precedence:
``--sex M|F`` (one value for every image of the command), a ``sex`` or ``male`` column of
the ``--patients`` CSV, or the DICOM ``PatientSex`` tag. The model codes it as it was
trained: +1 male, -1 female, 0 unknown.
"""

from __future__ import annotations

from typing import Any

from svdh.core.errors import BadConfigError

#: Where a prediction's sex came from (the ``sex_from`` output).
FROM_OPTION, FROM_CSV, FROM_DICOM = "--sex", "patients CSV", "DICOM PatientSex"

_MALE = {"m", "male", "boy", "true", "1", "1.0", "yes"}
_FEMALE = {"f", "female", "girl", "false", "0", "0.0", "no"}
_UNKNOWN = {"", "o", "other", "u", "unknown", "nan", "none", "null"}


def norm_sex(value: Any, where: str = "sex") -> str | None:
    """``M``, ``F`` or None (unknown) from M/F, male/female, True/False or 1/0 (the RSNA
    ``male`` column); anything else is an error naming ``where``."""
    if value is None:
        return None
    s = str(value).strip().lower()
    if s in _MALE:
        return "M"
    if s in _FEMALE:
        return "F"
    if s in _UNKNOWN:
        return None
    raise BadConfigError(f"{where}: {value!r} is not a sex; give M or F (or male/female, 1/0)")


def resolve_sex(
    option: str | None, csv_value: str | None, dicom_value: Any
) -> tuple[str | None, str | None]:
    """``(sex, where it came from)``: ``--sex``, else the patients CSV, else DICOM."""
    if option:
        return option, FROM_OPTION
    if csv_value:
        return csv_value, FROM_CSV
    dicom = norm_sex(dicom_value, "DICOM PatientSex") if dicom_value else None
    if dicom:
        return dicom, FROM_DICOM
    return None, None


def sex_code(sex: str | None) -> float:
    """The model's input: +1 male, -1 female, 0 unknown (as ``build_targets`` codes it)."""
    return {"M": 1.0, "F": -1.0}.get(sex or "", 0.0)
