"""``svdh data inspect`` and ``svdh prepare``: thin wrappers over ``svdh.data``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import typer

from svdh.core.preprocess import PreprocessConfig

_PP = PreprocessConfig()  # option defaults: the preprocessing defaults, declared once
_SOURCE_HELP = (
    "Data source: ra2-dream:DIR, rsna-boneage:DIR or csv:FILE (a bare path is recognised)."
)


def _quiet_data_log() -> None:
    # Problems are printed by the commands themselves, once, in their own words.
    logging.getLogger("svdh.data").setLevel(logging.ERROR)


def inspect(
    source: str = typer.Argument(..., help=_SOURCE_HELP),
    format: str = typer.Option(
        "table", "--format", "-f", help="table (for people) or json (one object on stdout)."
    ),
    sheet: Path | None = typer.Option(
        None, "--sheet", help="Also write a contact sheet PNG of raw and preprocessed images."
    ),
    sheet_max: int = typer.Option(
        48, help="Most images on the contact sheet (spread over the score or age range)."
    ),
    tile: int = typer.Option(192, help="Pixel size of each image on the contact sheet."),
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Rows with problems are reported and left out, without failing.",
    ),
    check_images: bool = typer.Option(
        False,
        "--check-images",
        help="Also decode every image and report those that cannot be read.",
    ),
) -> None:
    """Count images and patients, show the score or age distribution and every problem.

    Problems (missing images, duplicate ids, NaN or out-of-range labels) are all listed;
    the command then fails unless --skip-invalid. --format json prints one JSON object
    with n_images, n_patients and rows (image, patient_id, side and the targets).
    """
    from svdh.core.errors import BadConfigError, BadDatasetError
    from svdh.data import load_source
    from svdh.data.inspect import contact_sheet, summarize

    if format not in ("table", "json"):
        raise BadConfigError(f"--format must be table or json, got {format!r}")
    _quiet_data_log()
    df = load_source(source, skip_invalid=True)
    unreadable = _check_images(df["image"].tolist()) if check_images else []
    summary = summarize(df)
    if check_images:
        summary["problems"] += unreadable
        summary["n_unreadable_images"] = len(unreadable)
    if sheet is not None:
        path = contact_sheet(df, sheet, tile=tile, max_images=sheet_max)
        summary["sheet"] = str(path)
    if format == "json":
        typer.echo(json.dumps(summary, indent=1))
    else:
        _print_table(summary)
    if summary["problems"] and not skip_invalid:
        raise BadDatasetError(
            f"{summary['source']}: {len(summary['problems'])} problem(s) found (listed above); "
            "fix them or pass --skip-invalid to leave those rows out"
        )


def prepare(
    source: str = typer.Argument(..., help=_SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to create, finish or reuse."),
    size: int = typer.Option(
        _PP.size, "--size", help="Side of the square preprocessed images, in pixels."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Worker processes (default: CPU cores, at most 8)."
    ),
    clahe: bool = typer.Option(
        False,
        "--clahe",
        help="Contrast-limited adaptive histogram equalisation after resizing.",
    ),
    margin: float = typer.Option(
        _PP.margin, help="Margin around the detected hand, as a fraction of its longer side."
    ),
    no_crop: bool = typer.Option(
        False, "--no-crop", help="Keep the whole film (pad and resize only)."
    ),
    canonical: bool = typer.Option(
        True,
        "--canonical/--no-canonical",
        help="Turn every hand fingers-up as a left-hand PA view, as `svdh train` does by "
        "default (--no-canonical: the film as given, for `svdh train --no-canonical`).",
    ),
    skip_invalid: bool = typer.Option(
        False,
        "--skip-invalid",
        help="Leave out rows and images with problems (warned and counted) instead of failing.",
    ),
    max_pixels: int | None = typer.Option(
        None, help="Refuse images with more pixels than this (default 64 million)."
    ),
) -> None:
    """Decode and preprocess every image once into a memory-mapped cache for training.

    Runs in parallel worker processes with a progress bar. Rerunning with the same
    inputs and options does nothing; after an interruption it continues where it
    stopped; changed options rebuild the cache.
    """
    from svdh.core.preprocess import PreprocessConfig
    from svdh.data import load_source
    from svdh.data.cache import prepare as build

    _quiet_data_log()
    cfg = PreprocessConfig(
        size=size, crop=not no_crop, margin=margin, clahe=clahe, canonical=canonical
    )
    df = load_source(source, skip_invalid=skip_invalid, split_both_hands=canonical)
    if df.attrs.get("n_skipped"):
        _warn(
            f"skipped {df.attrs['n_skipped']} row(s) with problems: "
            + "; ".join(df.attrs["problems"][:5])
            + (
                f"; and {len(df.attrs['problems']) - 5} more"
                if len(df.attrs["problems"]) > 5
                else ""
            )
        )
    meta_path = Path(out) / "meta.json"
    before = meta_path.read_text() if meta_path.is_file() else None
    t0 = time.perf_counter()
    path = build(df, out, cfg, workers, skip_invalid=skip_invalid, max_pixels=max_pixels)
    dt = time.perf_counter() - t0
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("failed"):
        left = list(meta["failed"].values())
        _warn(
            f"left out {len(left)} image(s) that could not be read: "
            + "; ".join(f"{Path(v.get('image', '?')).name}: {v['error']}" for v in left[:5])
            + (f"; and {len(left) - 5} more (all in {path / 'meta.json'})" if len(left) > 5 else "")
        )
    if before is not None and (path / "meta.json").read_text() == before:
        typer.echo(f"cache up to date: {meta['n_images']} images at {size} px in {path}")
    else:
        typer.echo(f"prepared {meta['n_images']} images at {size} px in {path} ({dt:.1f} s)")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        help="Look at data sources before training on them.", no_args_is_help=True
    )
    app.add_typer(data_app, name="data")

    data_app.command("inspect")(inspect)
    app.command("prepare")(prepare)


def _check_images(paths: list[str]) -> list[str]:
    """Decode every image; one problem line per image that cannot be read."""
    from rich.console import Console
    from rich.progress import Progress

    from svdh.core.errors import BadRadiographError
    from svdh.core.io import read_radiograph

    problems = []
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("decoding", total=len(paths))
        for p in paths:
            try:
                read_radiograph(p)
            except BadRadiographError as exc:
                problems.append(str(exc))
            bar.advance(task)
    return problems


def _warn(msg: str) -> None:
    typer.secho(f"warning: {msg}", err=True, fg=typer.colors.YELLOW)


def _print_table(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    head = Table(show_header=False)
    head.add_row("source", s["source"])
    head.add_row("images", str(s["n_images"]))
    head.add_row("patients", str(s["n_patients"]))
    head.add_row("sides", ", ".join(f"{k}: {v}" for k, v in s["sides"].items()))
    if "male_fraction" in s:
        head.add_row("male", f"{s['male_fraction']:.0%}")
    if s.get("n_unlinked_images"):
        head.add_row("images without a label row", str(s["n_unlinked_images"]))
    if s.get("sheet"):
        head.add_row("contact sheet", s["sheet"])
    con.print(head)
    if s["distribution"]:
        t = Table(title="targets", title_justify="left")
        for c in ("target", "n", "min", "median", "mean", "max"):
            t.add_column(c, justify="right" if c != "target" else "left")
        for name, d in s["distribution"].items():
            t.add_row(name, *(str(d[k]) for k in ("n", "min", "median", "mean", "max")))
        con.print(t)
    for scope, counts in s.get("severity_classes", {}).items():
        t = Table(title=f"severity classes ({scope} scores)", title_justify="left")
        for label in counts:
            t.add_column(label, justify="right")
        t.add_row(*(str(v) for v in counts.values()))
        con.print(t)
    if "boneage_years" in s:
        t = Table(title="bone age", title_justify="left")
        t.add_column("years", justify="right")
        t.add_column("images", justify="right")
        t.add_column("")
        top = max(s["boneage_years"].values()) or 1
        for y, v in s["boneage_years"].items():
            t.add_row(y, str(v), "█" * round(30 * v / top))
        con.print(t)
    if s["problems"]:
        con.print(
            f"[bold red]{len(s['problems'])} problem(s)[/] ({s['n_skipped']} row(s) left out):"
        )
        for p in s["problems"]:
            con.print(f"  - {p}", markup=False, highlight=False)
    else:
        con.print("[green]no problems found[/]")
