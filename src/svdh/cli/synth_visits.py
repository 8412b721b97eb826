"""``svdh synth --visits K``: the phantom cohort followed over visits (thin: svdh.synth.visits)."""

from __future__ import annotations

from pathlib import Path

import typer

VISITS = typer.Option(
    1,
    "--visits",
    help="RA: film each patient at K yearly visits; damage never heals and grows "
    "at patient-specific rates (some patients stable). Writes visit and date columns.",
)
PROGRESSION_RATE = typer.Option(
    6.0,
    "--progression-rate",
    help="With --visits: mean yearly change (0-280 scale) of the progressing patients.",
)
REPEAT = typer.Option(
    False,
    "--repeat",
    help="With --visits: film every visit twice (no true change between the films), "
    "to measure the model's own smallest detectable change.",
)
#: The ``svdh synth`` arguments :func:`run_visits` takes.
VISIT_ARGS = (
    "out", "n", "size", "seed", "mode", "severity", "fmt", "bits", "workers", "dual_hand",
    "visits", "progression_rate", "repeat",
)  # fmt: skip


def run_visits(
    out: Path,
    n: int,
    size: int,
    seed: int,
    mode: str,
    severity: str,
    fmt: str,
    bits: int,
    workers: int,
    dual_hand: bool,
    visits: int,
    progression_rate: float,
    repeat: bool,
) -> None:
    """Write the visit cohort with a progress bar and say what was written."""
    import numpy as np
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from svdh.core.errors import BadConfigError
    from svdh.synth.visits import VISITS_CSV, generate_visits

    if mode != "ra":
        raise BadConfigError("--visits and --repeat apply to RA mode only")
    if dual_hand:
        raise BadConfigError("--visits writes one film per hand; leave out --dual-hand")
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("synth", total=n)
        summary = generate_visits(
            out,
            n,
            visits=visits,
            progression_rate=progression_rate,
            repeat=repeat,
            size=size,
            seed=seed,
            severity=severity,
            fmt=fmt,
            bits=bits,
            workers=workers,
            progress=lambda k: bar.update(task, completed=k),
        )
    change = np.asarray(summary.totals, float)
    typer.echo(
        f"{summary.n_images} films of {n} patients at {visits} visit(s) in {out}; "
        f"change first to last visit (0-280): median {np.median(change):g}, max {change.max():g}, "
        f"{int((change == 0).sum())} without change"
    )
    typer.echo(f"labels: {summary.labels_csv} and {out / VISITS_CSV}")
    typer.echo(f"load it as: ra2-dream:{out}  or  csv:{out / VISITS_CSV}")
