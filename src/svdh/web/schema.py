"""The HTTP API's schema: response models (for ``/openapi.json`` and the offline ``/docs``).

The per-image model is derived from :meth:`svdh.inference.prediction.Prediction.json_fields`,
so the fields the API answers are declared once, on the prediction; the web adds only what is
about the upload (format, size, views) and the interval's level.
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, Field, create_model

from svdh.inference.prediction import Prediction
from svdh.web.uploads import FORMATS


def _required(hint: Any) -> Any:
    """``X | None`` -> ``X`` for a field every scored image has."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _prediction_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key, hint, doc, required, default in Prediction.json_fields():
        if required:
            fields[key] = (_required(hint), Field(description=doc))
        elif isinstance(default, list):
            fields[key] = (hint, Field(default_factory=list, description=doc))
        else:
            fields[key] = (hint, Field(default, description=doc))
    return fields


#: What :meth:`Prediction.to_json` gives, as a pydantic model.
PredictionModel = create_model(
    "PredictionModel", __doc__="One prediction (Prediction.to_json).", **_prediction_fields()
)


class ImageScore(PredictionModel):  # type: ignore[misc, valid-type]
    """The score of one uploaded radiograph."""

    interval_level: float | None = Field(None, description="coverage of the interval, e.g. 0.9")
    format: str | None = Field(
        None, description="png, jpeg, bmp, tiff or dicom (judged by content)"
    )
    width: int | None = Field(None, description="the image's width in pixels")
    height: int | None = Field(None, description="the image's height in pixels")
    views: dict[str, str | None] | None = Field(
        None,
        description="with images=true: PNG data URLs of the preprocessed image and Grad-CAM overlay",
    )
    film_views: dict[str, Any] | None = Field(
        None,
        description="with images=true: the whole film as uploaded (at most 768 px; small films "
        "enlarged to 384), 'image' plain and 'overlay' with every hand's heat map projected "
        "back onto it, each hand's box outlined and labelled (PNG data URLs), and its "
        "'width' and 'height' in pixels",
    )
    hands: list[dict[str, Any]] | None = Field(
        None,
        description="a both-hands film: every canonical hand's prediction (and views), the "
        "first being this one",
    )


class ImageError(BaseModel):
    image: str
    status: int = Field(description="413, 415 or 422")
    error: str


class PatientTotal(BaseModel):
    """A patient's hands-and-wrists total from two hand images in one upload."""

    patient_id: str
    visit: str | None = None
    images: list[str]
    total: float | None = None
    interval: list[float] | None = None
    erosion: float | None = None
    jsn: float | None = None
    severity_class: int | None = None
    severity_label: str | None = None
    note: str | None = None


class ScoreResponse(BaseModel):
    model: str
    n_images: int
    results: list[ImageScore]
    errors: list[ImageError] = Field(default_factory=list, description="with errors=report only")
    patients: list[PatientTotal] = Field(default_factory=list)
    visits: list[dict[str, Any]] = Field(
        default_factory=list,
        description="patients with two or more visits: their visits in time order and the "
        "change between consecutive visits (change, change_lo/change_hi, p_progression, progression)",
    )
    notice: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[ImageError] = Field(default_factory=list)


NOTICE = "Research software, not a medical device: not for diagnosis or treatment decisions."

SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"one or more radiographs ({FORMATS})",
                        },
                        "patient_id": {
                            "type": "string",
                            "description": "patient of the files: once for all, or once per file in "
                            "order; default the DICOM PatientID",
                        },
                        "side": {
                            "type": "string",
                            "description": "L or R: once per file in order; default DICOM laterality",
                        },
                    },
                }
            }
        },
    }
}


def api_summary(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAPI paths as a list a template can render without JavaScript."""
    out = []
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            params = [
                {
                    "name": p["name"],
                    "in": p["in"],
                    "description": p.get("description")
                    or p.get("schema", {}).get("description", ""),
                    "default": p.get("schema", {}).get("default"),
                }
                for p in op.get("parameters", [])
            ]
            body = op.get("requestBody", {}).get("content", {})
            fields = []
            for ctype, c in body.items():
                for name, prop in c.get("schema", {}).get("properties", {}).items():
                    fields.append(
                        {"name": name, "type": ctype, "description": prop.get("description", "")}
                    )
            out.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "params": params,
                    "fields": fields,
                    "responses": {
                        k: v.get("description", "") for k, v in op.get("responses", {}).items()
                    },
                }
            )
    return out


def schemas(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The response models' fields, for the offline docs page."""
    out = []
    comps = spec.get("components", {}).get("schemas", {})
    for name in ("ScoreResponse", "ImageScore", "PatientTotal", "ImageError", "ErrorResponse"):
        sch = comps.get(name)
        if not sch:
            continue
        props = []
        for pname, prop in sch.get("properties", {}).items():
            typ = (
                prop.get("type")
                or " or ".join(
                    a.get("type", a.get("$ref", "").split("/")[-1]) for a in prop.get("anyOf", [])
                )
                or prop.get("$ref", "").split("/")[-1]
            )
            if typ == "array":
                typ = f"array of {prop.get('items', {}).get('type') or prop.get('items', {}).get('$ref', '').split('/')[-1]}"
            props.append({"name": pname, "type": typ, "description": prop.get("description", "")})
        out.append({"name": name, "description": sch.get("description", ""), "props": props})
    return out
