"""``svdh synth``: phantom hand radiographs with known per-joint damage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from svdh.cli.synth_visits import PROGRESSION_RATE, REPEAT, VISIT_ARGS, VISITS, run_visits

# Plain strings rather than Enum choices: the package validates them and raises its own
# one-line BadConfigError (the typer in use raises a parse error the CLI cannot catch).


_FAULTS = typer.Option(
    "",
    "--faults",
    help="Film faults to add, comma-separated: rotate (quarter turns), mirror, plate "
    "(grey tilted plate on a grey bed), frame (bright collimator bands), marker (lead "
    "marker and ring), wrist (wrist-only view), cut (fingers cut off), or all. The truth "
    "is in landmarks.json (docs/film-quality.md).",
)
_FAULT_RATE = typer.Option(
    0.5, "--fault-rate", help="Probability of each fault other than rotate/mirror."
)


def synth(
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write the cohort into (new or empty)."
    ),
    n: int = typer.Option(
        10, "--n", help="Patients (RA: two hand images each) or children (one image each)."
    ),
    size: int = typer.Option(
        512, "--size", help="Image side in pixels; the field of view stays ~200-240 mm."
    ),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    mode: str = typer.Option(
        "ra",
        "--mode",
        help="ra: adult RA hands, RA2-DREAM layout; "
        "child: growing hands with bone age, RSNA Bone Age layout.",
    ),
    severity: str = typer.Option(
        "cohort",
        "--severity",
        help="RA damage distribution: cohort (many near 0, "
        "a long tail), uniform (patient totals uniform 0-280), balanced (uniform over the "
        "severity classes), healthy, severe (80-280) or fixed:N.",
    ),
    fmt: str = typer.Option("png", "--format", help="png or dicom (CR, with the usual tags)."),
    bits: int = typer.Option(
        8, "--bits", help="8 or 16 bits per pixel (16-bit PNG; 12 bits stored in DICOM)."
    ),
    workers: int = typer.Option(
        1, "--workers", help="Worker processes (the bytes do not depend on it)."
    ),
    dual_hand: bool = typer.Option(
        False,
        "--dual-hand",
        help="RA: both hands side by side in one "
        "<id>-BH image (the right hand on the image's left) instead of -LH/-RH.",
    ),
    faults: str = _FAULTS,
    fault_rate: float = _FAULT_RATE,
    monochrome1: bool = typer.Option(
        False, "--monochrome1", help="DICOM: store inverted MONOCHROME1 pixels."
    ),
    sheet: Path | None = typer.Option(
        None,
        "--sheet",
        help="Also write a contact sheet PNG of the cohort "
        "(up to 16 images, ordered by score or bone age).",
    ),
    sheet_tile: int = typer.Option(
        256, "--sheet-tile", help="Height of one contact-sheet image in pixels."
    ),
    visits: int = VISITS,
    progression_rate: float = PROGRESSION_RATE,
    repeat: bool = REPEAT,
) -> None:
    """Generate phantom hand radiographs with known per-joint SvdH damage (or bone age).

    RA mode writes training.csv (RA2-DREAM columns, hands only) beside <id>-LH and <id>-RH images, so 'ra2-dream:DIR' reads the cohort like the real data; child mode writes boneage.csv beside <id>.png like RSNA Bone Age. Both write landmarks.json with the pixel position of every scored joint and its scores, for measuring where heat maps land. See docs/synth.md.
    """
    from svdh.synth import make_sheet

    _check(fmt, monochrome1, sheet_tile)
    if visits > 1 or repeat:  # the same patients over time (svdh.synth.visits)
        return run_visits(**{k: v for k, v in locals().items() if k in VISIT_ARGS})
    summary = _generate(
        out, n=n, mode=mode, size=size, seed=seed, severity=severity, fmt=fmt, bits=bits,
        workers=workers, dual_hand=dual_hand, monochrome1=monochrome1, faults=faults,
        fault_rate=fault_rate,
    )  # fmt: skip
    typer.echo(summary.describe())
    typer.echo(f"labels: {summary.labels_csv}\nlandmarks: {summary.landmarks_json}")
    if sheet is not None:
        typer.echo(f"contact sheet: {make_sheet(out, sheet, tile=sheet_tile)}")
    source = "ra2-dream" if mode == "ra" else "rsna-boneage"
    typer.echo(f"load it as: {source}:{out}")


def _check(fmt: str, monochrome1: bool, sheet_tile: int) -> None:
    from svdh.core.errors import BadConfigError

    if monochrome1 and fmt != "dicom":
        raise BadConfigError("--monochrome1 applies to --format dicom only")
    if not 32 <= sheet_tile <= 2048:
        raise BadConfigError(f"--sheet-tile must be 32-2048 pixels, got {sheet_tile}")


def _generate(out: Path, n: int, **kw: Any) -> Any:
    """``generate_cohort`` with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from svdh.synth import generate_cohort

    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("synth", total=n)
        return generate_cohort(out, n=n, progress=lambda k: bar.update(task, completed=k), **kw)


def register(app: typer.Typer) -> None:
    app.command("synth")(synth)
