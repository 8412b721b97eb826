"""The preprocessed-image cache: parallel, idempotent, incremental, resumable after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from svdh.core.errors import BadConfigError, BadDatasetError
from svdh.core.io import read_radiograph
from svdh.core.preprocess import PreprocessConfig, preprocess
from svdh.data import load_source
from svdh.data.cache import ensure_cache, open_cache, prepare

ROOT = Path(__file__).resolve().parents[1]


def _hand(size: int, seed: int) -> np.ndarray:
    """A quick hand-like film: a bright rotated bar with fingers on a dark, noisy background."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 20, np.uint8)
    c = size // 2 + int(rng.integers(-size // 10, size // 10))
    cv2.rectangle(img, (c - size // 6, size // 2), (c + size // 6, size - 1), 120, -1)
    for k in range(-2, 3):
        x = c + k * size // 16
        cv2.line(
            img,
            (x, size // 2),
            (x + k * size // 40, size // 6 + abs(k) * size // 20),
            200,
            max(2, size // 40),
        )
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _csv_source(folder: Path, n: int, size: int = 96) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.fromarray(_hand(size, i)).save(folder / f"h{i:03d}.png")
        rows.append(
            {
                "image": f"h{i:03d}.png",
                "patient_id": f"p{i // 2}",
                "svdh": i % 7,
                "side": "LR"[i % 2],
            }
        )
    pd.DataFrame(rows).to_csv(folder / "m.csv", index=False)
    return f"csv:{folder / 'm.csv'}"


def _expected(path: str, cfg: PreprocessConfig) -> np.ndarray:
    return preprocess(read_radiograph(path), cfg)


def test_prepare_in_parallel_matches_preprocess_and_is_idempotent(tmp_path: Path) -> None:
    spec = _csv_source(tmp_path / "src", 24)
    cfg = PreprocessConfig(size=64)
    # OpenCV's thread pool now runs in this process: workers forked from it could deadlock.
    cv2.setNumThreads(2)
    for k in range(4):
        cv2.resize(np.zeros((999, 999), np.float32), (100, 100), interpolation=cv2.INTER_AREA)
        preprocess(_hand(200, k), cfg)
    out = prepare(spec, tmp_path / "cache", cfg, workers=2, progress=False)
    cache = open_cache(out)
    assert cache.images.shape == (24, 64, 64) and cache.images.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    assert cache.config == cfg and cache.meta["status"] == "complete"
    m = cache.manifest
    assert m["cache_index"].tolist() == list(range(24)) and m["patient_id"].iloc[2] == "p1"
    assert m.attrs["source"] == spec
    for i in (0, 7, 23):
        row = m.iloc[i]
        np.testing.assert_array_equal(
            cache.images[row["cache_index"]], _expected(row["image"], cfg)
        )
        _, t = preprocess(read_radiograph(row["image"]), cfg, return_transform=True)
        assert cache.transform(row["cache_index"]) == t
    np.testing.assert_array_equal(cache.batch([5, 1, 5]), cache.images[[5, 1, 5]])

    stamps = {f: (out / f).stat().st_mtime_ns for f in ("images.npy", "meta.json", "manifest.csv")}
    t0 = time.perf_counter()
    assert prepare(spec, out, cfg, workers=2, progress=False) == out
    assert time.perf_counter() - t0 < 5
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps  # nothing rewritten


def test_only_changed_images_are_redone_and_new_config_rebuilds(tmp_path: Path) -> None:
    spec = _csv_source(tmp_path / "src", 10)
    cfg = PreprocessConfig(size=48)
    out = prepare(spec, tmp_path / "c", cfg, workers=1, progress=False)
    imgs = np.load(out / "images.npy", mmap_mode="r+")
    imgs[3] = 0  # a row nobody recomputes stays as it is: proof it is not redone
    imgs.flush()
    del imgs
    changed = tmp_path / "src" / "h005.png"
    time.sleep(0.01)
    Image.fromarray(_hand(96, 99)).save(changed)
    prepare(spec, out, cfg, workers=1, progress=False)
    cache = open_cache(out)
    assert cache.images[3].max() == 0
    np.testing.assert_array_equal(cache.images[5], _expected(str(changed), cfg))

    prepare(spec, out, PreprocessConfig(size=32, clahe=True), workers=1, progress=False)
    cache = open_cache(out)
    assert cache.images.shape == (10, 32, 32) and cache.config.clahe
    assert cache.images[3].max() > 0


def test_labels_change_rewrites_only_the_manifest(tmp_path: Path) -> None:
    spec = _csv_source(tmp_path / "src", 6)
    out = prepare(spec, tmp_path / "c", PreprocessConfig(size=32), workers=1, progress=False)
    before = (out / "images.npy").stat().st_mtime_ns
    m = pd.read_csv(tmp_path / "src" / "m.csv")
    m.loc[0, "svdh"] = 42
    m.to_csv(tmp_path / "src" / "m.csv", index=False)
    prepare(spec, out, PreprocessConfig(size=32), workers=1, progress=False)
    assert open_cache(out).manifest["svdh"].iloc[0] == 42
    assert (out / "images.npy").stat().st_mtime_ns == before


def test_bad_images_listed_after_the_rest_then_skipped_or_fixed(tmp_path: Path) -> None:
    spec = _csv_source(tmp_path / "src", 20)
    bad = tmp_path / "src" / "h004.png"
    bad.write_bytes(b"not a png at all")
    (tmp_path / "src" / "h011.png").write_bytes(bad.read_bytes()[:0])
    cfg = PreprocessConfig(size=32)
    with pytest.raises(BadDatasetError) as err:
        prepare(spec, tmp_path / "c", cfg, workers=2, progress=False)
    msg = str(err.value)
    assert "2 image(s) could not be prepared" in msg and "h004.png: not an image" in msg
    assert "h011.png: the file is empty" in msg and "--skip-invalid" in msg
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["status"] == "building" and sorted(meta["failed"]) == ["11", "4"]
    with pytest.raises(BadDatasetError, match="incomplete"):
        open_cache(tmp_path / "c")
    keys = np.load(tmp_path / "c" / "keys.npy")
    assert (keys != 0).sum() == 18  # every good image is done and kept

    prepare(spec, tmp_path / "c", cfg, workers=2, progress=False, skip_invalid=True)
    cache = open_cache(tmp_path / "c")
    assert len(cache) == 18 and 4 not in set(cache.manifest["cache_index"])
    assert cache.manifest["image_id"].tolist()[4] == "h005"

    Image.fromarray(_hand(96, 4)).save(bad)
    Image.fromarray(_hand(96, 11)).save(tmp_path / "src" / "h011.png")
    prepare(spec, tmp_path / "c", cfg, workers=2, progress=False)
    cache = open_cache(tmp_path / "c")
    assert len(cache) == 20 and cache.meta["failed"] == {}
    np.testing.assert_array_equal(cache.images[4], _expected(str(bad), cfg))


_KILL_SCRIPT = """
import sys
from svdh.data.cache import prepare
from svdh.core.preprocess import PreprocessConfig
prepare(sys.argv[1], sys.argv[2], PreprocessConfig(size=64), workers=1, progress=False)
"""


def test_resumes_after_kill_9(tmp_path: Path) -> None:
    spec = _csv_source(tmp_path / "src", 160, size=256)
    out = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, spec, str(out)], env=env)
    keys_path = out / "keys.npy"
    partial = False
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            if keys_path.exists():
                try:
                    done = int((np.load(keys_path, mmap_mode="r") != 0).sum())
                except ValueError:  # header being written
                    done = 0
                if 0 < done < 160:
                    proc.send_signal(signal.SIGKILL)
                    partial = True
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not partial:
        pytest.skip("prepare finished before it could be killed (machine too fast)")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "building"
    with pytest.raises(BadDatasetError, match="incomplete"):
        open_cache(out)
    keys = np.load(keys_path)
    finished = int(np.flatnonzero(keys)[0])
    imgs = np.load(out / "images.npy", mmap_mode="r+")
    imgs[finished] = 7  # mark a finished row: resuming must not redo it
    imgs.flush()
    del imgs
    prepare(spec, out, PreprocessConfig(size=64), workers=2, progress=False)
    cache = open_cache(out)
    assert len(cache) == 160 and (cache.images[finished] == 7).all()
    cfg = PreprocessConfig(size=64)
    for i in (int(np.flatnonzero(keys == 0)[0]), 159):  # rows done after the resume
        np.testing.assert_array_equal(
            cache.images[i], _expected(cache.manifest["image"].iloc[i], cfg)
        )


def test_dataframe_input_and_ensure_cache(tmp_path: Path) -> None:
    spec = _csv_source(tmp_path / "src", 6)
    df = load_source(spec)
    out = prepare(df, tmp_path / "from_df", PreprocessConfig(size=32), workers=1, progress=False)
    assert open_cache(out).meta["source"] == spec
    bare = pd.DataFrame({"image": df["image"]})  # the least a manifest can be
    cache = open_cache(
        prepare(bare, tmp_path / "bare", PreprocessConfig(size=32), workers=1, progress=False)
    )
    assert cache.manifest["image_id"].tolist()[:2] == ["h000", "h001"]

    c1 = ensure_cache(spec, 40, tmp_path / "root", workers=1, progress=False)
    c2 = ensure_cache(spec, 40, tmp_path / "root", workers=1, progress=False)
    assert (
        c1.path == c2.path
        and c1.path.parent == tmp_path / "root"
        and c1.images.shape == (6, 40, 40)
    )
    c3 = ensure_cache(spec, 40, tmp_path / "root", clahe=True, workers=1, progress=False)
    assert c3.path != c1.path and c3.config.clahe


def test_refuses_foreign_folders_and_reports_damage(tmp_path: Path) -> None:
    spec = _csv_source(tmp_path / "src", 3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("precious")
    with pytest.raises(BadConfigError, match="not empty and holds no svdh cache"):
        prepare(spec, tmp_path / "mine", PreprocessConfig(size=32), progress=False)
    with pytest.raises(BadDatasetError, match="not a svdh cache"):
        open_cache(tmp_path / "mine")
    with pytest.raises(BadConfigError, match="--workers"):
        prepare(spec, tmp_path / "w", PreprocessConfig(size=32), workers=0, progress=False)


@pytest.mark.real_data
def test_cache_of_the_ra2_dream_sample(ra2_dream_dir: Path, tmp_path: Path) -> None:
    cache = ensure_cache(f"ra2-dream:{ra2_dream_dir}", 64, tmp_path, workers=1, progress=False)
    assert cache.images.shape == (6, 64, 64)
    assert cache.manifest.groupby("patient_id")["patient_svdh"].first().to_dict() == {
        "UAB001": 39,
        "UAB002": 2,
        "UAB003": 0,
    }
    assert all(30 < cache.images[i].mean() < 200 for i in range(6))


# --------------------------------------------------------------------------- both-hands films


def test_csv_both_hands_film_rows_for_canonical_training(tmp_path: Path) -> None:
    """Two rows of one image, side L and R, are the hands of a both-hands film for canonical
    training (each its own score); a both-hands film with a patient total only is refused
    there, naming its row; without canonical training everything reads as before."""
    for name in ("bh.png", "p2.png"):
        Image.fromarray(_hand(96, 0)).save(tmp_path / name)
    (tmp_path / "m.csv").write_text(
        "image,patient_id,svdh,erosion,jsn,side\n"
        "bh.png,p1,5,3,2,L\n"
        "bh.png,p1,7,4,3,R\n"
        "p2.png,p2,40,,,both\n"
    )
    spec = f"csv:{tmp_path / 'm.csv'}"
    with pytest.raises(BadDatasetError) as exc:
        load_source(spec, split_both_hands=True)
    msg = str(exc.value)
    assert "1 problem(s)" in msg and "m.csv row 4 (p2.png): a both-hands film with a patient" in msg
    df = load_source(spec, skip_invalid=True, split_both_hands=True)
    assert df["image_id"].tolist() == ["bh:L", "bh:R"]
    assert df["film_side"].tolist() == ["both", "both"] and df["side"].tolist() == ["L", "R"]
    assert df["svdh"].tolist() == [5, 7] and df["patient_svdh"].tolist() == [12, 12]
    assert set(df["score_scope"]) == {"hand"}
    # as before without it: one image twice is a duplicate, now with a hint
    with pytest.raises(
        BadDatasetError,
        match=r"row 3 \(bh.png\): duplicate image \(first on row 2\); rows of one image with side L and R",
    ):
        load_source(spec)
    plain = load_source(spec, skip_invalid=True)
    assert plain["image_id"].tolist() == ["bh", "p2"] and (plain["film_side"] == "").all()


def test_canonical_cache_stores_the_film_to_input_map(tmp_path: Path) -> None:
    """A canonical cache keeps, per row, the map from the film to the hand's pixels: film
    points land where prediction's ModelInput puts them (the crop transform alone does not)."""
    from svdh.core.canonical import model_inputs
    from svdh.synth import quantize, render_hand
    from svdh.synth.cohort import write_png

    img = render_hand(seed=1, index=0, side="L", size=160)
    turned = np.ascontiguousarray(np.rot90(img.image, 1))
    write_png(tmp_path / "a.png", quantize(turned))
    (tmp_path / "m.csv").write_text("image,patient_id,svdh,side\na.png,p,0,L\n")
    cfg = PreprocessConfig(size=64, canonical=True)
    cache = ensure_cache(f"csv:{tmp_path / 'm.csv'}", 64, tmp_path / "c", cfg=cfg, workers=1,
                         progress=False)  # fmt: skip
    (mi,) = model_inputs(read_radiograph(tmp_path / "a.png"), cfg)
    pts = np.array([[20.0, 30.0], [100.0, 80.0], [60.0, 140.0]])
    assert np.allclose(cache.film_to_input(0, pts), mi.film_to_input(pts), atol=1e-9)
    assert not np.allclose(cache.transform(0).map_points(pts), mi.film_to_input(pts), atol=2)
    plain = ensure_cache(f"csv:{tmp_path / 'm.csv'}", 64, tmp_path / "c", workers=1, progress=False)
    assert np.array_equal(np.asarray(plain.matrix[0]).reshape(2, 3), np.eye(2, 3))
    assert np.allclose(plain.film_to_input(0, pts), plain.transform(0).map_points(pts))


def test_ra2_dream_visits_both_hands_film_gives_each_hand_its_scores(tmp_path: Path) -> None:
    from svdh.synth.visits import generate_visits

    root = tmp_path / "v"
    generate_visits(root, n=1, visits=2, size=96, seed=3)
    per_hand = load_source(f"ra2-dream:{root}").set_index("image_id")
    films = sorted(root.glob("*-V1-LH.png"))
    (pid,) = {f.name.split("-V1-")[0] for f in films}
    (root / f"{pid}-V1-LH.png").rename(root / f"{pid}-V1-BH.png")  # visit 1 on one film
    (root / f"{pid}-V1-RH.png").unlink()
    whole = load_source(f"ra2-dream:{root}").set_index("image_id")
    assert whole.loc[f"{pid}-V1-BH", "side"] == "both"
    split = load_source(f"ra2-dream:{root}", split_both_hands=True).set_index("image_id")
    for side in ("L", "R"):
        row, truth = split.loc[f"{pid}-V1-BH:{side}"], per_hand.loc[f"{pid}-V1-{side}H"]
        assert (row["side"], row["film_side"], row["score_scope"]) == (side, "both", "hand")
        assert (
            row[["svdh", "erosion", "jsn", "patient_svdh"]].tolist()
            == truth[["svdh", "erosion", "jsn", "patient_svdh"]].tolist()
        )
        assert row["visit"] == "1" and row["image"].endswith(f"{pid}-V1-BH.png")
    assert f"{pid}-V2-LH" in split.index and split.attrs["n_unlinked"] == 0


def test_the_two_rows_of_a_both_hands_film_read_and_turn_it_once(tmp_path, monkeypatch) -> None:
    import svdh.core.canonical as canonical
    import svdh.core.io as io
    from svdh.synth import quantize, render_hand
    from svdh.synth.cohort import write_png

    write_png(
        tmp_path / "P1-BH.png", quantize(render_hand(seed=3, index=1, side="B", size=192).image)
    )
    rows = [
        {"image": str(tmp_path / "P1-BH.png"), "image_id": f"P1-BH:{sd}", "patient_id": "P1",
         "side": sd, "svdh": 1.0, "film_side": "both"}
        for sd in ("L", "R")
    ]  # fmt: skip
    calls = {"read": 0, "canonical": 0}
    real_read, real_inputs = io.read_radiograph, canonical.model_inputs

    def read(*a, **k):
        calls["read"] += 1
        return real_read(*a, **k)

    def inputs(*a, **k):
        calls["canonical"] += 1
        return real_inputs(*a, **k)

    monkeypatch.setattr(io, "read_radiograph", read)
    monkeypatch.setattr(canonical, "model_inputs", inputs)
    cfg = PreprocessConfig(size=64, canonical=True)
    cache = open_cache(prepare(pd.DataFrame(rows), tmp_path / "c", cfg, workers=1, progress=False))
    assert calls == {"read": 1, "canonical": 1}
    assert len(cache) == 2 and not np.array_equal(cache.images[0], cache.images[1])
