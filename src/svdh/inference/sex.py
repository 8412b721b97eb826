"""The sex of a child, an input of bone-age models, from wherever a user gives it.

Bone age matures earlier in girls, so bone-age models take the sex as an input (as the
RSNA 2017 winners did). At prediction time it comes from, in this order of precedence:
``--sex M|F`` (one value for every image of the command), a ``sex`` or ``male`` column of
the ``--patients`` CSV, or the DICOM ``PatientSex`` tag. The model codes it as it was
trained: +1 male, -1 female, 0 unknown.
"""

from __future__ import annotations

from typing import Any

from svdh.core.sex import norm_sex, sex_code

#: Where a prediction's sex came from (the ``sex_from`` output).
FROM_OPTION, FROM_CSV, FROM_DICOM = "--sex", "patients CSV", "DICOM PatientSex"


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


__all__ = ["FROM_CSV", "FROM_DICOM", "FROM_OPTION", "norm_sex", "resolve_sex", "sex_code"]
