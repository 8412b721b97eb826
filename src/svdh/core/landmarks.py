"""The phantom cohort's ``landmarks.json``: its format name and the one reader.

``svdh synth`` writes the file (schema in docs/synth.md); ``svdh explain`` reads it to measure
where heat maps fall. Both use this module, so the format is checked in one place and inference
needs nothing of the phantom generator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from svdh.core.errors import BadConfigError

LANDMARKS_FILE = "landmarks.json"
LANDMARKS_FORMAT = "svdh-phantom-landmarks"
LANDMARKS_VERSION = 1


def load_landmarks(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a phantom ``landmarks.json`` (a folder or the file), checking its format."""
    p = Path(path)
    if p.is_dir():
        p = p / LANDMARKS_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadConfigError(
            f"{p}: no landmarks file; generate the cohort with 'svdh synth'"
        ) from None
    except (OSError, ValueError) as exc:
        raise BadConfigError(f"{p}: not a readable landmarks file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != LANDMARKS_FORMAT:
        raise BadConfigError(
            f"{p}: not an svdh phantom landmarks file (format {doc.get('format') if isinstance(doc, dict) else None!r})"
        )
    if int(doc.get("version", 0)) > LANDMARKS_VERSION:
        raise BadConfigError(
            f"{p}: landmarks version {doc.get('version')} is newer than this svdh understands"
        )
    return doc
