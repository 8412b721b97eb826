"""``svdh run`` (a whole study from one YAML file) and ``svdh demo``."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer


def _print_made(made: dict[str, Path], quick: bool) -> None:
    from rich.console import Console

    c = Console(soft_wrap=True)  # commands must stay on one line to be copied
    c.print("\n[bold]Made:[/bold]")
    labels = {
        "members": "member runs",
        "final": "final model (run directory)",
        "bundle": "model bundle",
        "report": "report (open in a browser)",
    }
    for key, label in labels.items():
        if key in made:
            c.print(f"  {label:<30} {made[key]}")
    if "bundle" in made:
        data = made["final"].parent / "data" / "explain"
        target = data if data.exists() else "RADIOGRAPH_OR_FOLDER"
        c.print("\n[bold]Next:[/bold] score radiographs with the bundle, with Grad-CAM overlays:")
        c.print(f"  svdh predict --model {made['bundle']} {target} -o scores.csv --cam cams/")
        c.print(f"  svdh serve --model {made['bundle']}")
    c.print("\nPhantom results show that the pipeline works; they are not a clinical validation.")


#: ``svdh run``: the runtime settings of TrainConfig it passes to every training step.
RUNTIME: dict[str, tuple[Any, str]] = {
    "accelerator": ("auto", "cpu, gpu or auto."),
    "devices": ("auto", "Devices per node (e.g. 1, 4 or auto)."),
    "strategy": ("auto", "auto or ddp."),
    "num_nodes": (1, "Machines for DDP."),
}


def run(
    experiment: Path, profile: str | None, out: Path | None, check: bool, **runtime: Any
) -> None:
    """Run a whole study declared in one YAML file.

    Data, bone-age pretraining, ensemble members, the ensemble, export, Grad-CAM and the
    report, in order. Each finished step is skipped on re-run, so a crashed study continues.
    """
    from svdh.experiment import Study, load_experiment

    exp = load_experiment(experiment, profile=profile, out=out)
    if check:
        typer.echo(f"{experiment}: valid ({len(exp.members)} members, output {exp.out})")
        return
    made = Study(exp, runtime=runtime).run()
    _print_made(made, quick=False)


def _run_params() -> list[inspect.Parameter]:
    from svdh.cli.train import config_options

    def p(name: str, default: Any, kind: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind
        )

    return [
        p("experiment", typer.Argument(..., help="Experiment YAML file (see configs/)."), Path),
        p(
            "profile",
            typer.Option(
                None, "--profile", help="Apply a profile of the file's 'profiles' section."
            ),
            str,
        ),
        p(
            "out",
            typer.Option(None, "--out", help="Output directory (default: the file's 'out')."),
            Path,
        ),
        p(
            "check",
            typer.Option(False, "--check", help="Only validate the file, train nothing."),
            bool,
        ),
        *config_options(RUNTIME),
    ]


def register(app: typer.Typer) -> None:
    from svdh.cli.train import build_command

    app.command("run")(build_command(run, _run_params()))

    @app.command("demo")
    def demo(
        out: Path = typer.Option(
            None, "--out", help="Output directory (default runs/demo or runs/demo-quick)."
        ),
        quick: bool = typer.Option(
            False, "--quick", help="A smaller demo: under 3 minutes on a 2-core CPU."
        ),
    ) -> None:
        """Run the whole pipeline on phantom data it generates itself.

        Bone-age pretraining, ResNet and MobileNetV2 members, stacking, evaluation on held-out
        phantom patients, a model bundle, Grad-CAM and the HTML report. GPUs are used when present.
        """
        from svdh.experiment import CONFIG_DIR, Study, load_experiment

        exp = load_experiment(CONFIG_DIR / "demo.yaml", profile="quick" if quick else None, out=out)
        made = Study(exp).run()
        _print_made(made, quick=quick)
