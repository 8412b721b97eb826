"""``svdh keygen``: an Ed25519 key pair for signing bundles (``svdh export --sign``)."""

from __future__ import annotations

from pathlib import Path

import typer


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
