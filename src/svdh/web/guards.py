"""ASGI guards in front of the scoring app: slow or hostile clients, foreign origins.

* :class:`BodyGuard` reads and checks a request's whole body *before* the app sees it, under a
  per-request deadline and a minimum transfer rate, and within a size limit that holds for
  chunked bodies too (no Content-Length). So an upload is admitted to inference only once it is
  complete and checked: a client sending 1 byte/s holds no inference slot, only one of a bounded
  number of body buffers, and is answered 408 when its deadline or rate is missed. A client that
  goes away mid-upload is logged in one line (no ClientDisconnect traceback).
* :class:`HostGuard` answers 421 to a ``Host`` header that is neither an IP literal nor an
  allowed name: a page on ``evil.example`` that rebinds its DNS name to this server (DNS
  rebinding) is refused, because the browser still sends ``Host: evil.example``.
* :class:`OriginGuard` refuses cross-site POSTs (CSRF): a browser's ``Sec-Fetch-Site`` must be
  ``same-origin`` or ``none``, and an ``Origin`` header must name this server. Clients that
  are not browsers (curl, scripts) send neither header and are not affected.

Errors are JSON ``{"detail": "..."}``, the shape of the app's declared ``ErrorResponse``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from svdh.core.errors import quote

log = logging.getLogger("svdh.web")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
#: Bytes of a refused (too large) body read and discarded, so the client sees the answer.
DRAIN_BYTES = 256 << 20
#: While draining, how long to wait for more before answering.
DRAIN_PATIENCE_S = 2.0


async def _reply(send: Send, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class _BodyProblem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class _Gone(Exception):
    pass


class BodyGuard:
    """Buffer each request body completely, under a deadline, a minimum rate and size caps.

    ``max_body_bytes``: largest body (413 beyond, also for chunked transfers; the rest of a
    refused body is read and discarded, up to :data:`DRAIN_BYTES`, so the client sees the 413
    rather than a reset connection). ``deadline_s``: the whole body must arrive within this time
    (408 after). ``min_rate``: bytes per second the body must keep up after the first ``grace_s``
    seconds (408 when it falls behind). ``max_pending``: bodies being received at once (503
    beyond). ``max_buffered_bytes``: all bodies held, from the first byte until the app has
    answered (503 beyond): the memory uploads can take, whatever the clients do.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        deadline_s: float = 120.0,
        min_rate: float = 4096.0,
        grace_s: float = 10.0,
        max_pending: int = 32,
        max_buffered_bytes: int | None = None,
        limit_text: str | None = None,
    ) -> None:
        self.app = app
        #: how a 413 states the limit (the app's own words: files x MB)
        self.limit_text = limit_text or f"the limit of {int(max_body_bytes):,} bytes"
        self.max_body_bytes = int(max_body_bytes)
        self.deadline_s = float(deadline_s)
        self.min_rate = float(min_rate)
        self.grace_s = float(grace_s)
        self.max_pending = int(max_pending)
        self.max_buffered = int(max_buffered_bytes or max(2 * self.max_body_bytes, 1 << 30))
        self.pending = 0
        self.buffered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _UNSAFE:
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and not declared.strip().isdigit():
            await _reply(send, 400, "invalid Content-Length header", close=True)
            return
        size = int(declared) if declared is not None else None
        if self.pending >= self.max_pending:
            await _reply(send, 503, "too many uploads in progress; retry in a moment", close=True)
            return
        held = [0]  # bytes of this request counted in self.buffered
        self.pending += 1
        try:
            body = await self._read(receive, size, held)
        except _BodyProblem as exc:
            self.pending -= 1
            self._release(held)
            log.info("%s %s -> %d (%s)", scope["method"], scope.get("path"), exc.status, exc.detail)
            await _reply(send, exc.status, exc.detail, close=True)
            return
        except _Gone:
            self.pending -= 1
            self._release(held)
            log.info(
                "%s %s: the client went away during the upload", scope["method"], scope.get("path")
            )
            return
        self.pending -= 1
        try:
            await self.app(scope, _replay(body, receive), send)
        finally:
            self._release(held)

    def _release(self, held: list[int]) -> None:
        self.buffered -= held[0]
        held[0] = 0

    async def _read(self, receive: Receive, declared: int | None, held: list[int]) -> bytes:
        start = time.monotonic()
        chunks: list[bytes] = []
        got = 0
        refuse: _BodyProblem | None = None
        if declared is not None and declared > self.max_body_bytes:
            refuse = self._too_large(declared)
        while True:
            msg = await self._next(receive, start, got, refuse)
            if msg["type"] == "http.disconnect":
                raise _Gone()
            data = msg.get("body", b"")
            got += len(data)
            if refuse is None and got > self.max_body_bytes:
                refuse = self._too_large(None)
            if refuse is None and declared is not None and got > declared:
                raise _BodyProblem(400, "the request body is longer than its Content-Length")
            if refuse is None:
                if self.buffered + len(data) > self.max_buffered:
                    raise _BodyProblem(503, "the server is receiving too many uploads; retry soon")
                self.buffered += len(data)
                held[0] += len(data)
                chunks.append(data)
            elif got > self.max_body_bytes + DRAIN_BYTES:
                raise refuse
            if not msg.get("more_body", False):
                if refuse is not None:
                    raise refuse
                return b"".join(chunks)

    async def _next(
        self, receive: Receive, start: float, got: int, refuse: _BodyProblem | None
    ) -> Message:
        """The next body message, before the deadline and before the rate falls behind."""
        elapsed = time.monotonic() - start
        behind = self.grace_s + got / self.min_rate if self.min_rate > 0 else self.deadline_s
        wait = min(self.deadline_s, behind) - elapsed
        if refuse is not None:  # draining a refused body: a client waiting for the answer gets it
            wait = min(wait, DRAIN_PATIENCE_S)
        try:
            if wait <= 0:
                raise TimeoutError
            return await asyncio.wait_for(receive(), timeout=wait)
        except TimeoutError:
            if refuse is not None:
                raise refuse from None
            raise _BodyProblem(408, self._slow(got, time.monotonic() - start)) from None

    def _too_large(self, declared: int | None) -> _BodyProblem:
        what = f" ({declared:,} bytes)" if declared is not None else ""
        return _BodyProblem(413, f"the request{what} is larger than {self.limit_text}")

    def _slow(self, got: int, elapsed: float) -> str:
        return (
            f"the upload was too slow ({got:,} bytes in {elapsed:.0f} s; at least "
            f"{self.min_rate / 1000:g} kB/s and {self.deadline_s:g} s in all are required)"
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # only a disconnect can come now

    return replay


# --------------------------------------------------------------------------- origin checks


def _split_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> set[str]:
    """Host names the server answers to: ``localhost``, the bound name (unless a wildcard
    address), this machine's names, and ``extra`` (``--allowed-host``; ``*`` allows any).
    IP literals are always allowed: DNS rebinding needs a name."""
    names = {"localhost", "localhost.localdomain"}
    if bound and not _is_ip(_split_host(bound)):
        names.add(_split_host(bound))
    for get in (socket.gethostname, socket.getfqdn):
        try:
            names.add(get().lower())
        except OSError:
            pass
    names.update(h.strip().lower() for h in extra if h.strip())
    return names


class HostGuard:
    """Refuse requests whose Host header names a host this server is not (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            host = _header(scope, b"host")
            name = _split_host(host) if host else ""
            if host is not None and not _is_ip(name) and name not in self.allowed:
                log.info("refused Host %s", quote(host, 60))
                await _reply(
                    send,
                    421,
                    f"Host {quote(host, 60)} is not served here; start svdh serve with "
                    "--allowed-host NAME to allow it",
                )
                return
        await self.app(scope, receive, send)


class OriginGuard:
    """Refuse cross-site POSTs from browsers (CSRF), by Sec-Fetch-Site and Origin."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") in _UNSAFE:
            problem = self._problem(scope)
            if problem:
                log.info("refused a cross-site %s %s", scope["method"], scope.get("path"))
                await _reply(send, 403, problem)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _problem(scope: Scope) -> str | None:
        site = _header(scope, b"sec-fetch-site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {quote(site, 30)})"
        origin = _header(scope, b"origin")
        if origin is None:
            return None
        if origin == "null" and site is not None and site.lower() == "same-origin":
            # the page's no-referrer policy makes Chromium send "Origin: null" on its own form
            # POSTs; Sec-Fetch-Site (set by the browser, not by page script) vouches for them
            return None
        host = (_header(scope, b"host") or "").lower()
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else "null"
        if netloc != host:
            return f"cross-origin request refused (Origin {quote(origin, 60)} is not this server)"
        return None


# --------------------------------------------------------------------------- wiring


def harden_app(
    app: Any,
    *,
    max_body_bytes: int,
    allowed: Iterable[str] | None = None,
    deadline_s: float = 120.0,
    min_rate: float = 4096.0,
    grace_s: float = 10.0,
    max_buffered_bytes: int | None = None,
    limit_text: str | None = None,
) -> None:
    """Put the guards in front of a FastAPI ``app`` (outermost first: Host, Origin, body), and
    make request-validation errors (a bad query parameter) a one-line ``{"detail": str}``.

    ``allowed``: Host names to accept (None: no Host check, as in-process test clients send
    ``Host: testserver``; ``svdh serve`` always passes :func:`allowed_hosts`).
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def one_line_422(request: Any, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    app.add_exception_handler(RequestValidationError, one_line_422)
    # add_middleware wraps: the last added is the outermost.
    app.add_middleware(
        BodyGuard,
        max_body_bytes=max_body_bytes,
        deadline_s=deadline_s,
        min_rate=min_rate,
        grace_s=grace_s,
        max_buffered_bytes=max_buffered_bytes,
        limit_text=limit_text,
    )
    app.add_middleware(OriginGuard)
    if allowed is not None:
        app.add_middleware(HostGuard, allowed=list(allowed))
