"""Issue 14 items 2, 4, 6, 18 (the ASGI guards, on a real loopback server).

The app behind the guards takes one of two "inference slots" *before* it reads the body, as
the scoring app did: without BodyGuard, slow clients hold the slots and stall everyone.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from svdh.web.guards import BodyGuard, HostGuard, OriginGuard, allowed_hosts


def _slot_app(slots: int = 2):
    sem = asyncio.Semaphore(slots)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/healthz":
            body = b'{"ok": true}'
        else:
            async with sem:  # the slot is taken first, then the body read (the old order)
                data = b""
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    data += msg.get("body", b"")
                    if not msg.get("more_body"):
                        break
                await asyncio.sleep(0.05)  # "inference"
            body = str(len(data)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


class _Server:
    def __init__(self, app) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", path, body=body, headers=headers or {})
        resp = conn.getresponse()
        out = resp.status, resp.read()
        conn.close()
        return out

    def get(self, path: str, headers: dict[str, str] | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        out = resp.status, resp.read()
        conn.close()
        return out


def _slow_clients(port: int, n: int, claimed: int, stop: threading.Event) -> list[socket.socket]:
    """n clients that claim ``claimed`` bytes and send one byte per second."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            f"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {claimed}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        socks.append(s)

    def drip() -> None:
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"x")
                except OSError:
                    pass
            stop.wait(1.0)

    threading.Thread(target=drip, daemon=True).start()
    return socks


@pytest.fixture()
def guarded() -> Iterator[_Server]:
    app = BodyGuard(_slot_app(), max_body_bytes=20_000_000, deadline_s=60, min_rate=2000, grace_s=2)
    with _Server(app) as srv:
        yield srv


@pytest.mark.parametrize("n_slow", [6, 20])
def test_slow_clients_do_not_stall_normal_uploads(guarded: _Server, n_slow: int) -> None:
    stop = threading.Event()
    socks = _slow_clients(guarded.port, n_slow, 10_000_000, stop)
    try:
        time.sleep(0.5)  # they are all sending now
        for _ in range(5):  # each must answer; a stall would end in the 30 s client timeout
            status, body = guarded.post("/score", b"y" * 50_000)
            assert (status, body) == (200, b"50000")
        assert guarded.get("/healthz")[0] == 200
        # The slow ones are cut off once they fall behind the minimum rate.
        answers = []
        for s in socks:
            s.settimeout(30)
            answers.append(s.recv(200))
        assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:2]
    finally:
        stop.set()
        for s in socks:
            s.close()


def test_without_the_guard_slow_clients_hold_the_slots() -> None:
    """The failure being fixed, shown on the same app: the normal upload waits for a slot."""
    with _Server(_slot_app()) as srv:
        stop = threading.Event()
        socks = _slow_clients(srv.port, 2, 10_000_000, stop)
        try:
            time.sleep(0.5)
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=3)
            with pytest.raises(TimeoutError):
                conn.request("POST", "/score", body=b"y" * 1000)
                conn.getresponse()
            conn.close()
        finally:
            stop.set()
            for s in socks:
                s.close()


def test_chunked_bodies_are_capped_too() -> None:
    app = BodyGuard(_slot_app(), max_body_bytes=100_000, deadline_s=30, min_rate=1, grace_s=30)
    with _Server(app) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"z" * 50_000
        try:
            for _ in range(4):
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except OSError:
            pass  # the server may close as soon as it answered
        s.settimeout(30)
        assert s.recv(200).startswith(b"HTTP/1.1 413")
        s.close()
        status, _ = srv.post("/score", b"x" * 200_000)  # and with a Content-Length
        assert status == 413


def test_a_client_that_goes_away_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="svdh.web")
    app = BodyGuard(_slot_app(), max_body_bytes=1_000_000, deadline_s=30, min_rate=1, grace_s=30)
    with _Server(app) as srv:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nabc")
        time.sleep(0.3)
        s.close()
        for _ in range(100):
            if "went away" in caplog.text:
                break
            time.sleep(0.05)
    assert "POST /score: the client went away during the upload" in caplog.text
    assert "Traceback" not in caplog.text and "ClientDisconnect" not in caplog.text


def test_host_header_is_checked_against_the_allowed_names() -> None:
    app = HostGuard(_slot_app(), allowed_hosts("127.0.0.1", ["scorer.hospital.example"]))
    with _Server(app) as srv:
        assert srv.get("/healthz", {"Host": f"127.0.0.1:{srv.port}"})[0] == 200
        assert srv.get("/healthz", {"Host": f"localhost:{srv.port}"})[0] == 200
        assert srv.get("/healthz", {"Host": "scorer.hospital.example"})[0] == 200
        assert srv.get("/healthz", {"Host": "[::1]:8000"})[0] == 200  # an IP literal
        status, body = srv.get("/healthz", {"Host": "evil.example"})
        assert status == 421 and b"--allowed-host" in body


def test_cross_site_form_posts_are_refused() -> None:
    app = OriginGuard(_slot_app())
    with _Server(app) as srv:
        host = f"127.0.0.1:{srv.port}"
        ok = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        assert srv.post("/score", b"abc", ok)[0] == 200
        assert srv.post("/score", b"abc", {"Host": host})[0] == 200  # curl: no browser headers
        # the page's own form under its no-referrer policy: Chromium sends Origin null
        own_form = {"Host": host, "Origin": "null", "Sec-Fetch-Site": "same-origin"}
        assert srv.post("/score", b"abc", own_form)[0] == 200
        for bad in (
            {"Host": host, "Sec-Fetch-Site": "cross-site"},
            {"Host": host, "Origin": "http://evil.example"},
            {"Host": host, "Origin": "null"},
            {"Host": host, "Origin": "null", "Sec-Fetch-Site": "cross-site"},
        ):
            status, body = srv.post("/score", b"abc", bad)
            assert status == 403 and b"detail" in body


def test_bodies_held_at_once_are_bounded_in_bytes() -> None:
    """Requests waiting for a slot hold their body: all of them together stay under a budget."""
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await receive()
        await release.wait()  # "waiting for an inference slot"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = BodyGuard(slow_app, max_body_bytes=100_000, max_buffered_bytes=150_000)

    async def request(n: int) -> int:
        sent: list[dict] = []
        body = [{"type": "http.request", "body": b"x" * n, "more_body": False}]

        async def receive():
            return body.pop() if body else {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "method": "POST", "path": "/s", "headers": []}
        await guard(scope, receive, send)
        return sent[0]["status"]

    async def main() -> list[int]:
        first = asyncio.create_task(request(80_000))
        await asyncio.sleep(0.05)
        second = await request(80_000)  # 160,000 bytes would be held: refused
        assert guard.buffered == 80_000
        release.set()
        return [await first, second, await request(80_000)]

    assert asyncio.run(main()) == [200, 503, 200]
    assert guard.buffered == 0 and guard.pending == 0
