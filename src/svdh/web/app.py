"""The web page and HTTP API of ``svdh serve``: a FastAPI app over one model bundle.

Routes
------
``GET /``                 the upload page (server-rendered; works without JavaScript)
``POST /score``           the page's form: renders the results as HTML
``GET /model``            the model card page
``POST /api/v1/score``    multipart field ``files`` (one or more) -> JSON scores
``GET /api/v1/model``     the model card as JSON
``GET /healthz``          liveness and load counters; never waits on inference
``GET /openapi.json``     the OpenAPI schema; ``GET /docs`` an offline page rendered from it

Patient data: uploads are parsed in memory (see :mod:`svdh.web.uploads`), nothing is written
to disk unless ``keep_dir`` is given, and logs carry counts and status codes only, never
file names, patient ids or scores.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from svdh import __version__
from svdh.web.modelinfo import FIELD_LABELS, ModelInfo, model_info
from svdh.web.service import Busy, FileOutcome, ScoringService
from svdh.web.uploads import FORMATS, ParsedForm, UploadError, parse_multipart, sniff_format

log = logging.getLogger("svdh.web")
HERE = Path(__file__).resolve().parent
API_PREFIX = "/api/v1"
#: Bytes of multipart framing and form fields allowed on top of the files themselves.
FORM_OVERHEAD = 1024 * 1024


# --------------------------------------------------------------------------- API schema (docs)


class ImageScore(BaseModel):
    """The score of one uploaded radiograph."""

    image: str = Field(description="the uploaded file's name")
    score: float = Field(
        description="predicted SvdH total of this image (one hand 0-140, or 0-280)"
    )
    interval: list[float] | None = Field(None, description="[low, high] prediction interval")
    interval_level: float | None = Field(None, description="coverage of the interval, e.g. 0.9")
    severity_class: int = Field(description="ordinal severity class, 0 = no damage")
    severity_label: str | None = Field(None, description="score range of the class, e.g. '5-9'")
    probabilities: list[float] | None = Field(
        None, description="probability of each severity class"
    )
    erosion: float | None = Field(
        None, description="predicted erosion sub-score, where the model has it"
    )
    jsn: float | None = Field(
        None, description="predicted joint-space-narrowing sub-score, where present"
    )
    member_spread: float | None = Field(
        None, description="spread between ensemble members (or fold models)"
    )
    member_scores: dict[str, float | None] | None = Field(
        None, description="each ensemble member's score"
    )
    warnings: list[str] = Field(default_factory=list, description="quality warnings")
    format: str | None = Field(
        None, description="png, jpeg, bmp, tiff or dicom (judged by content)"
    )
    patient_id: str | None = None
    side: str | None = Field(None, description="L or R where known")
    views: dict[str, str | None] | None = Field(
        None,
        description="with images=true: PNG data URLs of the preprocessed image and Grad-CAM overlay",
    )


class ImageError(BaseModel):
    image: str
    status: int = Field(description="413, 415 or 422")
    error: str


class PatientTotal(BaseModel):
    """A patient's hands-and-wrists total from two hand images in one upload."""

    patient_id: str
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
    notice: str


class ErrorResponse(BaseModel):
    detail: str
    errors: list[ImageError] = Field(default_factory=list)


NOTICE = "Research software, not a medical device: not for diagnosis or treatment decisions."

_SCORE_BODY = {
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


# --------------------------------------------------------------------------- the app


def create_app(
    predictor_or_bundle_path: Any,
    keep_dir: str | Path | None = None,
    max_upload_mb: float = 50,
    max_concurrency: int | None = None,
    *,
    max_files: int = 20,
    queue_size: int = 4,
) -> FastAPI:
    """Build the app over a ``svdh.inference.predictor.Predictor`` (or any object with its interface)
    or the path of a ``.svdh`` bundle, which is loaded here so a bad bundle fails at start.

    ``max_upload_mb`` limits each file (413 beyond it), ``max_files`` the files of one
    request, ``max_concurrency`` the inference workers; ``keep_dir`` is the only place
    uploads are ever written.
    """
    predictor = _load_predictor(predictor_or_bundle_path)
    info = model_info(predictor)
    max_file_bytes = int(max_upload_mb * 1e6)
    service = ScoringService(
        predictor,
        keep_dir=Path(keep_dir) if keep_dir else None,
        max_concurrency=max_concurrency,
        queue_size=queue_size,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info(
            "serving model %s: %d inference worker(s), %g MB per file, %s",
            info.name,
            service.max_concurrency,
            max_upload_mb,
            f"keeping uploads in {service.keep_dir}"
            if service.keep_dir
            else "uploads kept in memory only",
        )
        yield
        service.shutdown()

    app = FastAPI(
        title="svdh: SvdH scoring of hand radiographs",
        version=__version__,
        description=(
            "Scores rheumatoid-arthritis joint damage (van der Heijde-modified Sharp) on hand "
            f"radiographs. {NOTICE}"
        ),
        docs_url=None,  # FastAPI's Swagger UI loads from a CDN; /docs is served offline below
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.info = info
    app.state.max_file_bytes = max_file_bytes
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["num"] = _fmt_num
    templates.env.globals.update(
        notice=NOTICE, version=__version__, formats=FORMATS, keeping=service.keep_dir is not None
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    # Root-relative links (not Starlette's absolute url_for), so pages work behind any proxy.
    templates.env.globals["path_for"] = lambda name, **params: str(app.url_path_for(name, **params))

    @app.middleware("http")
    async def _headers_and_counts(request: Request, call_next):
        response = await call_next(request)
        # Offline by construction: the browser may load nothing but this server's files.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        if request.url.path not in ("/healthz",) and not request.url.path.startswith("/static"):
            # Results are patient data: keep them out of browser and proxy caches.
            response.headers["Cache-Control"] = "no-store"
        if request.url.path != "/healthz" and not request.url.path.startswith("/static"):
            # Counts and codes only: never names, ids or scores.
            log.info("%s %s -> %d", request.method, request.url.path, response.status_code)
        return response

    async def read_and_score(
        request: Request, strict: bool, render: bool
    ) -> tuple[ParsedForm, list[FileOutcome]]:
        clen = request.headers.get("content-length")
        if clen and clen.isdigit() and int(clen) > max_files * max_file_bytes + FORM_OVERHEAD:
            raise UploadError(
                413,
                f"the request is larger than the limit of {max_files} file(s) of {max_upload_mb:g} MB each",
            )
        try:
            await service.admit()
        except Busy:
            raise UploadError(503, "the server is busy; try again in a minute") from None
        try:
            form = await parse_multipart(
                request.headers.get("content-type"),
                request.stream(),
                max_file_bytes=max_file_bytes,
                max_files=max_files,
            )
            if not form.files:
                raise UploadError(
                    422,
                    f"no file: send one or more radiographs in the multipart field 'files' ({FORMATS})",
                )
            pids = _per_file(form, "patient_id")
            sides = _per_file(form, "side")
            if strict:
                _precheck(form, max_file_bytes)  # cheap refusals before any inference
            try:
                outcomes = await service.score(
                    form.files,
                    patient_ids=pids,
                    sides=sides,
                    render=render,
                    max_file_bytes=max_file_bytes,
                )
            except Exception as exc:
                # Log the type only: messages and tracebacks may carry file names (patient data).
                log.error("scoring failed with %s", type(exc).__name__)
                raise UploadError(
                    500, "internal error while scoring; the server log names the error type"
                ) from None
            return form, outcomes
        finally:
            service.release()

    # ------------------------------------------------------------------ API

    @app.post(
        f"{API_PREFIX}/score",
        response_model=ScoreResponse,
        openapi_extra=_SCORE_BODY,
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
        return JSONResponse(_score_payload(info, outcomes))

    @app.get(
        f"{API_PREFIX}/model",
        summary="The model card",
        responses={200: {"description": "the model card, as JSON"}},
    )
    async def api_model() -> dict[str, Any]:
        """What the model is, what it was trained on, its metrics and versions."""
        return info.as_dict()

    @app.get(
        "/healthz",
        summary="Liveness and load",
        responses={200: {"description": "status 'ok' and load counters"}},
    )
    async def healthz() -> dict[str, Any]:
        """Answered on the event loop from counters; never waits for inference."""
        return {
            "status": "ok",
            "model": info.name,
            "version": __version__,
            "max_concurrency": service.max_concurrency,
            "max_admitted": service.max_admitted,
            **service.stats.as_dict(),
        }

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(request: Request) -> Response:
        spec = app.openapi()
        return templates.TemplateResponse(
            request,
            "docs.html",
            {"info": info, "api": _api_summary(spec), "schemas": _schemas(spec)},
        )

    # ------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> Response:
        return templates.TemplateResponse(
            request, "index.html", _page_context(info, None, max_upload_mb, max_files)
        )

    @app.post("/score", response_class=HTMLResponse, include_in_schema=False)
    async def score_page(request: Request) -> Response:
        try:
            _, outcomes = await read_and_score(request, strict=False, render=True)
        except UploadError as exc:
            ctx = _page_context(info, None, max_upload_mb, max_files)
            ctx["error"] = exc.message
            return templates.TemplateResponse(request, "index.html", ctx, status_code=exc.status)
        payload = _score_payload(info, outcomes)
        status = 200 if payload["results"] or not outcomes else outcomes[0].status
        return templates.TemplateResponse(
            request,
            "index.html",
            _page_context(info, payload, max_upload_mb, max_files),
            status_code=status,
        )

    @app.get("/model", response_class=HTMLResponse, include_in_schema=False)
    async def model_page(request: Request) -> Response:
        return templates.TemplateResponse(
            request,
            "model.html",
            {"info": info, "card_summary": info.summary, "labels": FIELD_LABELS},
        )

    return app


# --------------------------------------------------------------------------- helpers


def _load_predictor(obj: Any) -> Any:
    if isinstance(obj, str | Path):
        from svdh.inference.bundle import load_bundle
        from svdh.inference.predictor import Predictor

        return Predictor(load_bundle(Path(obj)))
    if not hasattr(obj, "predict_images"):
        raise TypeError("create_app needs a bundle path or an object with predict_images()")
    return obj


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
            raise UploadError(
                413,
                f"'{f.filename}' is larger than the limit of {max_file_bytes / 1e6:g} MB per file",
                f.filename,
            )
    for f in form.files:
        if f.size and sniff_format(f.data) is None:
            raise UploadError(
                415,
                f"'{f.filename}' is not an image the scorer reads ({FORMATS}); "
                "the type is judged by the file's content, not its name",
                f.filename,
            )


def _error(status: int, message: str, bad: list[FileOutcome]) -> JSONResponse:
    return JSONResponse(
        {
            "detail": message,
            "errors": [{"image": o.name, "status": o.status, "error": o.error} for o in bad],
        },
        status_code=status,
    )


def _score_payload(info: ModelInfo, outcomes: list[FileOutcome]) -> dict[str, Any]:
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
        "patients": _patients(info, results),
        "notice": NOTICE,
    }


def _patients(info: ModelInfo, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hands-and-wrists totals by the predict stage's rule (one left and one right hand)."""
    from svdh.inference.predictor import PatientTotals

    totals = PatientTotals(info.bins, info.score_scope)
    for r in results:
        totals.add(r)
    return totals.totals()


def _page_context(
    info: ModelInfo, payload: dict | None, max_upload_mb: float, max_files: int
) -> dict[str, Any]:
    return {
        "info": info,
        "payload": payload,
        "max_upload_mb": max_upload_mb,
        "max_files": max_files,
        "error": None,
    }


def _fmt_num(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def _api_summary(spec: dict[str, Any]) -> list[dict[str, Any]]:
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


def _schemas(spec: dict[str, Any]) -> list[dict[str, Any]]:
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
