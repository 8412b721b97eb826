"""A tiny trained world for the predict/bundle/explain/ONNX tests, built once per process.

A phantom cohort from ``svdh synth`` (24 patients, 48 hands at 160 px, uniform severity) read
as ``ra2-dream:DIR`` through the preprocessed-image cache at 64 px; two small ResNet-18 runs
(a regression with erosion and JSN heads, an ordinal classifier; 2 folds, 2 epochs, a
held-out test split) trained through the training engine's Python API; an ensemble of both
(inverse-MSE weights: unequal, non-zero coefficients whatever two epochs learnt); and two
bundles: the regression run alone and the ensemble with its ONNX graph.

Two epochs do not make a good model; they make real run directories whose predictions vary
from image to image, which is what reproduction and parity tests need.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

N_PATIENTS = 24
IMAGE_SIZE = 64


@dataclass
class World:
    root: Path
    cohort: Path
    reg_run: Path
    ord_run: Path
    ensemble: Path
    run_bundle: Path
    ens_bundle: Path


def train(data, out: Path, task: str, extra_heads: bool = False) -> Path:
    from svdh.train import TrainConfig, train_run

    cfg = TrainConfig(
        source=data.source,
        task=task,
        backbone="resnet18",
        folds=2,
        epochs=2,
        batch_size=8,
        image_size=IMAGE_SIZE,
        lr=1e-3,
        test_fraction=0.25,
        extra_heads=extra_heads,
        num_workers=0,
        patience=0,
        accelerator="cpu",
        devices="1",
        seed=0,
        augment=False,
    )
    train_run(cfg, out, data=data, quiet=True)
    return out


_WORLD: dict[str, World] = {}


def get_world(root: Path) -> World:
    """Build (once per process) and return the world under ``root``."""
    if "w" in _WORLD:
        return _WORLD["w"]
    import torch

    # one thread, as the other test modules set: on a shared 2-core machine two OpenMP threads
    # were measured 40x slower than one (each waits for a core the other processes hold)
    torch.set_num_threads(1)
    # SVDH_TEST_WORLD=DIR keeps the world between pytest runs (for whoever edits these tests)
    keep = os.environ.get("SVDH_TEST_WORLD")
    if keep:
        root = Path(keep)
        names = ("cohort", "reg", "ord", "ens", "reg.svdh", "ens.svdh")
        if (root / "done").is_file():
            _WORLD["w"] = World(root, *(root / n for n in names))
            return _WORLD["w"]
    from svdh.data.cache import ensure_cache
    from svdh.evaluate.ensemble import build_ensemble
    from svdh.inference.bundle import export_bundle
    from svdh.synth import generate_cohort
    from svdh.train.data import LazyImages
    from svdh.train.loop import RunData

    root.mkdir(parents=True, exist_ok=True)
    cohort = root / "cohort"
    generate_cohort(cohort, n=N_PATIENTS, size=160, seed=0, severity="uniform")
    spec = f"ra2-dream:{cohort}"
    cache = ensure_cache(spec, IMAGE_SIZE, root / "cache", workers=1, progress=False)
    data = RunData(cache.manifest, LazyImages(cache.images), cache.config.to_dict(), spec)
    reg = train(data, root / "reg", "regression", extra_heads=True)
    ordr = train(data, root / "ord", "ordinal")
    ens = build_ensemble([reg, ordr], root / "ens", method="weighted", n_boot=0)
    run_bundle = export_bundle(reg, root / "reg.svdh")
    ens_bundle = export_bundle(ens, root / "ens.svdh", onnx=True)
    _WORLD["w"] = World(root, cohort, reg, ordr, ens, run_bundle, ens_bundle)
    (root / "done").write_text("complete\n")
    return _WORLD["w"]


def run_cli(*args) -> subprocess.CompletedProcess:
    """Run ``svdh ARGS...`` as a user does, with one torch thread (fast and steady on a shared
    2-core machine)."""
    code = "from svdh.cli.main import main; main()"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
