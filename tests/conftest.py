"""Shared fixtures: where the real sample data lie, and skips where they do not."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _need(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real sample data absent: {p} (only the project's own checkout has ../shared/data)")
    return p


@pytest.fixture
def ra2_dream_dir() -> Path:
    return _need("ra2-dream-sample")


@pytest.fixture
def rsna_sample_dir() -> Path:
    return _need("rsna-boneage-sample")


@pytest.fixture
def rsna_100px_dir() -> Path:
    return _need("rsna-boneage-100px")
