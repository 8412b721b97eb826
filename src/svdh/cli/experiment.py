"""``svdh run`` (a whole study from one YAML file) and ``svdh demo``."""

from __future__ import annotations

from pathlib import Path

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


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        experiment: Path = typer.Argument(..., help="Experiment YAML file (see configs/)."),
        profile: str = typer.Option(
            None, "--profile", help="Apply a profile of the file's 'profiles' section."
        ),
        out: Path = typer.Option(
            None, "--out", help="Output directory (default: the file's 'out')."
        ),
        check: bool = typer.Option(False, "--check", help="Only validate the file, train nothing."),
        accelerator: str = typer.Option("auto", help="cpu, gpu or auto."),
        devices: str = typer.Option("auto", help="Devices per node (e.g. 1, 4 or auto)."),
        strategy: str = typer.Option("auto", help="auto or ddp."),
        num_nodes: int = typer.Option(1, help="Machines for DDP."),
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
        runtime = {
            "accelerator": accelerator,
            "devices": devices,
            "strategy": strategy,
            "num_nodes": num_nodes,
        }
        made = Study(exp, runtime=runtime).run()
        _print_made(made, quick=False)

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
