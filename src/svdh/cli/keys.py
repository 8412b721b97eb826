"""``svdh keygen``: an Ed25519 key pair for signing bundles (``svdh export --sign``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

#: ``--trust`` of svdh predict and svdh serve.
TRUST_OPTION: Any = typer.Option(
    [],
    "--trust",
    help="Public key (.pub of svdh keygen) whose signature the bundle must carry; repeat "
    "for several. Without it, the bundle's origin is not checked (and the command says so).",
)


def trusted_bundle(model: Path, trust: list[Path]) -> Any:
    """Load ``model``, its signature checked against the ``trust`` keys; say the outcome in one
    line on stderr (unsigned, signed but unverified, or verified)."""
    from svdh.inference.bundle import load_bundle
    from svdh.inference.signing import load_public_keys

    bundle = load_bundle(model, trusted_keys=load_public_keys(trust) if trust else None)
    typer.secho(bundle.signature_status, err=True, fg=None if trust else typer.colors.YELLOW)
    return bundle


def keygen(
    path: Path = typer.Argument(
        ..., help="Private key file to write (mode 600); the public key goes to PATH.pub."
    ),
) -> None:
    """Make a key pair to sign model bundles with: svdh export --sign PATH, then give PATH.pub
    to whoever scores with the bundle: svdh predict/serve --trust PATH.pub.

    Keep the private key to yourself; anyone holding it can sign bundles in your name.
    """
    from svdh.inference.signing import generate_keypair

    priv, pub, kid = generate_keypair(path)
    typer.echo(f"wrote {priv} (private, mode 600) and {pub} (public); key id {kid}")


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)
