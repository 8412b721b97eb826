"""The scoring service behind the web page and the API: a bounded inference pool.

Why a pool and an admission gate: decoding, preprocessing, the forward pass and Grad-CAM are
CPU work that would block the event loop. They run in a small thread pool
(``max_concurrency`` workers), so ``/healthz`` and static pages stay answered on the event
loop whatever the load. Memory stays bounded because a score request is admitted (and only
then has its body read into memory) when fewer than ``max_concurrency + queue_size``
requests are in the service; later requests wait for a slot with nothing in memory, and
past ``max_waiting`` of them the server answers 503 at once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadRadiographError, quote
from svdh.core.hands import side_or_none
from svdh.core.io import sniff_format
from svdh.inference.changes import visit_of
from svdh.inference.prediction import Prediction
from svdh.web.uploads import UploadedFile, UploadError, not_an_image, too_large

log = logging.getLogger("svdh.web")


def default_concurrency() -> int:
    """Inference workers: at most 2, since each forward pass already uses several cores."""
    return max(1, min(2, os.cpu_count() or 1))


@dataclass
class Stats:
    """Counts only: what the server may report and log about its work."""

    inflight: int = 0  # inference jobs running in the pool
    admitted: int = 0  # score requests holding a slot (reading, queued or running)
    waiting: int = 0  # score requests waiting for a slot, nothing read yet
    peak_inflight: int = 0
    peak_admitted: int = 0
    requests: int = 0
    images_scored: int = 0
    images_failed: int = 0
    rejected_busy: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class FileOutcome:
    """One uploaded file after scoring: its :class:`Prediction` and the JSON the API answers
    for it (``result``: the prediction's :meth:`~Prediction.to_json`, the upload's format and
    size, the rendered views), or an error with its HTTP status."""

    name: str
    result: dict[str, Any] | None = None
    prediction: Prediction | None = None
    status: int = 200
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: every hand of the film (two for a both-hands film; the first is ``prediction``)
    hands: list[Prediction] = field(default_factory=list)


class Busy(Exception):
    """Too many score requests already waiting."""


class ScoringService:
    """Runs uploads through a Predictor in a bounded thread pool."""

    def __init__(
        self,
        predictor: Any,
        *,
        keep_dir: Path | None = None,
        max_concurrency: int | None = None,
        queue_size: int = 4,
        max_waiting: int = 256,
        max_request_pixels: int = 0,
    ) -> None:
        self.predictor = predictor
        #: decoded pixels of one request's images together (0: DEFAULT_REQUEST_PIXELS)
        self.max_request_pixels = int(max_request_pixels or DEFAULT_REQUEST_PIXELS)
        self.keep_dir = Path(keep_dir) if keep_dir is not None else None
        self.max_concurrency = max(1, int(max_concurrency or default_concurrency()))
        self.queue_size = max(0, int(queue_size))
        self.max_admitted = self.max_concurrency + self.queue_size
        self.max_waiting = max_waiting
        self.stats = Stats()
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix="svdh-infer"
        )
        self._gate: asyncio.Semaphore | None = None
        self._gate_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # the pool's threads update the counters
        self._model_lock = threading.Lock()

    # ------------------------------------------------------------------ admission
    def _sem(self) -> asyncio.Semaphore:
        # Created in the running loop (uvicorn has one; a test client may start another).
        loop = asyncio.get_running_loop()
        if self._gate is None or self._gate_loop is not loop:
            self._gate, self._gate_loop = asyncio.Semaphore(self.max_admitted), loop
        return self._gate

    async def admit(self) -> None:
        """Wait for a slot; raise :class:`Busy` when too many requests already wait."""
        if self.stats.waiting >= self.max_waiting:
            self.stats.rejected_busy += 1
            raise Busy()
        self.stats.waiting += 1
        try:
            await self._sem().acquire()
        finally:
            self.stats.waiting -= 1
        self.stats.admitted += 1
        self.stats.peak_admitted = max(self.stats.peak_admitted, self.stats.admitted)

    def release(self) -> None:
        self.stats.admitted -= 1
        self._sem().release()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ scoring
    async def score(
        self,
        files: Sequence[UploadedFile],
        *,
        patient_ids: Sequence[str | None],
        sides: Sequence[str | None],
        render: bool,
        max_file_bytes: int,
        visits: Sequence[str | None] | None = None,
    ) -> list[FileOutcome]:
        """Score ``files`` in the pool; one outcome per file, in order."""
        self.stats.requests += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor,
            self._score_sync,
            list(files),
            list(patient_ids),
            list(sides),
            render,
            max_file_bytes,
            list(visits) if visits is not None else [None] * len(files),
        )

    def _score_sync(
        self,
        files: list[UploadedFile],
        patient_ids: list[str | None],
        sides: list[str | None],
        render: bool,
        max_file_bytes: int,
        visits: list[str | None],
    ) -> list[FileOutcome]:
        with self._lock:
            self.stats.inflight += 1
            self.stats.peak_inflight = max(self.stats.peak_inflight, self.stats.inflight)
        try:
            outcomes = [FileOutcome(name=f.filename) for f in files]
            decoded: list[tuple[int, Any]] = []
            used = 0  # decoded pixels of this request so far
            for i, f in enumerate(files):
                out = outcomes[i]
                try:
                    rad, fmt = check_and_decode(
                        f, max_file_bytes, self.max_request_pixels - used, self.max_request_pixels
                    )
                except UploadError as exc:
                    out.status, out.error = exc.status, exc.message
                    continue
                used += int(rad.pixels.size)
                out.meta = {
                    "format": fmt,
                    "width": rad.meta.get("width"),
                    "height": rad.meta.get("height"),
                }
                decoded.append((i, rad))
            if decoded:
                self._predict(decoded, outcomes, patient_ids, sides, render, visits)
            with self._lock:
                for out in outcomes:
                    if out.error is None:
                        self.stats.images_scored += 1
                    else:
                        self.stats.images_failed += 1
            if self.keep_dir is not None:
                self._keep(files, outcomes)
            return outcomes
        finally:
            with self._lock:
                self.stats.inflight -= 1

    def _predict(
        self,
        decoded: list[tuple[int, Any]],
        outcomes: list[FileOutcome],
        patient_ids: list[str | None],
        sides: list[str | None],
        render: bool,
        visits: list[str | None] | None = None,
    ) -> None:
        items = [(outcomes[i].name, rad) for i, rad in decoded]
        # One model call at a time: Grad-CAM keeps hooks on the networks, and concurrent forward
        # passes would mix their activations. Decoding and rendering still run in parallel.
        with self._model_lock:
            preds = list(self.predictor.predict_images(items, cam=render))
        for (i, rad), group in zip(decoded, _per_image(preds), strict=True):
            out = outcomes[i]
            pred = group[0]
            if pred.error:
                out.status, out.error = 422, f"'{out.name}': {pred.error}"
                continue
            # A patient id or side given with the upload wins over DICOM tags and file names
            # (a both-hands film keeps each hand's own side).
            for p in group:
                p.patient_id = patient_ids[i] or p.patient_id or None
                if len(group) == 1:
                    p.side = side_or_none(sides[i]) or p.side or None
                p.visit = visit_of(None, (visits or [None] * len(outcomes))[i]) or p.visit
            out.prediction, out.hands = pred, list(group)
            out.result = {**pred.to_json(), **{k: v for k, v in out.meta.items() if v is not None}}
            if render:
                out.result["views"] = render_views(pred)
                out.result["film_views"] = render_film(rad, group, self.predictor)
            if len(group) > 1:  # a both-hands film: every canonical hand, with its views
                out.result["hands"] = [
                    {**p.to_json(), **({"views": render_views(p)} if render else {})} for p in group
                ]

    def _keep(self, files: list[UploadedFile], outcomes: list[FileOutcome]) -> None:
        """Write the uploads and their results under ``keep_dir`` (only when asked for)."""
        assert self.keep_dir is not None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        d = self.keep_dir / f"{stamp}-{uuid.uuid4().hex[:8]}"
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        summary = []
        for i, (f, out) in enumerate(zip(files, outcomes, strict=True)):
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f.filename)[:100] or "upload"
            if not f.oversize:
                fd = os.open(d / f"{i:02d}-{safe}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(f.data)
            res = dict(out.result or {})
            res.pop("views", None)  # images stay out of the audit file
            res.pop("film_views", None)
            if "hands" in res:
                res["hands"] = [{k: v for k, v in h.items() if k != "views"} for h in res["hands"]]
            summary.append(
                {"file": f"{i:02d}-{safe}", "status": out.status, "error": out.error, **res}
            )
        # Results are patient data, like the uploads: readable by the server's user only.
        fd = os.open(d / "results.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(summary, indent=1, default=float))


# --------------------------------------------------------------------------- decoding


#: Decoded pixels of one request's images together (two 64-megapixel films).
DEFAULT_REQUEST_PIXELS = 128_000_000


def check_and_decode(
    f: UploadedFile,
    max_file_bytes: int,
    pixels_left: int | None = None,
    request_pixels: int = DEFAULT_REQUEST_PIXELS,
) -> tuple[Any, str]:
    """Size, content type and decoding of one upload; an :class:`UploadError` says what failed.

    ``pixels_left``: what the request's pixel budget still allows; a file beyond it is refused
    from its header, before it is decoded."""
    if f.oversize:
        raise too_large(f.filename, max_file_bytes)
    if f.size == 0:
        raise UploadError(422, f"{quote(f.filename)} is empty", f.filename)
    fmt = sniff_format(f.data)
    if fmt is None:
        raise not_an_image(f.filename)
    from svdh.core.io import DEFAULT_MAX_PIXELS, read_radiograph_bytes

    per_image = int(os.environ.get("SVDH_MAX_PIXELS") or DEFAULT_MAX_PIXELS)
    budget = per_image if pixels_left is None else max(0, min(per_image, pixels_left))
    try:
        rad = read_radiograph_bytes(bytes(f.data), f.filename, max_pixels=max(budget, 1))
    except BadRadiographError as exc:
        if budget < per_image and "exceeds the limit" in str(exc):
            raise UploadError(
                422,
                f"{quote(f.filename)}: beyond the {request_pixels:,} decoded pixels of one "
                "request (svdh serve --max-request-pixels); send it in another request",
                f.filename,
            ) from None
        raise UploadError(422, str(exc), f.filename) from None
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # a decoder library's own error on a damaged file
        raise UploadError(
            422,
            f"'{f.filename}' looks like {fmt.upper()} but cannot be decoded "
            f"({type(exc).__name__}); the file may be truncated or damaged",
            f.filename,
        ) from None
    return rad, fmt


# --------------------------------------------------------------------------- rendering


def png_data_url(img: np.ndarray) -> str:
    """A PNG data URL of a uint8 greyscale (H x W) or RGB (H x W x 3) array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _per_image(preds: list[Prediction]) -> list[list[Prediction]]:
    """The predictor's predictions grouped per image: a both-hands film gives its hands
    ``1/2``, ``2/2`` one after the other (svdh.core.canonical)."""
    groups: list[list[Prediction]] = []
    for p in preds:
        if p.hand and not p.hand.startswith("1/") and groups:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def render_views(pred: Prediction) -> dict[str, str | None]:
    """PNG data URLs of the image the model scored and of its Grad-CAM overlay.

    Browsers cannot show DICOM, and the model sees a cropped, normalised image, so both views
    are rendered server-side from the prediction's display image (the predictor's own
    preprocessing at :data:`svdh.core.preprocess.DISPLAY_SIZE` px, so a reader sees the joints
    sharply), with the heat map (computed at the model's input size) stretched over exactly the
    same field.
    """
    from svdh.inference.gradcam import overlay  # the CLI's overlay style, so page and files agree

    base = pred.display if pred.display is not None else pred.preprocessed
    if base is None:
        return {"image": None, "overlay": None}
    # alpha=0 gives the plain image through the same resampling as the overlay
    views: dict[str, str | None] = {
        "image": png_data_url(overlay(base, np.zeros(base.shape, np.float32), alpha=0.0)),
        "overlay": None,
    }
    if pred.cam is not None:
        views["overlay"] = png_data_url(overlay(base, np.asarray(pred.cam, dtype=np.float32)))
    return views


def render_film(rad: Any, hands: list[Prediction], predictor: Any) -> dict[str, Any] | None:
    """PNG data URLs of the whole film as uploaded (at most
    :data:`svdh.inference.gradcam.FILM_VIEW_SIZE` px) plain and with every hand's heat map
    projected back onto it, each hand's box outlined and labelled with its side; None where
    the film's hands cannot be matched to its predictions.

    The film's hands are those the predictor scored (each prediction with a heat map carries
    its :class:`~svdh.core.canonical.ModelInput`); without them
    :func:`svdh.core.canonical.model_inputs`, a pure function of the pixels and the bundle's
    preprocessing, gives the same cuts, turns and crops again."""
    from svdh.core.canonical import model_inputs
    from svdh.inference.gradcam import film_overlay, hand_label

    inputs = [p.model_input for p in hands]
    if any(i is None for i in inputs):  # predictions made without heat maps
        inputs = model_inputs(rad, predictor.preprocess_config)
    if len(inputs) != len(hands):
        return None
    cams = [p.cam for p in hands]
    labels = [hand_label(p.hand, p.side) for p in hands]
    plain, heat = film_overlay(rad, inputs, cams, labels=labels)
    return {
        "image": png_data_url(plain),
        "overlay": png_data_url(heat) if any(c is not None for c in cams) else None,
        "width": int(plain.shape[1]),
        "height": int(plain.shape[0]),
    }
