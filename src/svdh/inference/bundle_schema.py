"""The bundle format, as one schema: what a ``.svdh`` file's header and manifest must hold.

A bundle is a safetensors file. Its JSON header maps each tensor name to
:class:`TensorEntry` (``dtype``, ``shape``, ``data_offsets``) and holds ``__metadata__``: strings
``format`` (``"svdh-bundle"``), ``format_version``, ``manifest`` (JSON, :class:`Manifest`),
``sha256`` and optionally an Ed25519 ``signature`` (see :mod:`svdh.inference.signing`).

Loading validates both against these pydantic models before anything else reads them, so a
crafted or damaged file (``data_offsets: "ab"``, a manifest that is a list, ``format_version:
"one"``, a member without ``arch``, ``n_models: "two"``...) is refused in one line naming the
field, never an internal error. Types are strict: ``"2"`` is not an integer. Unknown keys are
kept (newer exporters may add some); :data:`svdh.inference.bundle.FORMAT_VERSION` is bumped
when an older reader would misread a new bundle.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from svdh.core.errors import BadBundleError, quote

#: safetensors dtypes and their sizes in bytes.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


def _finite(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class TensorEntry(_Strict):
    """One tensor of the safetensors header."""

    model_config = ConfigDict(strict=True, extra="forbid")
    dtype: str
    shape: list[int]
    data_offsets: list[int] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> TensorEntry:
        if self.dtype not in DTYPE_SIZES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if any(s < 0 for s in self.shape):
            raise ValueError("negative dimension")
        start, end = self.data_offsets
        if not 0 <= start <= end:
            raise ValueError("data_offsets must be [start, end] with 0 <= start <= end")
        if end - start != math.prod(self.shape) * DTYPE_SIZES[self.dtype]:
            raise ValueError("data_offsets do not match dtype and shape")
        return self


class Bins(_Strict):
    edges: list[float]
    max_score: float = Field(gt=0)
    step: float = Field(default=1.0, gt=0)

    _fin = field_validator("max_score", "step")(_finite)

    @field_validator("edges")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if any(not math.isfinite(e) for e in v) or any(
            b <= a for a, b in zip(v, v[1:], strict=False)
        ):
            raise ValueError("edges must be finite and increasing")
        return v


class MemberEntry(_Strict):
    name: str
    arch: dict[str, Any]
    n_models: int = Field(ge=1, le=1000)
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _backbone(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("backbone"), str):
            raise ValueError("arch must name its backbone (a string)")
        return v


class Stratum(_Strict):
    q: float | None = Field(default=None, ge=0)


class Conformal(_Strict):
    alpha: float | None = Field(default=None, gt=0, lt=1)
    level: float | None = Field(default=None, gt=0, lt=1)
    method: Literal["absolute", "mondrian"] = "absolute"
    n: int | None = Field(default=None, ge=1)
    q: float | None = Field(default=None, ge=0)
    quantile: float | None = Field(default=None, ge=0)
    strata: list[Stratum] = Field(default_factory=list)
    bins: Bins | None = None
    max_score: float | None = None

    _fin = field_validator("alpha", "level", "q", "quantile", "max_score")(_finite)


class Combine(_Strict):
    method: str


class Manifest(_Strict):
    """The bundle manifest (metadata ``manifest``, JSON)."""

    format: Literal["svdh-bundle"]
    format_version: int = Field(ge=1)
    kind: str = "run"
    task: Literal["regression", "classification", "ordinal", "boneage"]
    score_scope: Literal["hand", "patient"] = "hand"
    bins: Bins | None = None  # severity classes: every SvdH task has them, bone age none
    preprocess: dict[str, Any]
    image_size: int | None = Field(default=None, ge=8, le=8192)  # bundles of svdh 0.1 only
    members: list[MemberEntry] = Field(min_length=1)
    combine: Combine = Field(default_factory=lambda: Combine(method="mean"))
    conformal: Conformal | None = None
    card: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _svdh_tasks_have_bins(self) -> Manifest:
        if self.task != "boneage" and self.bins is None:
            raise ValueError("an SvdH model needs its severity bins")
        return self


def _describe(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate_manifest(where: str, manifest: Any) -> dict[str, Any]:
    """``manifest`` checked against :class:`Manifest`; one-line :class:`BadBundleError` if not."""
    if not isinstance(manifest, dict):
        raise BadBundleError(
            f"{where}: invalid bundle manifest (a JSON {type(manifest).__name__}, not an object); "
            "re-export the model with svdh export"
        )
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise BadBundleError(
            f"{where}: invalid bundle manifest ({_describe(exc)}); re-export the model with "
            "svdh export"
        ) from None
    return manifest


def validate_header(where: str, header: Any) -> dict[str, TensorEntry]:
    """The safetensors header's tensor entries, each checked; one-line error if malformed."""
    if not isinstance(header, dict):
        raise BadBundleError(f"{where}: bundle header is corrupt; re-export or re-copy the file")
    out: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in entry.items()
            ):
                raise BadBundleError(
                    f"{where}: bundle metadata must map strings to strings; the file is damaged"
                )
            continue
        try:
            out[name] = TensorEntry.model_validate(entry)
        except ValidationError as exc:
            raise BadBundleError(
                f"{where}: tensor {quote(name, 60)} in the bundle header is malformed "
                f"({_describe(exc, 1)}); re-export or re-copy the file"
            ) from None
    return out
