"""The routes of ``svdh serve`` (see :mod:`svdh.web.app` for the list): the JSON API, the
pages, and the request handling they share. Each handler finds the app's :class:`AppState`
(model, service, limits, templates) on ``request.app.state.svdh``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from svdh import __version__
from svdh.core.hands import PatientTotals
from svdh.core.io import sniff_format
from svdh.web.modelinfo import FIELD_LABELS, ModelInfo
from svdh.web.schema import (
    NOTICE,
    SCORE_BODY,
    ErrorResponse,
    ScoreResponse,
    api_summary,
    schemas,
)
from svdh.web.service import Busy, FileOutcome, ScoringService
from svdh.web.uploads import (
    FORMATS,
    ParsedForm,
    UploadError,
    not_an_image,
    parse_multipart,
    too_large,
)
from svdh.web.visits import visit_groups

log = logging.getLogger("svdh.web")
API_PREFIX = "/api/v1"
#: Bytes of multipart framing and form fields allowed on top of the files themselves.
FORM_OVERHEAD = 1024 * 1024

api = APIRouter()
pages = APIRouter()


@dataclass
class AppState:
    """What the handlers share: the model's description, the scoring service, the limits."""

    info: ModelInfo
    service: ScoringService
    templates: Jinja2Templates
    max_upload_mb: float
    max_file_bytes: int
    max_files: int


def _state(request: Request) -> AppState:
    return request.app.state.svdh


# --------------------------------------------------------------------------- request handling


async def read_and_score(
    request: Request, strict: bool, render: bool
) -> tuple[ParsedForm, list[FileOutcome]]:
    """Admit the request, parse its form in memory and score its files (the service's pool)."""
    st = _state(request)
    clen = request.headers.get("content-length")
    if clen and clen.isdigit() and int(clen) > st.max_files * st.max_file_bytes + FORM_OVERHEAD:
        raise UploadError(
            413,
            f"the request is larger than the limit of {st.max_files} file(s) of "
            f"{st.max_upload_mb:g} MB each",
        )
    try:
        await st.service.admit()
    except Busy:
        raise UploadError(503, "the server is busy; try again in a minute") from None
    try:
        form = await parse_multipart(
            request.headers.get("content-type"),
            request.stream(),
            max_file_bytes=st.max_file_bytes,
            max_files=st.max_files,
        )
        return form, await _score_form(st, form, strict, render)
    finally:
        st.service.release()


async def _score_form(
    st: AppState, form: ParsedForm, strict: bool, render: bool
) -> list[FileOutcome]:
    if not form.files:
        raise UploadError(
            422,
            f"no file: send one or more radiographs in the multipart field 'files' ({FORMATS})",
        )
    pids = _per_file(form, "patient_id")
    sides = _per_file(form, "side")
    visits = _per_file(form, "visit")
    if strict:
        _precheck(form, st.max_file_bytes)  # cheap refusals before any inference
    try:
        return await st.service.score(
            form.files,
            patient_ids=pids,
            sides=sides,
            visits=visits,
            render=render,
            max_file_bytes=st.max_file_bytes,
        )
    except Exception as exc:
        # Log the type only: messages and tracebacks may carry file names (patient data).
        log.error("scoring failed with %s", type(exc).__name__)
        raise UploadError(
            500, "internal error while scoring; the server log names the error type"
        ) from None


# --------------------------------------------------------------------------- API


@api.post(
    f"{API_PREFIX}/score",
    response_model=ScoreResponse,
    openapi_extra=SCORE_BODY,
    responses={
        200: {"description": "the scores, as JSON (schema ScoreResponse)"},
        400: {"model": ErrorResponse, "description": "not a multipart/form-data request"},
        413: {
            "model": ErrorResponse,
            "description": "a file over the size limit, or too many files",
        },
        415: {
            "model": ErrorResponse,
            "description": "a file that is not an image (judged by content)",
        },
        422: {"model": ErrorResponse, "description": "a corrupt image, or no file"},
        503: {"model": ErrorResponse, "description": "too many requests waiting"},
    },
    summary="Score one or more radiographs",
)
async def api_score(
    request: Request,
    errors: Literal["reject", "report"] = Query(
        "reject",
        description="reject: any bad file refuses the request with its status; "
        "report: bad files are listed in 'errors' and the rest are scored",
    ),
    images: bool = Query(
        False, description="include PNG data URLs of the image and Grad-CAM overlay"
    ),
) -> Any:
    """Score the radiographs in the multipart field 'files'.

    Each image gets its SvdH score, the prediction interval, the severity class with its
    probabilities, erosion and JSN where the model has them, and quality warnings. When
    two hand images of one patient are uploaded (patient from the DICOM PatientID or the
    'patient_id' field), 'patients' holds their hands-and-wrists total.
    """
    try:
        _, outcomes = await read_and_score(request, strict=errors == "reject", render=images)
    except UploadError as exc:
        bad = (
            [FileOutcome(name=exc.filename, status=exc.status, error=exc.message)]
            if exc.filename
            else []
        )
        return _error(exc.status, exc.message, bad)
    bad = [o for o in outcomes if o.error]
    if errors == "reject" and bad:
        return _error(bad[0].status, bad[0].error or "", bad)
    st = _state(request)
    return JSONResponse(_score_payload(st.info, outcomes, _change_calibration(st)))


@api.get(
    f"{API_PREFIX}/model",
    summary="The model card",
    responses={200: {"description": "the model card, as JSON"}},
)
async def api_model(request: Request) -> dict[str, Any]:
    """What the model is, what it was trained on, its metrics and versions."""
    return _state(request).info.as_dict()


@api.get(
    "/healthz",
    summary="Liveness and load",
    responses={200: {"description": "status 'ok' and load counters"}},
)
async def healthz(request: Request) -> dict[str, Any]:
    """Answered on the event loop from counters; never waits for inference."""
    st = _state(request)
    return {
        "status": "ok",
        "model": st.info.name,
        "version": __version__,
        "max_concurrency": st.service.max_concurrency,
        "max_admitted": st.service.max_admitted,
        **st.service.stats.as_dict(),
    }


# --------------------------------------------------------------------------- pages


@pages.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs(request: Request) -> Response:
    st, spec = _state(request), request.app.openapi()
    return st.templates.TemplateResponse(
        request,
        "docs.html",
        {"info": st.info, "api": api_summary(spec), "schemas": schemas(spec)},
    )


@pages.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> Response:
    st = _state(request)
    return st.templates.TemplateResponse(request, "index.html", _page_context(st, None))


@pages.post("/score", response_class=HTMLResponse, include_in_schema=False)
async def score_page(request: Request) -> Response:
    st = _state(request)
    try:
        _, outcomes = await read_and_score(request, strict=False, render=True)
    except UploadError as exc:
        ctx = _page_context(st, None)
        ctx["error"] = exc.message
        return st.templates.TemplateResponse(request, "index.html", ctx, status_code=exc.status)
    payload = _score_payload(st.info, outcomes, _change_calibration(st))
    status = 200 if payload["results"] or not outcomes else outcomes[0].status
    return st.templates.TemplateResponse(
        request, "index.html", _page_context(st, payload), status_code=status
    )


@pages.get("/model", response_class=HTMLResponse, include_in_schema=False)
async def model_page(request: Request) -> Response:
    st = _state(request)
    return st.templates.TemplateResponse(
        request,
        "model.html",
        {"info": st.info, "card_summary": st.info.summary, "labels": FIELD_LABELS},
    )


# --------------------------------------------------------------------------- helpers


def _per_file(form: ParsedForm, name: str) -> list[str | None]:
    """A form field given once (for every file) or once per file, in the files' order;
    an empty value means 'not given' (DICOM tags or the file name decide)."""
    vals = form.fields.get(name, [])
    n = len(form.files)
    if not vals:
        return [None] * n
    if len(vals) == 1:
        return [vals[0] or None] * n
    if len(vals) != n:
        raise UploadError(
            422,
            f"'{name}' was given {len(vals)} times for {n} files: give it once or once per file",
        )
    return [v or None for v in vals]


def _precheck(form: ParsedForm, max_file_bytes: int) -> None:
    """Refuse the whole request early for an oversize or non-image file (strict mode)."""
    for f in form.files:
        if f.oversize:
            raise too_large(f.filename, max_file_bytes)
    for f in form.files:
        if f.size and sniff_format(f.data) is None:
            raise not_an_image(f.filename)


def _error(status: int, message: str, bad: list[FileOutcome]) -> JSONResponse:
    return JSONResponse(
        {
            "detail": message,
            "errors": [{"image": o.name, "status": o.status, "error": o.error} for o in bad],
        },
        status_code=status,
    )


def _change_calibration(st: AppState) -> dict[str, Any] | None:
    bundle = getattr(getattr(st.service, "predictor", None), "bundle", None)
    return getattr(bundle, "change", None)


def _score_payload(
    info: ModelInfo, outcomes: list[FileOutcome], change: dict[str, Any] | None = None
) -> dict[str, Any]:
    results = []
    for o in outcomes:
        if o.result is not None:
            r = dict(o.result)
            r["image"] = o.name
            r.setdefault("interval_level", info.interval_level)
            results.append(r)
    return {
        "model": info.name,
        "n_images": len(results),
        "results": results,
        "errors": [
            {"image": o.name, "status": o.status, "error": o.error} for o in outcomes if o.error
        ],
        "patients": (patients := _patients(info, outcomes)),
        "visits": visit_groups(results, patients, change),  # a patient's visits and changes
        "notice": NOTICE,
    }


def _patients(info: ModelInfo, outcomes: list[FileOutcome]) -> list[dict[str, Any]]:
    """Hands-and-wrists totals by the one rule (:class:`svdh.core.hands.PatientTotals`)."""
    totals = PatientTotals(info.bins, info.score_scope)
    for o in outcomes:
        for pred in o.hands or ([o.prediction] if o.prediction is not None else []):
            totals.add(pred)
    return totals.totals()


def _page_context(st: AppState, payload: dict | None) -> dict[str, Any]:
    return {
        "info": st.info,
        "payload": payload,
        "max_upload_mb": st.max_upload_mb,
        "max_files": st.max_files,
        "error": None,
    }
