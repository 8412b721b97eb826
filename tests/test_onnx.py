"""ONNX export and the onnxruntime inference path: parity with torch, clear errors."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from predict_world import run_cli as svdh
from svdh.core.errors import BadBundleError
from svdh.core.io import read_radiograph
from svdh.core.preprocess import PreprocessConfig, preprocess
from svdh.inference.predictor import Predictor

pytestmark = pytest.mark.slow  # the shared world trains two small runs once per session


def _images(world, n: int) -> np.ndarray:
    cfg = PreprocessConfig(size=64)
    files = sorted(world.cohort.glob("*.png"))[:n]
    return np.stack([preprocess(read_radiograph(f), cfg) for f in files])


def test_onnx_raw_outputs_match_torch(world):
    x = _images(world, 7)
    torch_p = Predictor(world.ens_bundle, backend="torch")
    onnx_p = Predictor(world.ens_bundle, backend="onnx")
    for batch in (x[:1], x):  # the batch dimension is dynamic
        t, o = torch_p.forward_raw(batch), onnx_p.forward_raw(batch)
        assert [len(m) for m in o] == [2, 2]
        for tm, om in zip(t, o, strict=True):
            for tf, of in zip(tm, om, strict=True):
                assert of.shape == tf.shape and np.std(tf) > 0
                assert np.max(np.abs(of - tf)) <= 1e-3


def test_onnx_predictions_match_torch(world):
    files = sorted(world.cohort.glob("*.png"))[:10]
    a = list(Predictor(world.ens_bundle, backend="torch", batch_size=4).predict_paths(files))
    b = list(Predictor(world.ens_bundle, backend="onnx", batch_size=4).predict_paths(files))
    for ra, rb in zip(a, b, strict=True):
        assert abs(ra["score"] - rb["score"]) <= 1e-3
        assert np.max(np.abs(np.subtract(ra["interval"], rb["interval"]))) <= 1e-3
        assert ra["severity_class"] == rb["severity_class"]
        assert abs(ra["erosion"] - rb["erosion"]) <= 1e-3


def test_onnx_graph_carries_the_manifest(world):
    import onnx

    model = onnx.load(str(world.ens_bundle.with_suffix(".onnx")))
    meta = {p.key: p.value for p in model.metadata_props}
    doc = json.loads(meta["svdh_manifest"])
    assert (
        doc["task"] == "regression" and doc["image_size"] == 64 and doc["bins"]["max_score"] == 140
    )
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["m0_f0", "m0_f1", "m1_f0", "m1_f1"]


def test_cli_predict_with_onnx(world, tmp_path):
    imgs = sorted(world.cohort.glob("SYN0000[12]-*.png"))
    out_t, out_o = tmp_path / "t.csv", tmp_path / "o.csv"
    assert svdh("predict", "--model", world.ens_bundle, *imgs, "-o", out_t).returncode == 0
    r = svdh("predict", "--model", world.ens_bundle, *imgs, "-o", out_o, "--onnx")
    assert r.returncode == 0, r.stderr
    t, o = list(csv.DictReader(out_t.open())), list(csv.DictReader(out_o.open()))
    assert len(t) == len(o) == 4
    for a, b in zip(t, o, strict=True):
        assert abs(float(a["score"]) - float(b["score"])) <= 2e-3  # CSV rounds to 3 decimals
    r = svdh("predict", "--model", world.ens_bundle, imgs[0], "--onnx", "--cam", tmp_path / "cam")
    assert r.returncode == 2 and "--cam needs gradients" in r.stderr


def test_missing_or_tampered_onnx_graph(world, tmp_path):
    shutil.copy(world.ens_bundle, tmp_path / "ens.svdh")
    with pytest.raises(BadBundleError, match="ONNX graph of ens.svdh is missing"):
        Predictor(tmp_path / "ens.svdh", backend="onnx")
    data = bytearray(world.ens_bundle.with_suffix(".onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "ens.onnx").write_bytes(bytes(data))
    with pytest.raises(BadBundleError, match="checksum differs"):
        Predictor(tmp_path / "ens.svdh", backend="onnx")
    with pytest.raises(BadBundleError, match="has no ONNX graph.*--onnx"):
        Predictor(world.run_bundle, backend="onnx")
