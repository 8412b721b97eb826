"""Model bundles: round trip, never pickle, every kind of damage is a clear error, export."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from svdh.core.errors import BadBundleError, BadRunError
from svdh.core.scoring import SeverityBins
from svdh.inference.bundle import (
    FORMAT_VERSION,
    Bundle,
    Member,
    load_bundle,
    read_manifest,
    save_bundle,
)


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))


def _small_bundle(path: Path, **kw) -> Path:
    torch.manual_seed(0)
    members = [
        Member(
            "a",
            {"backbone": "toy", "task": "regression"},
            [_net().state_dict(), _net().state_dict()],
        ),
        Member("b", {"backbone": "toy", "task": "ordinal"}, [_net().state_dict()]),
    ]
    args = dict(
        task="regression",
        bins=SeverityBins.hand(),
        preprocess={"size": 32},
        image_size=32,
        conformal={"alpha": 0.1, "level": 0.9, "q": 4.0},
        card={"name": "toy"},
    )
    args.update(kw)
    return save_bundle(path, members, **args)


def test_round_trip_keeps_weights_and_manifest(tmp_path):
    p = _small_bundle(tmp_path / "m.svdh")
    b = load_bundle(p)
    assert isinstance(b, Bundle) and len(b.sha256) == 64
    assert [m["n_models"] for m in b.members] == [2, 1]
    assert b.bins == SeverityBins.hand() and b.conformal["q"] == 4.0 and b.image_size == 32
    card = b.card
    assert (
        card["name"] == "toy"
        and "created" in card
        and card["versions"]["torch"] == torch.__version__.split("+")[0]
    )
    models = b.build_models(factory=lambda **arch: _net())
    torch.manual_seed(0)
    ref = _net().state_dict()
    for k, v in ref.items():
        assert torch.equal(models[0][0].state_dict()[k], v)
    assert read_manifest(p)["format_version"] == FORMAT_VERSION
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not safetensors' 0600


def test_file_is_plain_safetensors_without_pickle(tmp_path):
    p = _small_bundle(tmp_path / "m.svdh")
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["format"] == "svdh-bundle"
    assert all(v["dtype"] in ("F32", "I64") for k, v in header.items() if k != "__metadata__")
    # a pickle (torch.save) renamed to .svdh is refused before anything is unpickled
    torch.save({"x": torch.zeros(2)}, tmp_path / "evil.svdh")
    with pytest.raises(BadBundleError, match="not an svdh bundle"):
        load_bundle(tmp_path / "evil.svdh")


def test_every_flipped_byte_is_detected(tmp_path):
    p = _small_bundle(tmp_path / "m.svdh")
    data = p.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    # positions in the length prefix, the JSON header (tensor index and manifest) and the weights
    positions = sorted(
        {
            0,
            3,
            9,
            8 + n // 3,
            8 + n // 2,
            8 + n - 2,
            8 + n,
            8 + n + 17,
            len(data) // 2,
            len(data) - 1,
        }
        | set(range(8 + n, len(data), max(1, (len(data) - 8 - n) // 25)))
    )
    bad = tmp_path / "bad.svdh"
    for i in positions:
        b = bytearray(data)
        b[i] ^= 0x10
        bad.write_bytes(bytes(b))
        with pytest.raises(BadBundleError) as exc:
            load_bundle(bad)
        assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_empty_missing_and_text_files(tmp_path):
    p = _small_bundle(tmp_path / "m.svdh")
    data = p.read_bytes()
    for cut in (0, 5, 100, len(data) - 1):
        t = tmp_path / f"cut{cut}.svdh"
        t.write_bytes(data[:cut])
        with pytest.raises(BadBundleError, match="truncated|empty|not an svdh"):
            load_bundle(t)
    (tmp_path / "notes.svdh").write_text("this is a text file, not a model")
    with pytest.raises(BadBundleError, match="not an svdh bundle"):
        load_bundle(tmp_path / "notes.svdh")
    with pytest.raises(BadBundleError, match="no such model bundle"):
        load_bundle(tmp_path / "absent.svdh")
    with pytest.raises(BadBundleError, match="is a directory"):
        load_bundle(tmp_path)


def _rewrite_metadata(src: Path, dst: Path, change) -> None:
    """Rewrite a bundle's metadata (keeping its tensors and its stored checksum)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    save_file(tensors, str(dst), metadata=meta)


def test_tampered_manifest_and_newer_version(tmp_path):
    p = _small_bundle(tmp_path / "m.svdh")

    def widen_interval(meta):
        m = json.loads(meta["manifest"])
        m["conformal"]["q"] = 0.1  # a narrower interval than calibrated: must not pass silently
        meta["manifest"] = json.dumps(m, sort_keys=True)

    _rewrite_metadata(p, tmp_path / "t.svdh", widen_interval)
    with pytest.raises(BadBundleError, match="checksum mismatch"):
        load_bundle(tmp_path / "t.svdh")

    def newer(meta):
        meta["format_version"] = str(FORMAT_VERSION + 1)

    _rewrite_metadata(p, tmp_path / "v.svdh", newer)
    with pytest.raises(BadBundleError, match="newer than this svdh.*upgrade"):
        load_bundle(tmp_path / "v.svdh")


def test_weights_not_matching_architecture(tmp_path):
    p = _small_bundle(tmp_path / "m.svdh")
    b = load_bundle(p)
    with pytest.raises(BadBundleError, match="does not match its architecture"):
        b.build_models(factory=lambda **arch: torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3)))


@pytest.mark.slow
def test_export_run_and_ensemble(world):
    run = load_bundle(world.run_bundle)
    assert run.manifest["kind"] == "run" and run.combine == {"method": "mean"}
    assert [m["n_models"] for m in run.members] == [2] and run.has_subscores
    assert run.members[0]["arch"]["backbone"] == "resnet18"
    card = run.card
    td = card["training_data"]
    assert (
        td["n_images"] + td["n_test_images"] == 48 and td["n_patients"] == 18 and td["n_folds"] == 2
    )
    assert card["metrics"]["n"] == td["n_images"] and card["metrics"]["rmse"] > 0
    assert {"created", "versions", "intended_use"} <= set(card)
    conf = run.conformal
    assert conf["level"] == pytest.approx(0.9) and conf["n"] == td["n_images"]
    assert run.preprocess["size"] == 64 == run.image_size

    ens = load_bundle(world.ens_bundle)
    assert ens.manifest["kind"] == "ensemble" and [m["name"] for m in ens.members] == ["reg", "ord"]
    meta = json.loads((world.ensemble / "meta_learner.json").read_text())
    assert ens.combine["meta_learner"]["score"] == meta["score"]
    assert ens.conformal == json.loads((world.ensemble / "conformal.json").read_text())
    assert ens.manifest["onnx"]["file"] == "ens.onnx"
    models = ens.build_models()
    assert [len(m) for m in models] == [2, 2]
    with torch.inference_mode():
        out = models[1][0](torch.rand(2, 1, 64, 64))
    assert out.shape == (2, SeverityBins.hand().n_classes - 1)  # CORAL logits
    assert np.isfinite(out.numpy()).all()


def test_export_refuses_what_is_not_a_run(tmp_path):
    from svdh.inference.bundle import export_bundle

    with pytest.raises(BadRunError):
        export_bundle(tmp_path, tmp_path / "m.svdh")
