"""``svdh train`` and ``svdh pretrain``: thin wrappers over ``svdh.train.train_run``.

Their options are not written here: they are derived from the fields of
:class:`svdh.train.config.TrainConfig` (default, type and ``help`` metadata), so an option is
declared once. ``pretrain`` shows a subset with bone-age defaults (:data:`PRETRAIN`).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import typer

#: ``svdh pretrain``: the TrainConfig fields it offers, with its own default and help where
#: they differ from ``svdh train``'s.
PRETRAIN: dict[str, tuple[Any, str] | None] = {
    "backbone": ("resnet18", "The backbone to pretrain (the SvdH model must use the same)."),
    "init": ("scratch", "scratch, imagenet or checkpoint:PATH."),
    # the bone-age recipe: measured on the RSNA images (docs/benchmarks.md, bone-age section)
    "epochs": (24, "Maximum epochs (24: the measured CPU recipe; more help on a GPU)."),
    "batch_size": None,
    "image_size": (96, "Side of the square preprocessed image, in pixels."),
    "margin": None,
    "clahe": None,
    "crop": None,
    "canonical": (
        True,
        "Turn every hand fingers-up as a left-hand PA view before the crop, so a rotated or "
        "mirrored film gives the same bone age (--no-canonical: the film as given).",
    ),
    "lr": (1e-3, "Base learning rate."),
    "folds": (1, "1: one train/validation split (default); K: K-fold cross-validation."),
    "val_fraction": (0.15, "Validation fraction with --folds 1."),
    "test_fraction": (0.1, "Held-out test fraction; its MAE in months is the headline figure."),
    "use_sex": (True, "Give the model the sex of the child (RSNA 'male')."),
    "loss": ("huber", "huber, mse or l1 (the MAE itself)."),
    "patience": (
        0,
        "Early-stopping patience in epochs (0: off; the best epoch is kept either way, and "
        "early epochs at the peak learning rate are too noisy to stop on).",
    ),
    "aug_strength": (0.5, "Scale of the augmentation ranges (1: svdh train's; 0.5 halves them)."),
    "aug_stretch": (
        0.3,
        "Random aspect-ratio change of up to this fraction in training, so that squashed "
        "copies and hands cropped from full films look alike to the model (0: off).",
    ),
    "seed": (0, "Seed."),
    "max_minutes": (0.0, "Wall-clock limit in minutes (0: none)."),
    "max_cpu_minutes": None,
    "accelerator": None,
    "devices": ("auto", "Devices per node."),
    "strategy": ("auto", "auto or ddp."),
    "num_nodes": (1, "Machines in distributed training."),
    "precision": ("auto", "auto, 32-true, 16-mixed, bf16-mixed."),
    "num_workers": None,
    "cache_dir": ("", "Where the preprocessed-image cache lives."),
    "cache": None,
    "skip_invalid": None,
}
PRETRAIN_FLAGS = {"use_sex": ("--use-sex/--no-sex",), "canonical": ("--canonical/--no-canonical",)}


def config_options(
    only: dict[str, tuple[Any, str] | None] | None = None,
    flags: dict[str, tuple[str, ...]] | None = None,
) -> list[inspect.Parameter]:
    """Keyword parameters with ``typer.Option`` defaults, one per command-line field of
    ``TrainConfig`` (all, or those of ``only`` with their overridden default and help)."""
    from svdh.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    by_name = {f.name: f for f in fields(TrainConfig) if f.metadata.get("cli", False)}
    names = list(by_name) if only is None else list(only)
    params = []
    for name in names:
        f = by_name[name]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_ = f.metadata["help"]
        if only is not None and only[name] is not None:
            default, help_ = only[name]  # type: ignore[misc]
        kind = hints[name]
        if name == "bin_edges":  # a comma-separated list on the command line
            kind, default = str, ""
        decls = (flags or {}).get(name) or f.metadata.get("flags") or ()
        option = typer.Option(default, *decls, help=help_)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        )
    return params


def _edges(text: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        from svdh.core.errors import BadConfigError

        raise BadConfigError(
            f"--bins {text!r}: give comma-separated lower class edges, e.g. 1,5,10,20,40,80"
        ) from None


def _options_to_config(**kw: Any) -> Any:
    from svdh.train import TrainConfig

    if "bin_edges" in kw:
        kw["bin_edges"] = _edges(kw["bin_edges"])
    return TrainConfig(**kw)


def build_command(
    body: Callable[..., None], params: list[inspect.Parameter]
) -> Callable[..., None]:
    """``body(**kw)`` with the signature typer reads (``params``, in order); for commands
    whose options come from ``TrainConfig`` (here, and ``svdh run``)."""

    def command(**kw: Any) -> None:
        body(**kw)

    command.__doc__ = body.__doc__
    command.__name__ = body.__name__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return command


def _resume(help_: str) -> inspect.Parameter:
    return inspect.Parameter(
        "resume",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(False, "--resume", help=help_),
        annotation=bool,
    )


def _head(source_help: str, out_help: str) -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter(
            "source", kw, default=typer.Argument(..., help=source_help), annotation=str
        ),
        inspect.Parameter(
            "out", kw, default=typer.Option(..., "--out", "-o", help=out_help), annotation=Path
        ),
    ]


def train(source: str, out: Path, resume: bool = False, **options: Any) -> None:
    """Train one model per patient-grouped fold and write a run directory.

    Every image gets exactly one out-of-fold prediction (oof.csv) from the fold model that never saw its patient; a held-out test split (--test-fraction) is predicted by the mean of the fold models (test.csv). Stop it any time and rerun with --resume. See docs/training.md.
    """
    from svdh.train import train_run

    cfg = _options_to_config(source=source, **options)
    train_run(cfg, out, resume=resume, kind="train")


def pretrain(source: str, out: Path, resume: bool = False, **options: Any) -> None:
    """Pretrain a bone-age model (months) on RSNA-style data and report its MAE.

    The result seeds SvdH models: svdh train ... --init checkpoint:OUT (the backbone weights transfer; the head is trained anew).
    """
    from svdh.train import train_run

    cfg = _options_to_config(task="boneage", source=source, **options)
    metrics = train_run(cfg, out, resume=resume, kind="pretrain")
    if metrics:
        where = "test" if metrics.get("test") else "overall"
        typer.echo(
            f"bone-age MAE ({'held-out test' if where == 'test' else 'validation'}): "
            f"{metrics[where]['mae']:.2f} months; use --init checkpoint:{out}"
        )


def register(app: typer.Typer) -> None:
    train_head = _head(
        "Data source: ra2-dream:DIR, rsna-boneage:DIR or csv:FILE.",
        "Run directory to write (config, folds, checkpoints, oof.csv, metrics).",
    )
    train_resume = _resume(
        "Continue the run in --out: finished folds are kept, an unfinished one resumes from "
        "its last epoch."
    )
    app.command("train")(build_command(train, [*train_head, *config_options(), train_resume]))
    pre_head = _head(
        "Bone-age data: rsna-boneage:DIR (the Kaggle layout or boneage.csv + <id>.png).",
        "Run directory to write; later use --init checkpoint:OUT.",
    )
    pre_options = config_options(PRETRAIN, PRETRAIN_FLAGS)
    pre_resume = _resume("Continue an interrupted pretraining run in --out.")
    app.command("pretrain")(build_command(pretrain, [*pre_head, *pre_options, pre_resume]))
