"""Issue 14 items 3, 14, 16 (bundles): signatures, one schema for crafted files, a full disk.

Bundles here are tiny (one member, two "fold models" of a few tensors) and written with
save_bundle, then edited the way an attacker or a damaged disk would.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from svdh.core.errors import BadBundleError, OutOfSpaceError
from svdh.core.scoring import SeverityBins
from svdh.inference import signing
from svdh.inference.bundle import Member, load_bundle, save_bundle


def _bundle(path: Path, **kw) -> Path:
    member = Member(
        name="m",
        arch={"backbone": "resnet18", "task": "regression"},
        state_dicts=[{"w": torch.ones(3)}, {"w": torch.zeros(3)}],
    )
    return save_bundle(
        path,
        [member],
        task="regression",
        bins=SeverityBins.default("hand")
        if hasattr(SeverityBins, "default")
        else SeverityBins((1, 5, 10, 20, 40, 80), 140.0),
        preprocess={"size": 64},
        conformal={
            "alpha": 0.1,
            "level": 0.9,
            "method": "absolute",
            "n": 40,
            "q": 5.0,
            "strata": [],
            "bins": None,
            "max_score": 140.0,
        },
        **kw,
    )


def _rewrite(path: Path, out: Path, edit) -> Path:
    """Rewrite the safetensors header through ``edit(header)`` (data bytes unchanged)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    return out


def _manifest_edit(change):
    def edit(header):
        m = json.loads(header["__metadata__"]["manifest"])
        m = change(m)
        header["__metadata__"]["manifest"] = json.dumps(m)

    return edit


CRAFTED = {
    "offsets-text": lambda h: h["m0.f0.w"].update(data_offsets="ab"),
    "offsets-short": lambda h: h["m0.f0.w"].update(data_offsets=[0]),
    "metadata-object": lambda h: h["__metadata__"].update(manifest={"a": 1}),
    "version-word": _manifest_edit(lambda m: {**m, "format_version": "one"}),
    "version-null": _manifest_edit(lambda m: {**m, "format_version": None}),
    "no-arch": _manifest_edit(
        lambda m: {**m, "members": [{k: v for k, v in m["members"][0].items() if k != "arch"}]}
    ),
    "bad-bins": _manifest_edit(lambda m: {**m, "bins": {"edges": "x", "max_score": -1}}),
    "members-text": _manifest_edit(lambda m: {**m, "members": "abc"}),
    "n-models-word": _manifest_edit(
        lambda m: {**m, "members": [{**m["members"][0], "n_models": "two"}]}
    ),
    "manifest-list": _manifest_edit(lambda m: [m]),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_bundles_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    good = _bundle(tmp_path / "good.svdh")
    bad = _rewrite(good, tmp_path / f"{case}.svdh", CRAFTED[case])
    with pytest.raises(BadBundleError) as info:
        load_bundle(bad, verify=False)
    msg = str(info.value)
    assert "\n" not in msg and f"{case}.svdh" in msg
    assert "bug" not in msg and "internal" not in msg


def test_an_exported_bundle_validates(tmp_path: Path) -> None:
    b = load_bundle(_bundle(tmp_path / "good.svdh"))
    assert b.manifest["members"][0]["n_models"] == 2


def test_signed_bundle_verifies_and_a_tampered_one_is_refused(tmp_path: Path) -> None:
    priv, pub, kid = signing.generate_keypair(tmp_path / "k")
    path = _bundle(tmp_path / "signed.svdh", sign_key=priv)
    trusted = signing.load_public_keys([pub])
    assert load_bundle(path, trusted_keys=trusted).signature_status.endswith("verified")

    def zero_quantile(m):
        m["conformal"]["q"] = 0.0  # the tampering of the issue: a [11.2, 11.2] interval
        return m

    # The attacker recomputes the checksum too: only the signature catches it.
    tampered = _rewrite(path, tmp_path / "t.svdh", _manifest_edit(zero_quantile))
    from svdh.inference import bundle as bmod

    def fix_checksum(h):
        tensors = load_bundle(tampered, verify=False).tensors
        h["__metadata__"]["sha256"] = bmod._digest(h["__metadata__"]["manifest"], tensors)

    tampered = _rewrite(tampered, tmp_path / "t2.svdh", fix_checksum)
    load_bundle(tampered)  # the checksum alone is satisfied
    with pytest.raises(BadBundleError, match="BAD SIGNATURE"):
        load_bundle(tampered, trusted_keys=trusted)
    unsigned = _bundle(tmp_path / "u.svdh")
    with pytest.raises(BadBundleError, match="unsigned"):
        load_bundle(unsigned, trusted_keys=trusted)
    assert "unsigned" in load_bundle(unsigned).signature_status


def test_disk_full_during_export_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*a, **k):  # what safetensors raises on a full disk (seen on a 1 MB tmpfs)
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OutOfSpaceError, match="no space left"):
        _bundle(tmp_path / "full.svdh")
    assert list(tmp_path.iterdir()) == []
