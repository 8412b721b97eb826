"""Peak memory of `svdh serve` under the upload bombs of issue 14 (items 5 and 6).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_web_bombs.py MODEL.svdh

Starts the real server on loopback, then for each bomb sends one request and reads the server's
peak resident memory (VmHWM in /proc) before and after: the aspect-ratio PNGs (1000 x 40000 and
400 x 131592), ten 7900 x 7900 PNGs in one request, a 40-frame 4000 x 4000 DICOM, 192 MB of text
form fields sent chunked, and 20 clients sending 1 byte/s while normal uploads are timed.
Prints one JSON object (status codes, seconds, memory growth in MB).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 0).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _film() -> bytes:
    y, x = np.mgrid[0:400, 0:300]
    a = (40 + 150 * np.exp(-(((x - 150) / 60) ** 2)) * (y > 60)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _frames() -> bytes:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from fuzz_corpus import dicom_bytes, dicom_dataset

    buf = io.BytesIO()
    Image.new("L", (4000, 4000), 0).save(buf, "JPEG")
    ds = dicom_dataset(np.zeros((8, 8), np.uint8), bits=8)
    ds.Rows = ds.Columns = 4000
    ds.NumberOfFrames = 40
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()] * 40)
    ds["PixelData"].VR = "OB"
    return dicom_bytes(ds)


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    b = "svdhbench"
    parts = [
        (
            f'--{b}\r\nContent-Disposition: form-data; name="files"; filename="{n}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + d
        + b"\r\n"
        for n, d in files
    ]
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _post(port: int, body: bytes, ctype: str, timeout: float = 300) -> tuple[int, float]:
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/api/v1/score?errors=report", body=body, headers={"Content-Type": ctype})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, time.perf_counter() - t


def _chunked_fields(port: int, total: int) -> int:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /api/v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
    )
    field = b'--x\r\nContent-Disposition: form-data; name="patient_id"\r\n\r\n' + b"P" * 8000
    field += b"\r\n"
    sent = 0
    try:
        while sent < total:
            s.sendall(f"{len(field):x}\r\n".encode() + field + b"\r\n")
            sent += len(field)
        end = b"--x--\r\n"
        s.sendall(f"{len(end):x}\r\n".encode() + end + b"\r\n0\r\n\r\n")
    except OSError:
        pass
    s.settimeout(60)
    try:
        status = int(s.recv(64).split()[1])
    except (OSError, IndexError, ValueError):
        status = -1
    s.close()
    return status


def _slow(port: int, n: int, stop: threading.Event) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(
            b"POST /api/v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n\r\n"
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


def main() -> None:
    model = sys.argv[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = "from svdh.cli.main import main; main()"
    server = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--model", model, "--port", str(port)],
        stderr=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.2)
    out: dict[str, object] = {}
    try:
        body, ctype = _multipart([("warm.png", _film())])
        _post(port, body, ctype)
        out["after_warmup_mb"] = round(_hwm(server.pid))
        bombs = {
            "aspect_1000x40000": [("a.png", _png(1000, 40000))],
            "aspect_400x131592": [("b.png", _png(400, 131592))],
            "ten_7900x7900": [(f"{i}.png", _png(7900, 7900)) for i in range(10)],
            "frames_40x4000x4000": [("f.dcm", _frames())],
        }
        for name, files in bombs.items():
            before = _hwm(server.pid)
            body, ctype = _multipart(files)
            status, secs = _post(port, body, ctype)
            out[name] = {
                "request_mb": round(len(body) / 1e6, 2),
                "status": status,
                "s": round(secs, 1),
                "peak_growth_mb": round(_hwm(server.pid) - before),
            }
        before = _hwm(server.pid)
        status = _chunked_fields(port, 192_000_000)
        out["chunked_fields_192mb"] = {
            "status": status,
            "peak_growth_mb": round(_hwm(server.pid) - before),
        }
        stop = threading.Event()
        socks = _slow(port, 20, stop)
        time.sleep(2)
        body, ctype = _multipart([("n.png", _film())])
        times = [_post(port, body, ctype, timeout=120) for _ in range(5)]
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/healthz")
        out["slow_clients_20"] = {
            "normal_statuses": [t[0] for t in times],
            "normal_max_s": round(max(t[1] for t in times), 2),
            "healthz": c.getresponse().status,
        }
        stop.set()
        for s in socks:
            s.close()
        out["peak_mb"] = round(_hwm(server.pid))
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    lines = err.decode(errors="replace").splitlines()
    out["server_stderr_lines"] = len(lines)
    out["server_tracebacks"] = sum("Traceback" in line for line in lines)
    out["server_stderr_kinds"] = sorted({" ".join(line.split()[:6]) for line in lines})[:12]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
