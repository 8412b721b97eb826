"""One prediction: the :class:`Prediction` dataclass every output renders.

The CSV writer (:meth:`Prediction.to_row`), the JSON writer and the web API
(:meth:`Prediction.to_json`, whose schema :meth:`Prediction.json_fields` the web derives its
response model from) and the terminal line (:meth:`Prediction.to_text`) all read this one type.

Adding an output field is one edit here: declare it with :func:`_out` (its description, and
how it renders when it is not a plain value), then set it where it is computed
(:mod:`svdh.inference.predictor`). Plain values (numbers, strings, None) need nothing else:
they become a CSV column and a JSON key of their name.

A prediction also reads like the mapping the predictor's contract has always given
(``pred["score"]``, ``pred.get("cam")``, ``set(pred)``), so callers of ``predict_images`` keep
working; new code uses the attributes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import numpy as np

#: How a field renders (``kind`` metadata): ``value`` a CSV column and a JSON key of its own;
#: ``interval`` ``interval_lo``/``interval_hi`` columns; ``probs`` ``p_0..p_K-1`` columns;
#: ``members`` ``member_<name>`` columns; ``list`` one ``; ``-joined column; ``array`` neither
#: (heat maps and images, for the CAM files and the web page's views).
_KINDS = ("value", "interval", "probs", "members", "list", "array", "hidden")
#: Which models a field belongs to (``only`` metadata): SvdH models (scores, severity classes)
#: or bone-age models (months, the child's sex); a prediction renders its own family's fields
#: and the shared ones, so a bone-age output never shows a severity class.
SVDH, BONEAGE = "svdh", "boneage"


def _out(
    doc: str,
    *,
    kind: str = "value",
    default: Any = None,
    column: str | None = None,
    json_key: str | None = None,
    required: bool = False,
    digits: int = 3,
    only: str | None = None,
) -> Any:
    """A :class:`Prediction` field: ``doc`` describes it (API schema); ``column``/``json_key``
    rename it in CSV/JSON; ``required`` marks it present on every scored image in the API
    schema; ``digits`` rounds floats in CSV; ``only``: :data:`SVDH` or :data:`BONEAGE` where
    the field belongs to one family of models."""
    assert kind in _KINDS, kind
    meta = {
        "doc": doc,
        "kind": kind,
        "column": column,
        "json": json_key,
        "required": required,
        "digits": digits,
        "only": only,
    }
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(eq=False)
class Prediction:
    """The scores of one image (``error`` set and the scores None where it could not be scored)."""

    image: str = _out("the image: its path, or the uploaded file's name", required=True)
    patient_id: str | None = _out("patient id, where known (DICOM, --patients, file name, form)")
    side: str | None = _out("L or R where known")
    visit: str | None = _out(
        "visit, where known: a number, or the date (YYYY-MM-DD) from DICOM StudyDate or --patients"
    )
    side_source: str | None = _out(
        "which source decided the side: patients, dicom, filename, position (a both-hands "
        "film), anatomy (the thumb side)"
    )
    hand: str | None = _out("which hand of the film, e.g. '1/2' where a both-hands film was split")
    view: str | None = _out("hand, wrist_only, foot, inverted or other (docs/film-quality.md)")
    canonical: str | None = _out(
        "what was done to the film before the model: quarter turns, tilt, mirroring"
    )
    in_totals: bool | None = _out("whether this hand may enter its patient's total")
    score: float | None = _out(
        "predicted SvdH total of this image (one hand 0-140, or 0-280)", required=True, only=SVDH
    )
    bone_age_months: float | None = _out(
        "predicted bone age in months (bone-age models)", digits=1, only=BONEAGE
    )
    sex: str | None = _out(
        "the child's sex given to a bone-age model: M, F, or empty where unknown", only=BONEAGE
    )
    sex_from: str | None = _out(
        "where the sex came from: --sex, patients CSV or DICOM PatientSex", only=BONEAGE
    )
    interval: list[float] | None = _out("[low, high] prediction interval", kind="interval")
    severity_class: int | None = _out(
        "ordinal severity class, 0 = no damage", required=True, only=SVDH
    )
    severity_label: str | None = _out("score range of the class, e.g. '5-9'", only=SVDH)
    probs: list[float] | None = _out(
        "probability of each severity class",
        kind="probs",
        json_key="probabilities",
        digits=4,
        only=SVDH,
    )
    erosion: float | None = _out("predicted erosion sub-score, where the model has it", only=SVDH)
    jsn: float | None = _out("predicted joint-space-narrowing sub-score, where present", only=SVDH)
    member_spread: float | None = _out("spread between ensemble members (or fold models)")
    member_scores: dict[str, float | None] | None = _out(
        "each ensemble member's score", kind="members"
    )
    cam_path: str | None = _out("the heat-map overlay written for this image", column="cam")
    warnings: list[str] = _out("quality warnings", kind="list", default=[])
    error: str | None = _out("why the image could not be scored")
    model: str | None = _out("name of the model bundle that scored the image")
    model_version: str | None = _out("the bundle's version: the first 12 hex of its SHA-256")
    # arrays: for the CAM files and the web page, never written to CSV or JSON
    cam: np.ndarray | None = _out("ensemble heat map (model input size)", kind="array")
    cam_members: np.ndarray | None = _out("each member's heat map", kind="array")
    cam_member_names: list[str] | None = _out("names of the members' maps", kind="array")
    preprocessed: np.ndarray | None = _out("the uint8 model input", kind="array")
    display: np.ndarray | None = _out("the model's field at display resolution", kind="array")
    model_input: Any = _out(
        "the hand's svdh.core.canonical.ModelInput (film <-> input maps)", kind="array"
    )
    #: the family of the model that made it (:data:`SVDH` or :data:`BONEAGE`): which fields render
    family: str = _out("svdh or boneage", kind="hidden", default=SVDH)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def failed(cls, image: str, error: str, **known: Any) -> Prediction:
        """The prediction of an image that could not be scored: ``error`` says why (one line,
        naming the file), the scores are None; ``known``: patient_id, side, model..."""
        return cls(image=image, error=error or "not scored", **known)

    # ------------------------------------------------------------------ renderers
    def to_row(self, n_classes: int, member_names: Sequence[str]) -> dict[str, Any]:
        """One flat CSV row: numbers rounded, None as empty; ``n_classes`` ``p_k`` columns and one
        ``member_<name>`` column per member, so every row of a file has the same columns (those
        of the prediction's :attr:`family`: a bone-age row has months, never classes)."""
        out: dict[str, Any] = {}
        for f in self._fields():
            kind, v = f.metadata["kind"], getattr(self, f.name)
            digits = f.metadata["digits"]
            if kind == "value":
                out[f.metadata["column"] or f.name] = _cell(v, digits)
            elif kind == "interval":
                iv = v or (None, None)
                out["interval_lo"], out["interval_hi"] = _cell(iv[0], digits), _cell(iv[1], digits)
            elif kind == "probs":
                probs = v or [None] * n_classes
                out.update({f"p_{k}": _cell(probs[k], digits) for k in range(n_classes)})
            elif kind == "members":
                ms = v or {}
                out.update({f"member_{n}": _cell(ms.get(n), digits) for n in member_names})
            elif kind == "list":
                out[f.metadata["column"] or f.name] = "; ".join(str(x) for x in v or [])
        return out

    @classmethod
    def columns(cls, n_classes: int, member_names: Sequence[str], family: str = SVDH) -> list[str]:
        """The CSV header of :meth:`to_row` for predictions of ``family``."""
        return list(cls.failed("", "", family=family).to_row(n_classes, member_names))

    def _fields(self) -> list[dataclasses.Field[Any]]:
        """The fields this prediction renders: the shared ones and its family's."""
        return [
            f
            for f in dataclasses.fields(self)
            if f.metadata["only"] in (None, self.family) and f.metadata["kind"] != "hidden"
        ]

    def to_json(self) -> dict[str, Any]:
        """The JSON-safe fields (what the API answers and ``-o out.json`` writes per image):
        non-finite numbers become null, arrays are left out."""
        out: dict[str, Any] = {}
        for f in self._fields():
            kind, v = f.metadata["kind"], getattr(self, f.name)
            if kind == "array":
                continue
            key = f.metadata["json"] or f.name
            if kind == "interval":
                out[key] = None if v is None else [_num(v[0]), _num(v[1])]
            elif kind == "probs":
                out[key] = None if v is None else [_num(p) for p in np.asarray(v).ravel()]
            elif kind == "members":
                out[key] = {str(k): _num(x) for k, x in v.items()} if v else None
            elif kind == "list":
                out[key] = [str(x) for x in v or []]
            else:
                out[key] = _json_value(v)
        return out

    @classmethod
    def json_fields(cls, family: str | None = None) -> list[tuple[str, Any, str, bool, Any]]:
        """The schema of :meth:`to_json`: ``(key, type, description, required, default)`` per
        key, for the web's response model (one declaration, here); of one ``family``'s
        predictions where given, else of all."""
        hints = get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if f.metadata["kind"] in ("array", "hidden"):
                continue
            if family is not None and f.metadata["only"] not in (None, family):
                continue
            default = [] if f.metadata["kind"] == "list" else f.default
            out.append(
                (
                    f.metadata["json"] or f.name,
                    hints[f.name],
                    f.metadata["doc"],
                    bool(f.metadata["required"]),
                    default,
                )
            )
        return out

    def to_text(self) -> str:
        """The terminal line of ``svdh predict`` without ``-o``."""
        if self.error:
            return f"{self.image}: ERROR {self.error}"
        lo, hi = self.interval or (None, None)
        if self.family == BONEAGE:
            sex = f"sex {self.sex} ({self.sex_from})" if self.sex else "sex unknown"
            parts = [
                f"{self.image}: bone age {_fmt(self.bone_age_months)} months "
                f"[{_fmt(lo)}, {_fmt(hi)}]",
                sex,
                f"spread {_fmt(self.member_spread)}",
            ]
            if self.warnings:
                parts.append("WARNING: " + "; ".join(self.warnings))
            return "  ".join(parts)
        parts = [
            f"{self.image}: score {_fmt(self.score)} [{_fmt(lo)}, {_fmt(hi)}]",
            f"class {self.severity_class} ({self.severity_label})",
        ]
        if self.erosion is not None:
            parts.append(f"erosion {_fmt(self.erosion)} jsn {_fmt(self.jsn)}")
        parts.append(f"spread {_fmt(self.member_spread)}")
        if self.warnings:
            parts.append("WARNING: " + "; ".join(self.warnings))
        return "  ".join(parts)

    # ------------------------------------------------------------------ mapping-style reads
    def __getitem__(self, key: str) -> Any:
        if key not in _FIELD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in _FIELD_NAMES else default

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELD_NAMES)

    def __contains__(self, key: object) -> bool:
        return key in _FIELD_NAMES

    def keys(self) -> list[str]:
        return list(_FIELD_NAMES)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Prediction))


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, bool | str):
        return v
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return _num(v)
    return str(v)


def _cell(v: Any, digits: int) -> Any:
    if v is None:
        return ""
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, float | np.floating):
        return round(float(v), digits)
    return v


def _fmt(v: Any, nd: int = 1) -> str:
    return "-" if v is None else f"{float(v):.{nd}f}"
