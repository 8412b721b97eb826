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

Layout: this module builds the app (:func:`create_app`); :mod:`svdh.web.routes` holds the
routes, :mod:`svdh.web.schema` the API's response models (the per-image one derived from
:class:`svdh.inference.prediction.Prediction`), :mod:`svdh.web.service` the bounded scoring
pool and :mod:`svdh.web.uploads` the in-memory multipart parsing.

Patient data: uploads are parsed in memory (see :mod:`svdh.web.uploads`), nothing is written
to disk unless ``keep_dir`` is given, and logs carry counts and status codes only, never
file names, patient ids or scores.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from svdh import __version__
from svdh.web.guards import harden_app
from svdh.web.modelinfo import model_info
from svdh.web.routes import API_PREFIX, FORM_OVERHEAD, AppState, api, pages
from svdh.web.schema import NOTICE, ImageScore, ScoreResponse
from svdh.web.service import DEFAULT_REQUEST_PIXELS, ScoringService
from svdh.web.uploads import FORMATS

__all__ = ["API_PREFIX", "FORM_OVERHEAD", "NOTICE", "ImageScore", "ScoreResponse", "create_app"]

log = logging.getLogger("svdh.web")
HERE = Path(__file__).resolve().parent

#: Headers of every answer. Offline by construction: the browser may load nothing but this
#: server's files.
_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def create_app(
    predictor_or_bundle_path: Any,
    keep_dir: str | Path | None = None,
    max_upload_mb: float = 50,
    max_concurrency: int | None = None,
    *,
    max_files: int = 20,
    queue_size: int = 4,
    allowed_hosts: Iterable[str] | None = None,
    max_request_pixels: int = DEFAULT_REQUEST_PIXELS,
    upload_deadline_s: float = 120.0,
    upload_min_rate: float = 4096.0,
    upload_grace_s: float = 10.0,
) -> FastAPI:
    """Build the app over a ``svdh.inference.predictor.Predictor`` (or any object with its interface)
    or the path of a ``.svdh`` bundle, which is loaded here so a bad bundle fails at start.

    ``max_upload_mb`` limits each file (413 beyond it), ``max_files`` the files of one
    request, ``max_concurrency`` the inference workers; ``keep_dir`` is the only place
    uploads are ever written. ``allowed_hosts``: the Host names served (None: no Host check;
    ``svdh serve`` passes :func:`svdh.web.guards.allowed_hosts`); ``max_request_pixels``: decoded
    pixels of one request's images together; ``upload_*``: the body deadline and minimum rate
    (see :mod:`svdh.web.guards`).
    """
    predictor = _load_predictor(predictor_or_bundle_path)
    info = model_info(predictor)
    service = ScoringService(
        predictor,
        keep_dir=Path(keep_dir) if keep_dir else None,
        max_concurrency=max_concurrency,
        queue_size=queue_size,
        max_request_pixels=max_request_pixels,
    )
    app = FastAPI(
        title="svdh: SvdH scoring of hand radiographs",
        version=__version__,
        description=(
            "Scores rheumatoid-arthritis joint damage (van der Heijde-modified Sharp) on hand "
            f"radiographs. {NOTICE}"
        ),
        docs_url=None,  # FastAPI's Swagger UI loads from a CDN; /docs is served offline
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.svdh = AppState(
        info=info,
        service=service,
        templates=_templates(app, keeping=service.keep_dir is not None),
        max_upload_mb=max_upload_mb,
        max_file_bytes=int(max_upload_mb * 1e6),
        max_files=max_files,
    )
    app.state.service, app.state.info = service, info
    app.state.max_file_bytes = app.state.svdh.max_file_bytes
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.middleware("http")(_headers_and_counts)
    app.include_router(api)
    app.include_router(pages)
    harden_app(
        app,
        max_body_bytes=max_files * int(max_upload_mb * 1e6) + FORM_OVERHEAD,
        allowed=allowed_hosts,
        deadline_s=upload_deadline_s,
        min_rate=upload_min_rate,
        grace_s=upload_grace_s,
        limit_text=f"the limit of {max_files} file(s) of {max_upload_mb:g} MB each",
    )
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    st: AppState = app.state.svdh
    log.info(
        "serving model %s: %d inference worker(s), %g MB per file, %s",
        st.info.name,
        st.service.max_concurrency,
        st.max_upload_mb,
        f"keeping uploads in {st.service.keep_dir}"
        if st.service.keep_dir
        else "uploads kept in memory only",
    )
    yield
    st.service.shutdown()


def _templates(app: FastAPI, keeping: bool) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["num"] = _fmt_num
    templates.env.globals.update(
        notice=NOTICE, version=__version__, formats=FORMATS, keeping=keeping
    )
    # Root-relative links (not Starlette's absolute url_for), so pages work behind any proxy.
    templates.env.globals["path_for"] = lambda name, **params: str(app.url_path_for(name, **params))
    return templates


async def _headers_and_counts(request: Request, call_next: Any) -> Any:
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.url.path != "/healthz" and not request.url.path.startswith("/static"):
        # Results are patient data: keep them out of browser and proxy caches.
        response.headers["Cache-Control"] = "no-store"
        # Counts and codes only: never names, ids or scores.
        log.info("%s %s -> %d", request.method, request.url.path, response.status_code)
    return response


# --------------------------------------------------------------------------- helpers


def _load_predictor(obj: Any) -> Any:
    if isinstance(obj, str | Path):
        from svdh.inference.bundle import load_bundle
        from svdh.inference.predictor import Predictor

        return Predictor(load_bundle(Path(obj)))
    if not hasattr(obj, "predict_images"):
        raise TypeError("create_app needs a bundle path or an object with predict_images()")
    return obj


def _fmt_num(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return str(x)
