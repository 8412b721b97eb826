"""Training runs (svdh.train, svdh train/pretrain): layout, folds, OOF, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from svdh.core.errors import BadRunError
from svdh.core.scoring import SeverityBins
from svdh.train import TrainConfig, load_run, train_run
from svdh.train.data import LazyImages
from svdh.train.loop import RunData

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SVDH = str(Path(sys.executable).parent / "svdh")


def _hand_like(score: float, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A bright 'hand' (ellipse with five 'fingers') whose dark spots grow with the score."""
    yy, xx = np.mgrid[:size, :size] / size
    img = (((xx - 0.5) / 0.3) ** 2 + ((yy - 0.65) / 0.25) ** 2 < 1).astype(float) * 0.7
    for f in range(5):
        cx = 0.3 + 0.1 * f
        img[(np.abs(xx - cx) < 0.03) & (yy > 0.15) & (yy < 0.5)] = 0.7
    n_spots = int(score // 5)
    for _ in range(n_spots):
        cy, cx = rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.7)
        img[((xx - cx) ** 2 + (yy - cy) ** 2) < 0.0015] = 0.2
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_csv_source(root: Path, n_patients: int = 12, seed: int = 0) -> str:
    """A csv: source of two hands per patient with erosion + JSN = svdh."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(n_patients):
        for side in ("L", "R"):
            ero, jsn = float(rng.integers(0, 30)), float(rng.integers(0, 20))
            name = f"p{p:02d}-{side}.png"
            Image.fromarray(_hand_like(ero + jsn, rng)).save(root / name)
            rows.append(
                {
                    "image": name,
                    "patient_id": f"P{p:02d}",
                    "side": side,
                    "svdh": ero + jsn,
                    "erosion": ero,
                    "jsn": jsn,
                }
            )
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return f"csv:{root / 'labels.csv'}"


def memory_data(n: int = 24, size: int = 32, seed: int = 0) -> RunData:
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 60, n).round()
    images = np.stack([_hand_like(v, rng, size) for v in y])
    man = pd.DataFrame(
        {
            "image": [f"/mem/{i}.png" for i in range(n)],
            "image_id": [f"im{i}" for i in range(n)],
            "patient_id": [f"P{i // 2}" for i in range(n)],
            "side": ["L", "R"] * (n // 2),
            "svdh": y,
            "score_scope": "hand",
        }
    )
    man.attrs["source"] = "memory"
    return RunData(man, LazyImages(images), {"size": size}, "memory")


def tiny(**kw) -> TrainConfig:
    base = dict(
        backbone="mobilenet_v2_050",
        folds=2,
        epochs=1,
        batch_size=8,
        image_size=32,
        num_workers=0,
        accelerator="cpu",
        patience=0,
        lr=3e-3,
        canonical=False,  # toy images, not radiographs: the canonical stage would refuse them
    )
    base.update(kw)
    return TrainConfig(**base)


def check_layout(run: Path, folds: list[int], test: bool) -> pd.DataFrame:
    """The run-directory contract (docs/architecture.md) and the OOF invariants."""
    for f in ("config.yaml", "folds.csv", "oof.csv", "metrics.json"):
        assert (run / f).is_file(), f
    assert (run / "test.csv").is_file() == test
    for k in folds:
        for f in ("best.ckpt", "last.ckpt", "best.safetensors", "done.json"):
            assert (run / f"fold_{k}" / f).is_file(), f"fold_{k}/{f}"
        assert list((run / "logs" / "csv" / f"fold_{k}").rglob("metrics.csv"))
        assert list((run / "logs" / "tensorboard" / f"fold_{k}").rglob("events.out.tfevents.*"))
    folds_csv = pd.read_csv(run / "folds.csv", dtype={"patient_id": str})
    # no patient in the training and the validation data of one fold
    assert (folds_csv.groupby("patient_id")["fold"].nunique() == 1).all()
    for k in folds:
        val = set(folds_csv.loc[folds_csv["fold"] == k, "patient_id"])
        train = folds_csv[(folds_csv["fold"] != k) & (folds_csv["fold"] >= 0)]
        assert val and val.isdisjoint(train["patient_id"])
        done = json.loads((run / f"fold_{k}" / "done.json").read_text())
        assert done["n_train"] == len(train) and done["n_val"] == (folds_csv["fold"] == k).sum()
    oof = pd.read_csv(run / "oof.csv", dtype={"patient_id": str, "image_id": str})
    for c in ("image", "image_id", "patient_id", "side", "fold", "y_true", "y_pred"):
        assert c in oof.columns
    # every non-test image predicted exactly once, by the fold that held its patient out
    non_test = folds_csv[folds_csv["fold"] >= 0]
    assert sorted(oof["image_id"]) == sorted(non_test["image_id"].astype(str))
    merged = oof.merge(folds_csv[["image_id", "fold"]].astype({"image_id": str}), on="image_id")
    assert (merged["fold_x"] == merged["fold_y"]).all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == folds and metrics["overall"]["n"] == len(oof)
    return oof


def test_run_directory_from_a_csv_source(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SVDH_CACHE_DIR", str(tmp_path / "cache"))
    src = make_csv_source(tmp_path / "data", n_patients=12)
    cfg = tiny(source=src, folds=3, test_fraction=0.25, extra_heads=True, target_transform="log1p")
    run = tmp_path / "run"
    metrics = train_run(cfg, run)
    oof = check_layout(run, [0, 1, 2], test=True)
    assert {"erosion_true", "erosion_pred", "jsn_true", "jsn_pred", "patient_svdh"} <= set(
        oof.columns
    )
    assert np.allclose(oof["erosion_pred"] + oof["jsn_pred"], oof["y_pred"], atol=1e-3)
    bins = SeverityBins.hand()
    assert (oof["class_true"] == bins.to_class(oof["y_true"].to_numpy())).all()
    assert np.allclose(oof[[f"p_{k}" for k in range(bins.n_classes)]].sum(axis=1), 1)
    test = pd.read_csv(run / "test.csv")
    assert (test["fold"] == -1).all() and len(test) == 6  # 3 of 12 patients, two hands each
    assert metrics["test"]["n"] == 6

    cfg_saved = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg_saved["task"] == "regression" and cfg_saved["score_scope"] == "hand"
    assert cfg_saved["bins"] == bins.to_dict() and cfg_saved["preprocess"]["size"] == 32
    assert cfg_saved["model"]["extra_heads"] and cfg_saved["train"]["target_transform"] == "log1p"

    # load_run rebuilds each fold model from safetensors; it reproduces oof.csv
    info = load_run(run)
    assert info.folds == [0, 1, 2] and len(info.models) == 3 and info.image_size == 32
    from svdh.data.cache import ensure_cache

    cache = ensure_cache(src, 32, progress=False)
    idx = cache.manifest.set_index("image_id")["cache_index"]
    for k, model in zip(info.folds, info.models, strict=True):
        rows = oof[oof["fold"] == k]
        x = torch.from_numpy(
            cache.batch(idx.loc[rows["image_id"]].to_numpy()).astype(np.float32) / 255
        )
        with torch.no_grad():
            pred = model(x.unsqueeze(1))[:, 0].numpy()
        assert np.allclose(pred, rows["y_pred"], atol=1e-4)

    with pytest.raises(BadRunError, match="--resume"):
        train_run(cfg, run)


@pytest.mark.parametrize("task", ["classification", "ordinal"])
def test_class_tasks_write_class_probabilities(tmp_path, task: str) -> None:
    data = memory_data()
    train_run(tiny(task=task, scheme="discriminative"), tmp_path / "run", data=data, quiet=True)
    oof = check_layout(tmp_path / "run", [0, 1], test=False)
    bins = SeverityBins.hand()
    p = oof[[f"p_{k}" for k in range(bins.n_classes)]].to_numpy()
    assert np.allclose(p.sum(1), 1) and (p >= 0).all()
    assert (oof["class_true"] == bins.to_class(oof["y_true"].to_numpy())).all()
    assert np.allclose(oof["y_pred"], p @ bins.representative_scores)
    if task == "classification":
        assert (oof["class_pred"] == p.argmax(1)).all()
    info = load_run(tmp_path / "run")
    assert info.arch["task"] == task and info.bins == bins


def test_head_scheme_trains_only_the_head(tmp_path) -> None:
    from svdh.models import build_model
    from svdh.models.weights import save_weights

    torch.manual_seed(0)
    start = build_model("mobilenet_v2_050", "regression")
    save_weights(tmp_path / "start.safetensors", start.state_dict(), start.config)
    cfg = tiny(
        init=f"checkpoint:{tmp_path / 'start.safetensors'}", scheme="head", epochs=2, lr=1e-2
    )
    train_run(cfg, tmp_path / "run", data=memory_data(), quiet=True)
    trained = load_run(tmp_path / "run").models[0]
    s0, s1 = start.state_dict(), trained.state_dict()
    backbone = [k for k in s0 if k.startswith("backbone.")]
    assert all(torch.equal(s0[k], s1[k]) for k in backbone)  # weights and BN statistics kept
    assert not torch.equal(s0["head.out.weight"], s1["head.out.weight"])


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys) -> None:
    from svdh.cli.main import main

    monkeypatch.setattr(
        sys,
        "argv",
        ["svdh", "train", "csv:/nowhere.csv", "--out", str(tmp_path / "r"), "--scheme", "sideways"],
    )
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().count("\n") == 0
    assert "unknown --scheme 'sideways'" in err


def _last_epoch(csv_dir: Path) -> list[int]:
    return [int(e) for e in pd.read_csv(csv_dir / "metrics.csv")["epoch"].dropna().unique()]


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path) -> None:
    """A run killed with SIGKILL mid-fold continues from its last epoch; finished folds stay."""
    env = dict(os.environ, SVDH_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    src = make_csv_source(tmp_path / "data", n_patients=16)
    run = tmp_path / "run"
    args = [
        SVDH,
        "train",
        src,
        "--out",
        str(run),
        "--folds",
        "2",
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--backbone",
        "mobilenet_v2_050",
        "--num-workers",
        "0",
        "--patience",
        "0",
        "--accelerator",
        "cpu",
        "--no-augment",
        "--no-canonical",
    ]
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    t0 = time.time()
    try:
        while not (
            (run / "fold_0" / "done.json").exists() and (run / "fold_1" / "last.ckpt").exists()
        ):
            assert proc.poll() is None, (
                f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
            )
            assert time.time() - t0 < 300
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "fold_1" / "done.json").exists() and not (run / "oof.csv").exists()
    done0 = (run / "fold_0" / "done.json").stat().st_mtime_ns
    saved_epoch = int(torch.load(run / "fold_1" / "last.ckpt", weights_only=True)["epoch"])

    r = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    check_layout(run, [0, 1], test=False)
    assert (run / "fold_0" / "done.json").stat().st_mtime_ns == done0  # finished fold skipped
    versions = sorted((run / "logs" / "csv" / "fold_1").glob("version_*"))
    assert len(versions) == 2 and not (run / "logs" / "csv" / "fold_0" / "version_1").exists()
    resumed = _last_epoch(versions[-1])
    assert (
        min(resumed) == saved_epoch + 1 and max(resumed) == 5
    )  # lost nothing saved, ran to the end
    assert json.loads((run / "fold_1" / "done.json").read_text())["epochs_run"] == 6


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path) -> None:
    """DDP (gloo, 2 processes) writes the same run directory; every image predicted once."""
    env = dict(os.environ, SVDH_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    src = make_csv_source(tmp_path / "data", n_patients=10)
    run = tmp_path / "run"
    r = subprocess.run(
        [
            SVDH,
            "train",
            src,
            "--out",
            str(run),
            "--folds",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--backbone",
            "mobilenet_v2_050",
            "--num-workers",
            "0",
            "--patience",
            "0",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--no-canonical",
            "--scheme",
            "gradual",
            "--unfreeze-every",
            "1",
            "--test-fraction",
            "0.2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    check_layout(run, [0, 1], test=True)
    for k in (0, 1):
        assert json.loads((run / f"fold_{k}" / "done.json").read_text())["world_size"] == 2
    assert len(pd.read_csv(run / "test.csv")) == 4
    assert len(load_run(run).models) == 2


@pytest.mark.real_data
def test_pretrain_on_the_rsna_sample_then_transfer(tmp_path, rsna_sample_dir, monkeypatch) -> None:
    monkeypatch.setenv("SVDH_CACHE_DIR", str(tmp_path / "cache"))
    from svdh.cli.main import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "svdh",
            "pretrain",
            f"rsna-boneage:{rsna_sample_dir}",
            "--out",
            str(tmp_path / "ba"),
            "--backbone",
            "mobilenet_v2_050",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--image-size",
            "32",
            "--num-workers",
            "0",
            "--accelerator",
            "cpu",
            "--test-fraction",
            "0.2",
            "--val-fraction",
            "0.25",
        ],
    )
    main()
    run = tmp_path / "ba"
    oof = pd.read_csv(run / "oof.csv")
    test = pd.read_csv(run / "test.csv")
    assert len(test) == 4 and len(oof) == 4 and "male" in oof.columns  # 20 images: 4 test, 4 val
    assert 0 <= oof["y_true"].min() and oof["y_true"].max() <= 240  # months
    metrics = json.loads((run / "metrics.json").read_text())
    assert np.isclose(metrics["test"]["mae"], np.abs(test["y_true"] - test["y_pred"]).mean())
    from svdh.models import build_model

    seeded = build_model("mobilenet_v2_050", "regression", init=f"checkpoint:{run}")
    pre = load_run(run).models[0]
    assert torch.equal(
        seeded.backbone.features[1].conv[0][0].weight, pre.backbone.features[1].conv[0][0].weight
    )
    assert not seeded.init_report["head_transferred"]


def test_train_uses_a_prepared_cache_and_refuses_a_mismatched_one(tmp_path):
    """`svdh train --cache DIR` trains on what `svdh prepare --out DIR` built (preprocessing
    checked, stored once in the run's config), and refuses a cache prepared otherwise."""
    from svdh.core.errors import BadConfigError
    from svdh.core.preprocess import PreprocessConfig
    from svdh.data.cache import prepare
    from svdh.train.loop import load_run_data

    src = make_csv_source(tmp_path / "data", n_patients=6)
    cache = tmp_path / "cache"
    prepare(src, cache, PreprocessConfig(size=32, margin=0.1), workers=1, progress=False)
    data = load_run_data(tiny(source=src, cache=str(cache), margin=0.1))
    assert len(data.manifest) == 12 and data.images.shape == (12, 32, 32)
    assert data.preprocess["size"] == 32 and data.preprocess["margin"] == 0.1
    with pytest.raises(BadConfigError, match="margin 0.1 \\(asked 0.04\\)"):
        load_run_data(tiny(source=src, cache=str(cache)))
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            "from svdh.cli.main import main; main()",
            "train",
            src,
            "-o",
            str(tmp_path / "run"),
            "--cache",
            str(cache),
            "--image-size",
            "64",
            "--no-canonical",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0 and "size 32 (asked 64)" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_run_config_stores_the_preprocessing_once(tmp_path):
    run = tmp_path / "run"
    train_run(tiny(folds=2), run, data=memory_data(), quiet=True)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert "image_size" not in cfg and "image_size" not in cfg["train"]
    assert cfg["preprocess"]["size"] == 32
    assert TrainConfig.from_run_config(cfg).image_size == 32
    old = {**cfg, "image_size": 48, "preprocess": None, "train": {**cfg["train"], "image_size": 48}}
    assert TrainConfig.from_run_config(old).image_size == 48  # a run written before


def test_train_options_and_the_experiment_schema_are_derived_from_train_config():
    """One declaration (TrainConfig fields and their help): `svdh train` has exactly one option
    per command-line field, with its default and help, and the experiment schema takes every
    field and refuses others."""
    from dataclasses import fields

    import typer

    from svdh.cli.main import app
    from svdh.experiment import train_settings_model
    from svdh.train.config import TrainConfig

    train = typer.main.get_command(app).commands["train"]
    params = {p.name: p for p in train.params}
    declared = [f for f in fields(TrainConfig) if f.metadata["cli"]]
    assert set(params) == {f.name for f in declared} | {"source", "out", "resume"}
    for f in declared:
        assert params[f.name].help == f.metadata["help"]
        if f.name != "bin_edges":  # typed as comma-separated text on the command line
            assert params[f.name].default == f.default
    assert (
        "--bins" in params["bin_edges"].opts and "--no-augment" in params["augment"].secondary_opts
    )
    schema = train_settings_model()
    assert set(schema.model_fields) == {f.name for f in fields(TrainConfig)}
    with pytest.raises(Exception, match="epochz"):
        schema.model_validate({"epochz": 3})


def test_stretch_changes_the_aspect_ratio_and_keeps_the_centre():
    """RandomStretch widens and shortens (or narrows and lengthens) a hand about the centre,
    within the asked range; strength and stretch are TrainConfig settings, checked there."""
    from svdh.core.errors import BadConfigError
    from svdh.train.data import RandomStretch, radiograph_augmentation

    x = torch.zeros(1, 96, 96)
    x[:, 28:68, 40:56] = 1.0  # 40 high, 16 wide, centred
    torch.manual_seed(0)
    ratios = []
    for _ in range(40):
        y = RandomStretch(0.3)(x)[0] > 0.5
        h, w = int(y.any(1).sum()), int(y.any(0).sum())
        rows, cols = np.flatnonzero(y.any(1)), np.flatnonzero(y.any(0))
        assert (
            abs((rows[0] + rows[-1]) / 2 - 47.5) <= 1 and abs((cols[0] + cols[-1]) / 2 - 47.5) <= 1
        )
        ratios.append((w / h) / (16 / 40))
    assert min(ratios) < 0.9 and max(ratios) > 1.1  # both ways
    assert 1 / 1.3 - 0.08 <= min(ratios) and max(ratios) <= 1.3 + 0.08
    assert torch.equal(RandomStretch(0.0)(x), x)
    names = [type(t).__name__ for t in radiograph_augmentation(stretch=0.2).transforms]
    assert "RandomStretch" in names
    assert "RandomStretch" not in [type(t).__name__ for t in radiograph_augmentation().transforms]
    with pytest.raises(BadConfigError, match="aug-stretch"):
        TrainConfig(aug_stretch=1.5).validate()


def test_pretrain_offers_the_bone_age_recipe_as_its_defaults():
    """`svdh pretrain`'s defaults are the measured bone-age recipe (docs/benchmarks.md), and
    they reach the run's TrainConfig when no option is given."""
    import typer

    from svdh.cli.main import app
    from svdh.cli.train import PRETRAIN

    params = {p.name: p for p in typer.main.get_command(app).commands["pretrain"].params}
    for name, over in PRETRAIN.items():
        if over is not None:
            assert params[name].default == over[0], name
    assert params["image_size"].default <= 128  # a size a CPU can pretrain at
    assert params["aug_stretch"].default > 0
