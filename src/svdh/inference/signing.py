"""Ed25519 signatures of model bundles: who made this bundle, and was it changed since?

A bundle's SHA-256 (see :mod:`svdh.inference.bundle`) detects *corruption*: a flipped bit, a
truncated copy. Anyone who edits a bundle can recompute it, so it says nothing about *tampering*.
A signature does: ``svdh export --sign KEY`` signs the bundle's SHA-256 with a private key, and
``svdh predict/serve --trust PUBKEY`` refuses any bundle that is unsigned or signed by another
key, or whose manifest or weights changed after signing (the digest then differs).

Keys are the standard PEM files of the ``cryptography`` package (``svdh keygen`` writes them):
the private key PKCS#8 (mode 600), the public key SubjectPublicKeyInfo (``.pub``). A key id is
the first 16 hex digits of the SHA-256 of the raw 32-byte public key.

The signature lives in the bundle's metadata as ``signature`` (base64 of the 64-byte Ed25519
signature over ``b"svdh-bundle-signature-v1:" + sha256``), ``signature_alg`` (``ed25519``) and
``signature_key_id``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from svdh.core.errors import BadBundleError, BadConfigError, quote

ALG = "ed25519"
_CONTEXT = b"svdh-bundle-signature-v1:"


def _crypto() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key (what messages show)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair: ``private_path`` (mode 600) and ``private_path.pub``.

    Refuses to overwrite an existing file. Returns both paths and the key id.
    """
    from cryptography.hazmat.primitives import serialization

    priv = Path(private_path).expanduser()
    pub = priv.with_name(priv.name + ".pub")
    for p in (priv, pub):
        if p.exists():
            raise BadConfigError(f"{p} exists already; choose another name or remove it first")
    key = _crypto().Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    priv.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = key.public_key()
    pub.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv, pub, key_id(public)


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """An Ed25519 private key from a PEM file written by :func:`generate_keypair`."""
    from cryptography.hazmat.primitives import serialization

    p = Path(path).expanduser()
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except OSError as exc:
        raise BadConfigError(f"{p}: cannot read the signing key ({exc.strerror or exc})") from None
    except (ValueError, TypeError):
        raise BadConfigError(
            f"{p}: not an unencrypted PEM private key; make one with svdh keygen"
        ) from None
    if not isinstance(key, _crypto().Ed25519PrivateKey):
        raise BadConfigError(f"{p}: not an Ed25519 key; make one with svdh keygen")
    return key


def load_public_keys(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Trusted public keys by key id, from PEM files (``.pub`` of :func:`generate_keypair`)."""
    from cryptography.hazmat.primitives import serialization

    keys: dict[str, Any] = {}
    for path in paths:
        p = Path(path).expanduser()
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except OSError as exc:
            raise BadConfigError(f"{p}: cannot read the key ({exc.strerror or exc})") from None
        except (ValueError, TypeError):
            raise BadConfigError(
                f"{p}: not a PEM public key; pass the .pub file svdh keygen wrote"
            ) from None
        if not isinstance(key, _crypto().Ed25519PublicKey):
            raise BadConfigError(f"{p}: not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


def sign(private_key: Any, digest: str) -> dict[str, str]:
    """The metadata entries that sign a bundle whose SHA-256 is ``digest``."""
    signature = private_key.sign(_CONTEXT + digest.encode("ascii"))
    return {
        "signature": base64.b64encode(signature).decode("ascii"),
        "signature_alg": ALG,
        "signature_key_id": key_id(private_key.public_key()),
    }


def check(
    where: str, meta: Mapping[str, str], digest: str, trusted: Mapping[str, Any] | None
) -> str:
    """Verify a bundle's signature against ``trusted`` keys; returns a one-line status.

    With trusted keys, an unsigned bundle, an unknown key or a bad signature raises
    :class:`BadBundleError`. Without, nothing is verified and the status says so.
    """
    sig, alg, kid = meta.get("signature"), meta.get("signature_alg"), meta.get("signature_key_id")
    if not trusted:
        if not sig:
            return f"{where}: the bundle is unsigned (its origin is not verified; see --trust)"
        return (
            f"{where}: the bundle is signed by key {quote(kid)}, not verified (no --trust key "
            "given)"
        )
    if not sig:
        raise BadBundleError(
            f"{where}: the bundle is unsigned, and --trust requires a signature by one of "
            f"{', '.join(sorted(trusted))}; export it with svdh export --sign KEY"
        )
    if alg != ALG:
        raise BadBundleError(f"{where}: unsupported signature algorithm {quote(alg)}")
    key = trusted.get(str(kid))
    if key is None:
        raise BadBundleError(
            f"{where}: signed by key {quote(kid)}, which is not among the trusted keys "
            f"({', '.join(sorted(trusted))})"
        )
    try:
        raw = base64.b64decode(str(sig), validate=True)
        key.verify(raw, _CONTEXT + digest.encode("ascii"))
    except (binascii.Error, ValueError):
        raise BadBundleError(
            f"{where}: the signature is not valid base64; the file is damaged"
        ) from None
    except Exception as exc:  # cryptography's InvalidSignature
        if type(exc).__name__ != "InvalidSignature":
            raise
        raise BadBundleError(
            f"{where}: BAD SIGNATURE: the manifest or weights changed after key {kid} signed "
            "them (tampered or damaged); do not use this bundle"
        ) from None
    return f"{where}: signature by trusted key {kid} verified"
