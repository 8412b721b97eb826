"""Issue 14 item 3 (module level): Ed25519 signing of bundle digests."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from svdh.core.errors import BadBundleError, BadConfigError
from svdh.inference import signing


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path, str]:
    return signing.generate_keypair(tmp_path / "team.key")


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys) -> None:
    priv, pub, kid = keys
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert pub.name == "team.key.pub" and len(kid) == 16
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(BadConfigError, match="exists already"):
        signing.generate_keypair(priv)


def test_a_signed_digest_verifies_and_any_change_is_refused(keys, tmp_path: Path) -> None:
    priv, pub, kid = keys
    digest = hashlib.sha256(b"weights and manifest").hexdigest()
    meta = signing.sign(signing.load_private_key(priv), digest)
    trusted = signing.load_public_keys([pub])
    assert signing.check("b.svdh", meta, digest, trusted) == (
        f"b.svdh: signature by trusted key {kid} verified"
    )
    tampered = hashlib.sha256(b"quantiles set to 0").hexdigest()
    with pytest.raises(BadBundleError, match=r"b\.svdh: BAD SIGNATURE"):
        signing.check("b.svdh", meta, tampered, trusted)
    other = signing.load_public_keys([signing.generate_keypair(tmp_path / "other.key")[1]])
    with pytest.raises(BadBundleError, match="not among the trusted keys"):
        signing.check("b.svdh", meta, digest, other)
    with pytest.raises(BadBundleError, match="unsigned, and --trust requires"):
        signing.check("b.svdh", {}, digest, trusted)
    with pytest.raises(BadBundleError, match="not valid base64"):
        signing.check("b.svdh", {**meta, "signature": "!!"}, digest, trusted)


def test_without_trusted_keys_the_status_says_unsigned_or_unverified(keys) -> None:
    priv, _, kid = keys
    digest = "0" * 64
    assert "is unsigned" in signing.check("b.svdh", {}, digest, None)
    meta = signing.sign(signing.load_private_key(priv), digest)
    assert f"signed by key '{kid}', not verified" in signing.check("b.svdh", meta, digest, {})


def test_bad_key_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pub").write_text("hello")
    with pytest.raises(BadConfigError, match="not a PEM public key"):
        signing.load_public_keys([tmp_path / "junk.pub"])
    with pytest.raises(BadConfigError, match="cannot read"):
        signing.load_private_key(tmp_path / "missing.key")
