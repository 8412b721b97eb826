"""The sex of a child (an input of bone-age models): the one vocabulary svdh reads.

Training tables (the RSNA ``male`` column), the ``--patients`` CSV, ``--sex`` and the DICOM
``PatientSex`` tag all go through :func:`norm_sex`, so every place accepts the same words.
"""

from __future__ import annotations

from typing import Any

from svdh.core.errors import BadConfigError

_MALE = {"m", "male", "boy", "true", "t", "1", "1.0", "yes", "y"}
_FEMALE = {"f", "female", "girl", "false", "0", "0.0", "no", "n"}
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


def sex_code(sex: str | None) -> float:
    """The model's input: +1 male, -1 female, 0 unknown (as ``build_targets`` codes it)."""
    return {"M": 1.0, "F": -1.0}.get(sex or "", 0.0)
