"""The HTTP API and pages of ``svdh serve``, in-process (FastAPI's test client), on a real bundle.

The bundle is the predict stage's tiny trained world (``tests/predict_world.py``: a phantom cohort,
two ResNet-18 runs at 64 px combined into an ensemble and exported), built once per test session
and shared with the predict tests.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import socket
import subprocess
import sys
import tempfile
import threading
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from svdh.core.scoring import SeverityBins
from svdh.web.uploads import UploadError, parse_multipart, sniff_format

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def predictor(world):
    from svdh.inference.predictor import Predictor

    return Predictor(world.ens_bundle)


def make_client(predictor, **kw):
    from fastapi.testclient import TestClient

    from svdh.web.app import create_app

    return TestClient(create_app(predictor, **kw))


@pytest.fixture(scope="module")
def client(predictor):
    with make_client(predictor, max_upload_mb=4) as c:
        yield c


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def hand_png(world, name: str) -> bytes:
    return (world.cohort / name).read_bytes()


def _files(*items: tuple[str, bytes]) -> list:
    return [("files", (n, b, "application/octet-stream")) for n, b in items]


def _dicom_bytes(
    pixels: np.ndarray, patient_id: str, laterality: str, preamble: bool = True
) -> bytes:
    """A 16-bit MONOCHROME2 CR image with the usual tags, written by pydicom."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.PatientID, ds.ImageLaterality, ds.Modality = patient_id, laterality, "CR"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    buf = io.BytesIO()
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(buf, enforce_file_format=True)
    else:  # a bare data set, no 128-byte preamble and no "DICM" (old exports)
        pydicom.dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def _check_result(r: dict, bins: SeverityBins) -> None:
    assert 0 <= r["score"] <= bins.max_score
    lo, hi = r["interval"]
    assert lo <= r["score"] <= hi
    assert r["interval_level"] == pytest.approx(0.9)
    assert 0 <= r["severity_class"] < bins.n_classes
    assert r["severity_label"] == bins.labels[r["severity_class"]]
    assert r["erosion"] is not None and r["jsn"] is not None
    assert isinstance(r["warnings"], list)


# --------------------------------------------------------------------------- 200


def test_score_one_radiograph(client, predictor, world):
    r = client.post(
        "/api/v1/score", files=_files(("SYN00003-LH.png", hand_png(world, "SYN00003-LH.png")))
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["n_images"] == 1 and body["errors"] == []
    (res,) = body["results"]
    assert res["image"] == "SYN00003-LH.png" and res["format"] == "png"
    _check_result(res, predictor.bins)
    # this ensemble predicts a score: its class is the score's bin, by the one binning rule
    assert res["severity_class"] == predictor.bins.to_class(res["score"])
    assert "views" not in res  # images only when asked for
    assert "not a medical device" in body["notice"]
    # the same numbers as the predict stage gives for the same image
    from svdh.core.io import read_radiograph

    (row,) = predictor.predict_images([("x", read_radiograph(world.cohort / "SYN00003-LH.png"))])
    assert res["score"] == pytest.approx(row["score"], abs=1e-4)


def test_results_are_predictions_with_the_model_name_and_version(client, predictor, world):
    """Each result is Prediction.to_json (plus the upload's format and size), valid against the
    derived response model, and names the bundle that scored it."""
    from svdh.web.schema import ImageScore

    r = client.post(
        "/api/v1/score", files=_files(("SYN00003-LH.png", hand_png(world, "SYN00003-LH.png")))
    )
    (res,) = r.json()["results"]
    ImageScore.model_validate(res)
    assert res["model"] == predictor.model_name and res["model_version"] == predictor.model_version
    assert len(res["model_version"]) == 12 and res["error"] is None


def test_two_hands_of_one_patient_give_the_total(client, predictor, world):
    files = _files(
        *(
            (n, hand_png(world, n))
            for n in ("SYN00005-LH.png", "SYN00005-RH.png", "SYN00007-LH.png")
        )
    )
    r = client.post("/api/v1/score", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    by = {x["image"]: x for x in body["results"]}
    pats = {p["patient_id"]: p for p in body["patients"]}
    p5 = pats["SYN00005"]
    assert p5["total"] == pytest.approx(
        by["SYN00005-LH.png"]["score"] + by["SYN00005-RH.png"]["score"]
    )
    assert p5["interval"][0] == pytest.approx(
        by["SYN00005-LH.png"]["interval"][0] + by["SYN00005-RH.png"]["interval"][0]
    )
    assert p5["erosion"] == pytest.approx(
        by["SYN00005-LH.png"]["erosion"] + by["SYN00005-RH.png"]["erosion"]
    )
    patient_bins = SeverityBins.patient([2 * e for e in predictor.bins.edges])
    assert p5["severity_class"] == patient_bins.to_class(p5["total"])
    assert (
        pats["SYN00007"]["total"] is None and "one left and one right" in pats["SYN00007"]["note"]
    )


def test_patient_and_side_from_form_fields(client, world):
    files = _files(
        ("a.png", hand_png(world, "SYN00009-LH.png")), ("b.png", hand_png(world, "SYN00009-RH.png"))
    )
    r = client.post(
        "/api/v1/score", files=files, data={"patient_id": "trial-17", "side": ["L", "R"]}
    )
    assert r.status_code == 200, r.text
    (p,) = r.json()["patients"]
    assert p["patient_id"] == "trial-17" and p["total"] is not None
    assert [x["side"] for x in r.json()["results"]] == ["L", "R"]
    r = client.post("/api/v1/score", files=files, data={"side": ["L", "R", "L"]})
    assert r.status_code == 422 and "once per file" in r.json()["detail"]


def test_dicom_with_and_without_preamble_and_patient_id(client, world):
    left = np.asarray(Image.open(world.cohort / "SYN00011-LH.png"))
    right = np.asarray(Image.open(world.cohort / "SYN00011-RH.png"))
    files = _files(
        ("left", _dicom_bytes(left, "PAT-0042", "L", preamble=True)),
        ("right.bin", _dicom_bytes(right, "PAT-0042", "R", preamble=False)),
    )
    r = client.post("/api/v1/score", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["format"] for x in body["results"]] == ["dicom", "dicom"]
    assert [x["side"] for x in body["results"]] == ["L", "R"]
    (p,) = body["patients"]
    assert p["patient_id"] == "PAT-0042" and p["total"] is not None


def test_images_as_png_data_urls(client, world):
    r = client.post(
        "/api/v1/score?images=true",
        files=_files(("SYN00003-RH.png", hand_png(world, "SYN00003-RH.png"))),
    )
    assert r.status_code == 200, r.text
    views = r.json()["results"][0]["views"]
    decoded = {}
    for key in ("image", "overlay"):
        assert views[key].startswith("data:image/png;base64,")
        decoded[key] = np.asarray(
            Image.open(io.BytesIO(base64.b64decode(views[key].split(",", 1)[1])))
        )
    assert (
        decoded["image"].shape[:2] == decoded["overlay"].shape[:2]
        and decoded["image"].shape[0] >= 256
    )
    assert decoded["overlay"].ndim == 3 and not np.array_equal(decoded["image"], decoded["overlay"])


def _decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def _both_hands_png(turn: int = 0) -> bytes:
    from svdh.synth import quantize, render_hand

    film = quantize(render_hand(seed=3, index=0, side="B", size=256).image)
    return _png_bytes(np.ascontiguousarray(np.rot90(film, turn)))


def test_images_give_the_whole_film_with_every_hands_heat_map(client, world):
    """images=true: the film as uploaded, plain and with both hands' heat maps projected back
    onto it (inside the hands' boxes, not on the film between them), beside each hand's views."""
    from svdh.core.canonical import model_inputs

    data = _both_hands_png(turn=1)  # turned a quarter: the hands lie one above the other
    r = client.post("/api/v1/score?images=true", files=_files(("P4-BH.png", data)))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    film = res["film_views"]
    plain, heat = _decode(film["image"]), _decode(film["overlay"])
    assert plain.shape == heat.shape == (film["height"], film["width"], 3)
    assert (film["width"], film["height"]) == (256, 512)  # the film's own size (under 768)
    assert [h["hand"] for h in res["hands"]] == ["1/2", "2/2"]
    assert all(_decode(h["views"]["overlay"]).ndim == 3 for h in res["hands"])
    # where the heat was drawn: inside the hands' boxes (plus the cut's margin)
    drawn = np.abs(heat.astype(int) - plain.astype(int)).sum(-1) > 30
    assert drawn.mean() > 0.05
    boxes = [m.decision.box for m in model_inputs(Image.open(io.BytesIO(data)), None)]
    near = np.zeros(drawn.shape, bool)
    for x0, y0, x1, y1 in boxes:
        pad = int(round(0.06 * max(x1 - x0, y1 - y0))) + 2
        near[max(0, y0 - pad) : y1 + pad, max(0, x0 - pad) : x1 + pad] = True
    assert not drawn[~near].any()
    # without images=true: no film, no views
    r = client.post("/api/v1/score", files=_files(("P4-BH.png", data)))
    (res,) = r.json()["results"]
    assert "film_views" not in res and "views" not in res["hands"][0]


def test_page_shows_a_both_hands_film_beside_its_two_hands(client):
    r = client.post("/score", files=_files(("P4-BH.png", _both_hands_png())))
    assert r.status_code == 200
    html = r.text
    assert 'data-hands="2"' in html and html.count('<figure class="film">') == 1
    assert html.count('<figure class="hand">') == 2 and html.count('data-field="score"') == 2
    # each hand's decision under it: which hand, the turn, the side and who decided it
    decisions = re.findall(r'data-field="decision">([^<]*)', html)
    assert [d.split(",")[0] for d in decisions] == ["hand 1/2", "hand 2/2"]
    assert "R (position)" in decisions[0] and "L (position)" in decisions[1]
    assert "both hands of P4-BH.png" in html  # the film's patient total


def test_class_model_gives_probabilities(world, tmp_path):
    """A bundle with a class head (ordinal): probabilities per class, in JSON and on the page."""
    from svdh.inference.bundle import export_bundle

    with make_client(export_bundle(world.ord_run, tmp_path / "ord.svdh")) as c:
        files = _files(("SYN00003-LH.png", hand_png(world, "SYN00003-LH.png")))
        res = c.post("/api/v1/score", files=files).json()["results"][0]
        probs = np.asarray(res["probabilities"])
        assert (
            probs.shape == (7,) and probs.sum() == pytest.approx(1, abs=1e-4) and (probs >= 0).all()
        )
        page = c.post("/score", files=files)
        assert page.status_code == 200
        assert page.text.count('<td class="pct">') == 7 and 'class="pred"' in page.text


# --------------------------------------------------------------------------- 413 / 415 / 422 / 400


def test_413_file_over_the_limit(predictor, world):
    noise = np.random.default_rng(0).integers(0, 255, (600, 600), dtype=np.uint8)  # ~360 kB PNG
    big, small = _png_bytes(noise), hand_png(world, "SYN00003-LH.png")
    with make_client(predictor, max_upload_mb=0.2) as c:
        r = c.post("/api/v1/score", files=_files(("big.png", big)))
        assert r.status_code == 413
        assert "big.png" in r.json()["detail"] and "0.2 MB" in r.json()["detail"]
        # errors=report: the other file is still scored, the big one listed with its status
        r = c.post("/api/v1/score?errors=report", files=_files(("ok.png", small), ("big.png", big)))
        assert r.status_code == 200
        assert [x["image"] for x in r.json()["results"]] == ["ok.png"]
        assert r.json()["errors"][0]["status"] == 413
    with make_client(predictor, max_upload_mb=0.2, max_files=1) as c:
        # Content-Length alone shows a body over 1 file x 0.2 MB (+ 1 MB of form): refused unread
        r = c.post("/api/v1/score", files=_files(("huge.png", big * 4)))
        assert r.status_code == 413 and "1 file(s) of 0.2 MB each" in r.json()["detail"]
    with make_client(predictor, max_files=2) as c:
        r = c.post("/api/v1/score", files=_files(*[(f"{i}.png", small) for i in range(3)]))
        assert r.status_code == 413 and "at most 2" in r.json()["detail"]


@pytest.mark.parametrize(
    "name,data",
    [
        ("hand.png", b"These are my notes about the patient, saved with the wrong name.\n" * 3),
        ("scan.dcm", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n"),
        ("xray.jpg", b"PK\x03\x04" + bytes(200)),  # a zip archive
    ],
)
def test_415_not_an_image_whatever_the_name(client, name, data):
    r = client.post("/api/v1/score", files=_files((name, data)))
    assert r.status_code == 415
    assert name in r.json()["detail"] and "content" in r.json()["detail"]


def test_422_corrupt_image_with_a_clear_message(client, world):
    png = hand_png(world, "SYN00003-LH.png")
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(png)).save(jpeg, format="JPEG")
    cases = {
        "truncated.png": png[: len(png) // 3],
        "garbled.jpg": jpeg.getvalue()[:20] + bytes(200),
        "broken.dcm": bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + bytes(40),
        "empty.png": b"",
    }
    for name, data in cases.items():
        r = client.post("/api/v1/score", files=_files((name, data)))
        assert r.status_code == 422, (name, r.text)
        detail = r.json()["detail"]
        assert name in detail and "\n" not in detail and "Traceback" not in detail


def test_400_and_422_for_malformed_requests(client):
    assert client.post("/api/v1/score", json={"files": []}).status_code == 400
    r = client.post(
        "/api/v1/score", data={"patient_id": "x"}, files=[("other", ("a.txt", b"", "text/plain"))]
    )
    assert r.status_code == 400 and "'files'" in r.json()["detail"]
    r = client.post("/api/v1/score", data={"patient_id": "x"})
    assert r.status_code in (400, 422)


# --------------------------------------------------------------------------- health, model, docs, pages


def test_healthz_and_model_card(client):
    h = client.get("/healthz")
    assert h.status_code == 200
    hj = h.json()
    assert hj["status"] == "ok" and hj["max_concurrency"] >= 1 and "images_scored" in hj
    m = client.get("/api/v1/model").json()
    assert (
        m["task"] == "regression" and m["score_scope"] == "hand" and m["score_range"] == [0, 140.0]
    )
    assert len(m["severity_classes"]) == 7 and m["interval_level"] == pytest.approx(0.9)
    card = m["card"]
    assert (
        card["training_data"]["n_images"] > 0
        and "pcc" in card["metrics"]
        and "torch" in card["versions"]
    )
    page = client.get("/model")
    assert page.status_code == 200 and "Training data" in page.text and "Metrics" in page.text


def test_docs_and_pages_work_offline(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/score"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "files" in body["schema"]["properties"]
    assert {"413", "415", "422"} <= set(spec["paths"]["/api/v1/score"]["post"]["responses"])
    for url in ("/", "/model", "/docs"):
        r = client.get(url)
        assert r.status_code == 200
        # nothing loaded from another host: every src/href is local (or a data URL)
        external = re.findall(r'(?:src|href)="((?:https?:)?//[^"]*)"', r.text)
        assert external == [], external
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "not a medical device" in r.text
    docs = client.get("/docs").text
    assert "/api/v1/score" in docs and "ImageScore" in docs
    assert client.get("/static/app.js").status_code == 200


def test_page_form_renders_results_and_errors(client, world):
    files = _files(
        ("SYN00003-LH.png", hand_png(world, "SYN00003-LH.png")),
        ("SYN00003-RH.png", hand_png(world, "SYN00003-RH.png")),
        ("notes.png", b"not an image at all, just text"),
    )
    r = client.post("/score", files=files)
    assert r.status_code == 200
    html = r.text
    assert html.count('data-field="score"') == 2 and 'data-field="patient-total"' in html
    # each film (heat map and plain) beside its canonical hand (heat map and plain)
    assert html.count('class="cam"') == 4 and html.count('src="data:image/png;base64,') == 8
    assert html.count('<figure class="film">') == 2 and html.count('<figure class="hand">') == 2
    assert "notes.png" in html and "not an image" in html
    assert r.headers["cache-control"] == "no-store"


# --------------------------------------------------------------------------- privacy


def test_nothing_written_to_disk_and_no_names_in_logs(
    predictor, world, tmp_path, monkeypatch, caplog
):
    """A 3 MB upload (over Starlette's 1 MB spooling threshold) leaves no file anywhere, and
    logs carry neither the file name nor the patient id."""

    def refuse(*a, **k):
        raise AssertionError("a temporary file was created for an upload")

    for fn in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, fn, refuse)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    big = np.asarray(Image.open(world.cohort / "SYN00003-LH.png").resize((1600, 2000)))
    big = (
        (big.astype(np.int16) + np.random.default_rng(1).integers(-4, 5, big.shape))
        .clip(0, 255)
        .astype(np.uint8)
    )
    data = _png_bytes(big)
    assert len(data) > 1_500_000
    caplog.set_level(logging.DEBUG)
    with make_client(predictor, max_upload_mb=8) as c:
        r = c.post(
            "/score", files=_files(("Jane-Doe-1970.png", data)), data={"patient_id": "NHS-943-476"}
        )
        assert r.status_code == 200 and "Jane-Doe-1970.png" in r.text
    logs = caplog.text
    assert "POST /score -> 200" in logs
    assert "Jane-Doe" not in logs and "NHS-943" not in logs
    assert list(tmpdir.iterdir()) == []


def test_keep_dir_keeps_uploads_only_when_asked(predictor, world, tmp_path):
    keep = tmp_path / "kept"
    data = hand_png(world, "SYN00003-LH.png")
    with make_client(predictor, keep_dir=keep) as c:
        assert c.post("/api/v1/score", files=_files(("SYN00003-LH.png", data))).status_code == 200
        assert "kept on the server" in c.get("/").text
    (d,) = keep.iterdir()
    assert (d / "00-SYN00003-LH.png").read_bytes() == data
    assert "score" in (d / "results.json").read_text()
    # the page's images (hands and film) stay out of the audit file
    with make_client(predictor, keep_dir=tmp_path / "page") as c:
        assert c.post("/score", files=_files(("P4-BH.png", _both_hands_png()))).status_code == 200
    (d,) = (tmp_path / "page").iterdir()
    kept = (d / "results.json").read_text()
    assert '"hands"' in kept and "data:image" not in kept


# --------------------------------------------------------------------------- concurrency


class _Gated:
    """The real predictor behind a gate: a call waits until the test opens it."""

    def __init__(self, inner):
        self.inner, self.bundle = inner, inner.bundle
        self.preprocess_config = inner.preprocess_config
        self.entered, self.gate = threading.Event(), threading.Event()

    def predict_images(self, items, cam=False):
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        return self.inner.predict_images(items, cam=cam)


def test_healthz_is_answered_while_inference_is_busy(predictor, world):
    gated = _Gated(predictor)
    with make_client(gated) as c:
        out = {}
        t = threading.Thread(
            target=lambda: out.setdefault(
                "r",
                c.post(
                    "/api/v1/score", files=_files(("a.png", hand_png(world, "SYN00003-LH.png")))
                ),
            )
        )
        t.start()
        try:
            assert gated.entered.wait(60)
            h = c.get("/healthz").json()  # the only worker is stuck in inference
            assert h["inflight"] == 1 and h["admitted"] == 1
        finally:
            gated.gate.set()
            t.join(60)
        assert out["r"].status_code == 200
        h = c.get("/healthz").json()
        assert h["inflight"] == 0 and h["images_scored"] == 1


def test_busy_server_answers_503():
    from svdh.web.service import Busy, ScoringService

    svc = ScoringService(object(), max_concurrency=1, queue_size=0, max_waiting=0)
    try:
        with pytest.raises(Busy):
            asyncio.run(svc.admit())
    finally:
        svc.shutdown()


# --------------------------------------------------------------------------- uploads, no model needed


def _multipart(
    parts: list[tuple[str, str | None, bytes]], boundary: str = "svdhTESTboundary"
) -> tuple[str, bytes]:
    """Encode (field, filename or None, bytes) parts as multipart/form-data."""
    out = bytearray()
    for name, filename, data in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"Content-Disposition: {disp}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(out)


async def _chunks(body: bytes, size: int = 64 * 1024):
    for i in range(0, len(body), size):
        yield body[i : i + size]


def test_oversize_file_is_dropped_while_streaming_not_after():
    """A 12 MB part against a 1 MB limit: parsing never holds much more than the limit."""
    ctype, body = _multipart(
        [
            ("patient_id", None, b"P1"),
            ("files", "big.png", b"\x89PNG\r\n\x1a\n" + bytes(12_000_000)),
        ]
    )
    tracemalloc.start()
    try:
        form = asyncio.run(
            parse_multipart(ctype, _chunks(body), max_file_bytes=1_000_000, max_files=5)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (f,) = form.files
    assert f.oversize and f.size == 12_000_008 and len(f.data) == 0
    assert form.field("patient_id") == "P1"
    # the body (12 MB) belongs to the test; what parsing allocated stays near the 1 MB limit
    assert peak < 3_000_000, peak


def test_multipart_keeps_files_in_order_and_refuses_too_many():
    ctype, body = _multipart([("files", "a.png", b"A" * 10), ("files", "dir/b.png", b"B" * 20)])
    form = asyncio.run(parse_multipart(ctype, _chunks(body, 7), max_file_bytes=100, max_files=2))
    assert [(f.filename, bytes(f.data)) for f in form.files] == [
        ("a.png", b"A" * 10),
        ("b.png", b"B" * 20),
    ]
    with pytest.raises(UploadError) as exc:
        asyncio.run(parse_multipart(ctype, _chunks(body), max_file_bytes=100, max_files=1))
    assert exc.value.status == 413 and "at most 1" in exc.value.message
    with pytest.raises(UploadError) as exc:
        asyncio.run(
            parse_multipart("application/json", _chunks(b"{}"), max_file_bytes=100, max_files=1)
        )
    assert exc.value.status == 400


def test_sniffing_goes_by_content_not_name():
    assert sniff_format(_png_bytes(np.zeros((8, 8), np.uint8))) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0" + bytes(40)) == "jpeg"
    assert sniff_format(b"II*\x00" + bytes(40)) == "tiff"
    assert sniff_format(b"BM" + bytes(60)) == "bmp"
    assert sniff_format(b"%PDF-1.7 hello") is None
    assert sniff_format(b"just some text, named hand.png") is None
    assert sniff_format(b"") is None
    px = np.zeros((4, 4), np.uint16)
    assert sniff_format(_dicom_bytes(px, "X", "L", preamble=True)) == "dicom"
    raw = _dicom_bytes(px, "X", "L", preamble=False)
    assert raw[128:132] != b"DICM" and sniff_format(raw) == "dicom"


# --------------------------------------------------------------------------- the command


def test_serve_command_refuses_bad_options_in_one_line(tmp_path):
    svdh = [sys.executable, "-c", "from svdh.cli.main import main; main()"]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = str(s.getsockname()[1])
    for args, needle in (
        (
            ["serve", "--model", str(tmp_path / "missing.svdh"), "--port", free],
            "no such model bundle",
        ),
        (
            ["serve", "--model", str(tmp_path / "m.svdh"), "--port", str(busy.getsockname()[1])],
            "cannot listen",
        ),
        (["serve", "--model", str(tmp_path / "m.svdh"), "--max-upload-mb", "0"], "--max-upload-mb"),
    ):
        p = subprocess.run(svdh + args, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
    busy.close()


def test_serve_help_documents_the_options():
    p = subprocess.run(
        [sys.executable, "-c", "from svdh.cli.main import main; main()", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0
    for opt in ("--model", "--host", "--port", "--keep", "--max-upload-mb", "--workers"):
        assert opt in p.stdout
    assert "127.0.0.1" in p.stdout
