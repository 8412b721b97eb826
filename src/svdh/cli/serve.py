"""``svdh serve``: the web page and HTTP API for scoring radiographs."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import typer

from svdh.cli.keys import TRUST_OPTION, trusted_bundle
from svdh.core.errors import BadConfigError

#: Logging for the server: counts and status codes only. Uvicorn's access log (client
#: addresses, URLs) is switched off; the app logs one line per request without names or ids.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        "svdh": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
    },
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    """Fail early, in one line, when the address cannot be bound (in use, or not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise BadConfigError(f"--host {host}: not an address or name of this machine") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as exc:
            raise BadConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
            ) from None


_ALLOWED_HOST: Any = typer.Option(
    [],
    "--allowed-host",
    help="A host name users reach the server by (Host header), besides localhost and this "
    "machine's names; repeat for several, '*' allows any (no DNS-rebinding check).",
)
_MAX_REQUEST_PIXELS: Any = typer.Option(
    128_000_000,
    "--max-request-pixels",
    help="Decoded pixels of one request's images together (a memory bound).",
)
_UPLOAD_DEADLINE: Any = typer.Option(
    120.0, "--upload-deadline", help="Seconds a request body may take in all (408 after)."
)
_MIN_UPLOAD_RATE: Any = typer.Option(
    4096.0,
    "--min-upload-rate",
    help="Bytes per second a request body must keep up after its first 10 s (408 below).",
)


def serve(
    model: Path = typer.Option(
        ..., "--model", "-m", help="Model bundle (.svdh) from `svdh export`."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        help="Address to listen on. The default is reachable from this machine only.",
    ),
    port: int = typer.Option(8000, help="TCP port."),
    keep: Path | None = typer.Option(
        None,
        "--keep",
        help="Keep every upload and its result in this folder. Without it nothing "
        "is written to disk.",
    ),
    max_upload_mb: float = typer.Option(
        50.0, "--max-upload-mb", help="Largest file accepted, in MB (413 beyond)."
    ),
    max_files: int = typer.Option(20, "--max-files", help="Most files in one request."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Images scored at the same time (inference threads; default 1-2 by CPU count). "
        "Further requests queue.",
    ),
    allowed_host: list[str] = _ALLOWED_HOST,
    max_request_pixels: int = _MAX_REQUEST_PIXELS,
    upload_deadline: float = _UPLOAD_DEADLINE,
    min_upload_rate: float = _MIN_UPLOAD_RATE,
    trust: list[Path] = TRUST_OPTION,
) -> None:
    """Serve a web page and an HTTP API that score hand radiographs with a model bundle.

    Open http://HOST:PORT/ in a browser and drop PNG, JPEG, BMP, TIFF or DICOM radiographs, or POST them to /api/v1/score (see /docs).

    Uploads are patient data: they stay in memory and only counts are logged, unless --keep is given. Research software, not a medical device.
    """
    import uvicorn

    from svdh.web.app import create_app

    _check_options(port, max_upload_mb, max_files, workers, keep)
    _check_port(host, port)
    from svdh.inference.predictor import Predictor
    from svdh.web.guards import allowed_hosts

    web_app = create_app(
        Predictor(trusted_bundle(model, trust)),
        keep_dir=keep,
        max_upload_mb=max_upload_mb,
        max_concurrency=workers,
        max_files=max_files,
        allowed_hosts=allowed_hosts(host, allowed_host),
        max_request_pixels=max_request_pixels,
        upload_deadline_s=upload_deadline,
        upload_min_rate=min_upload_rate,
    )
    if not _is_loopback(host):
        typer.secho(
            f"warning: listening on {host}, reachable from other machines. Uploads are patient data: "
            "put the server behind HTTPS and authentication.",
            err=True,
            fg=typer.colors.YELLOW,
        )
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"svdh: scoring with {model.name} at http://{shown}:{port}/ (API docs at /docs; Ctrl+C stops)"
    )
    uvicorn.run(
        web_app,
        host=host,
        port=port,
        log_config=LOG_CONFIG,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
    )


def _check_options(
    port: int, max_upload_mb: float, max_files: int, workers: int | None, keep: Path | None
) -> None:
    if not 0 < port < 65536:
        raise BadConfigError(f"--port {port} is not a TCP port (1-65535)")
    if max_upload_mb <= 0:
        raise BadConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if max_files < 1:
        raise BadConfigError(f"--max-files must be at least 1, got {max_files}")
    if workers is not None and workers < 1:
        raise BadConfigError(f"--workers must be at least 1, got {workers}")
    if keep is not None:
        try:
            keep.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise BadConfigError(
                f"--keep {keep}: cannot create the folder ({exc.strerror})"
            ) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
