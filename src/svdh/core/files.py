"""Writing files so that a reader, a crash or a ``kill -9`` never sees half of one.

The one atomic-write helper of the package: the data cache, run directories and model
bundles all write through it (write a temporary file beside the target, then rename it
over the target, which POSIX and Windows do atomically on one file system).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import is_out_of_space, out_of_space


def _tmp_name(path: Path) -> Path:
    # hidden, per process: two writers of one file never share a temporary name
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through; renamed over ``path`` when the block ends
    without an exception, removed when it raises. For writers that want a file name
    (``safetensors.save_file``, ``onnx.save``)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if is_out_of_space(exc):  # one line naming the disk, not a traceback
            raise out_of_space(path.parent, path.name) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and rename the result over ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def plain(obj: Any) -> Any:
    """numpy scalars/arrays -> Python, non-finite floats -> None, paths -> str: safe for YAML/JSON."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, data: Any, sort_keys: bool = False) -> Path:
    """Write JSON atomically, NaN/inf turned into null (strict JSON readers reject NaN)."""
    text = json.dumps(plain(data), indent=2, allow_nan=False, sort_keys=sort_keys) + "\n"
    return atomic_write_text(path, text)


def write_yaml(path: str | Path, data: Any) -> Path:
    """Write YAML atomically (keys in the order given)."""
    import yaml

    return atomic_write_text(path, yaml.safe_dump(plain(data), sort_keys=False))
