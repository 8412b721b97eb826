"""Issue 14, the scoring server: items 1 (no PHI in its logs), 2 (slow clients), 4 (Host,
CSRF, results.json mode), 6 (pixels per request, form fields), 18 (422 shape, disconnects).

On the predict stage's tiny trained world (tests/predict_world.py), like tests/test_web_api.py.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from fuzz_corpus import PHI
from test_hardening_phi import CASES

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="module")
def predictor(world):
    from svdh.inference.predictor import Predictor

    return Predictor(world.ens_bundle)


def _client(predictor, **kw):
    from fastapi.testclient import TestClient

    from svdh.web.app import create_app

    return TestClient(create_app(predictor, **kw))


def _png(side: int = 96, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    a = 40 + 150 * np.exp(-(((x - side / 2) / (side / 5)) ** 2)) * (y > side / 6)
    a = np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _files(*items: tuple[str, bytes]) -> list:
    return [("files", (n, b, "application/octet-stream")) for n, b in items]


# --------------------------------------------------------------------------- item 1


def test_uploads_full_of_patient_data_leave_none_in_the_server_log(
    predictor, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with _client(predictor) as c:
        for name, data in CASES.items():
            r = c.post("/api/v1/score?errors=report", files=_files((name, data)))
            assert r.status_code in (200, 422), r.text
            for err in r.json().get("errors", []):
                assert PHI not in json.dumps(err)
            if r.status_code == 422:
                assert PHI not in r.json()["detail"]
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, *(str(r.msg) for r in caplog.records)):
        assert PHI not in text


# --------------------------------------------------------------------------- item 4


def test_host_header_is_checked(predictor) -> None:
    with _client(predictor, allowed_hosts=["scorer.example"]) as c:
        assert c.get("/healthz", headers={"Host": "scorer.example"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "127.0.0.1:8000"}).status_code == 200
        r = c.get("/", headers={"Host": "evil.example"})
        assert r.status_code == 421 and "--allowed-host" in r.json()["detail"]


def test_cross_site_form_post_is_refused(predictor) -> None:
    with _client(predictor) as c:
        files = _files(("a.png", _png()))
        evil = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        r = c.post("/score", files=files, headers=evil)
        assert r.status_code == 403 and "cross-site" in r.json()["detail"]
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        assert c.post("/score", files=files, headers=same).status_code == 200


def test_kept_results_are_readable_by_the_owner_only(predictor, tmp_path: Path) -> None:
    with _client(predictor, keep_dir=tmp_path) as c:
        assert c.post("/api/v1/score", files=_files(("a.png", _png()))).status_code == 200
    (results,) = tmp_path.glob("*/results.json")
    assert stat.S_IMODE(os.stat(results).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(results.parent).st_mode) == 0o700


# --------------------------------------------------------------------------- items 6, 18


def test_decoded_pixels_per_request_are_bounded(predictor) -> None:
    with _client(predictor, max_request_pixels=3 * 96 * 96) as c:
        files = _files(*((f"{i}.png", _png(96, i)) for i in range(5)))
        r = c.post("/api/v1/score?errors=report", files=files)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["results"]) == 3
        assert [e["image"] for e in body["errors"]] == ["3.png", "4.png"]
        assert all("pixels of one request" in e["error"] for e in body["errors"])


def test_form_fields_are_bounded_by_number_and_size(predictor) -> None:
    with _client(predictor) as c:
        many = {"patient_id": ["P1"] * 500}
        r = c.post("/api/v1/score", files=_files(("a.png", _png())), data=many)
        assert r.status_code == 413 and "form fields" in r.json()["detail"]


def test_bad_query_parameter_gives_a_string_detail(predictor) -> None:
    with _client(predictor) as c:
        r = c.post("/api/v1/score?images=maybe", files=_files(("a.png", _png())))
        assert r.status_code == 422
        assert isinstance(r.json()["detail"], str) and "images" in r.json()["detail"]


# --------------------------------------------------------------------------- item 2, real server


class _Server:
    def __init__(self, app) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        for _ in range(400):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "svdhboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_slow_uploads_do_not_stall_scoring(predictor) -> None:
    from svdh.web.app import create_app

    app = create_app(predictor, upload_min_rate=2000, upload_grace_s=2)
    with _Server(app) as srv:
        stop = threading.Event()
        slow = []
        for _ in range(20):  # more than the 2 workers + a queue of 4
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(
                b"POST /api/v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
            )
            slow.append(s)

        def drip() -> None:
            while not stop.is_set():
                for s in slow:
                    try:
                        s.send(b"x")
                    except OSError:
                        pass
                stop.wait(1.0)

        threading.Thread(target=drip, daemon=True).start()
        try:
            time.sleep(1.0)
            body, ctype = _multipart("a.png", _png())
            for _ in range(3):  # a stall would end in the 60 s client timeout
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
                conn.request("POST", "/api/v1/score", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                assert resp.status == 200, resp.read()[:300]
                resp.read()
                conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
        finally:
            stop.set()
            for s in slow:
                s.close()
