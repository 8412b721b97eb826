"""Shared fixtures: where the real sample data lie, and skips where they do not."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _need(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(
            f"real sample data absent: {p} (only the project's own checkout has ../shared/data)"
        )
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


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Small trained runs, an ensemble and bundles on a phantom cohort (tests/predict_world.py),
    built once per session and shared by the bundle, predict, explain, ONNX and web tests."""
    from predict_world import get_world

    return get_world(tmp_path_factory.getbasetemp() / "predict_world")
