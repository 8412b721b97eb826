"""The web page and HTTP API of ``svdh serve`` (FastAPI): see :func:`svdh.web.app.create_app`."""

from svdh.web.app import create_app

__all__ = ["create_app"]
