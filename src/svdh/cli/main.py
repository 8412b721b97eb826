"""The ``svdh`` command line: thin wrappers over the package's functions.

Each pipeline stage keeps its commands in ``svdh/commands/<stage>.py`` with a
``register(app)`` function; this module only assembles them, prints the version,
and turns :class:`svdh.core.errors.SvdhError` into a one-line message and exit code.
Heavy imports (torch) happen inside the commands, so ``svdh --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from svdh import __version__
from svdh.core.errors import SvdhError

#: Command modules under svdh.commands, in the order of the pipeline.
COMMAND_MODULES = (
    "data",
    "synth",
    "train",
    "evaluate",
    "predict",
    "keys",
    "serve",
    "experiment",
)

app = typer.Typer(
    name="svdh",
    help="Score rheumatoid-arthritis joint damage (van der Heijde-modified Sharp) on hand radiographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"svdh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Score rheumatoid-arthritis joint damage (van der Heijde-modified Sharp) on hand radiographs."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"svdh.cli.{_name}").register(app)


def main() -> None:
    """Console entry point: run the app, print user errors on one line."""
    try:
        rc = app(standalone_mode=False)
    except SvdhError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted; finished work is kept, rerun to continue", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        # Usage errors: click's ClickException, or the copy of click that newer typer vendors.
        if callable(getattr(exc, "show", None)) and isinstance(
            getattr(exc, "exit_code", None), int
        ):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("SVDH_DEBUG"):
            raise
        if isinstance(exc, OSError):  # disk full, permission denied...: the user can act on it
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            sys.exit(1)
        typer.secho(
            f"internal error: {type(exc).__name__}: {exc} "
            "(a bug in svdh; rerun with SVDH_DEBUG=1 for the traceback and report it)",
            err=True,
            fg=typer.colors.RED,
        )
        sys.exit(3)
    if isinstance(rc, int) and rc:  # without standalone mode click returns typer.Exit(code)'s code
        sys.exit(rc)
