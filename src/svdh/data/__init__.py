"""Dataset sources, manifests, patient-grouped splits and the preprocessed-image cache.

``load_source(spec)`` reads ``rsna-boneage:DIR``, ``ra2-dream:DIR`` or ``csv:FILE`` into one
manifest; ``assign_folds`` splits it by patient; ``prepare`` / ``open_cache`` build and read
the memory-mapped cache, and ``ensure_cache`` goes from a source to a ready cache in one call.
"""

from __future__ import annotations

from svdh.data.manifest import COLUMNS, Problem, read_manifest_csv, write_manifest_csv
from svdh.data.sources import load_source, parse_spec

__all__ = [
    "COLUMNS",
    "Cache",
    "Problem",
    "assign_folds",
    "ensure_cache",
    "load_source",
    "open_cache",
    "parse_spec",
    "prepare",
    "read_manifest_csv",
    "write_manifest_csv",
]


def __getattr__(name: str):  # lazy: the cache pulls in multiprocessing and rich
    if name in ("prepare", "open_cache", "ensure_cache", "Cache"):
        from svdh.data import cache

        return getattr(cache, name)
    if name == "assign_folds":
        from svdh.data.splits import assign_folds

        return assign_folds
    raise AttributeError(name)
