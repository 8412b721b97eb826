"""The command line as a whole: version, --help on every command, one-line errors, docs."""

import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from svdh import __version__
from svdh.cli.main import app

ROOT = Path(__file__).resolve().parents[1]


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        yield path
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path)


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_version():
    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"svdh {__version__}"


def test_every_pipeline_stage_has_its_command():
    names = {" ".join(c) for c in COMMANDS}
    for needed in (
        "data inspect",
        "prepare",
        "synth",
        "pretrain",
        "train",
        "ensemble",
        "evaluate",
        "report",
        "compare",
        "export",
        "predict",
        "serve",
        "run",
        "demo",
    ):
        assert needed in names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_on_every_command(command):
    out = CliRunner().invoke(app, [*command, "--help"])
    assert out.exit_code == 0, out.output
    assert "Usage" in out.output


def test_user_errors_are_one_line_without_traceback(tmp_path):
    # the real entry point, as a user runs it
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from svdh.cli.main import main; main()",
            "data",
            "inspect",
            f"ra2-dream:{tmp_path / 'nowhere'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("error:") and "nowhere" in err
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1


def test_cli_reference_lists_every_command():
    doc = (ROOT / "docs" / "cli.md").read_text()
    for command in COMMANDS:
        assert f"svdh {' '.join(command)}" in doc, f"docs/cli.md lacks 'svdh {' '.join(command)}'"


def test_bad_option_value_is_a_usage_error_not_a_traceback():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from svdh.cli.main import main; main()",
            "evaluate",
            "x",
            "--format",
            "xml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Invalid value for '--format'" in proc.stderr and "Traceback" not in proc.stderr
