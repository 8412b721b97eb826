"""``svdh train`` and ``svdh pretrain``: thin wrappers over ``svdh.train.train_run``."""

from __future__ import annotations

from pathlib import Path

import typer

_TASK_HELP = (
    "regression (SvdH total), classification or ordinal (severity classes), boneage (months)."
)


def _options_to_config(**kw):  # noqa: ANN003, ANN202
    from svdh.train import TrainConfig

    edges = kw.pop("bins", None)
    if edges:
        try:
            kw["bin_edges"] = [float(x) for x in str(edges).split(",") if x.strip()]
        except ValueError:
            from svdh.core.errors import BadConfigError

            raise BadConfigError(
                f"--bins {edges!r}: give comma-separated lower class edges, e.g. 1,5,10,20,40,80"
            ) from None
    return TrainConfig(**kw)


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        source: str = typer.Argument(
            ..., help="Data source: ra2-dream:DIR, rsna-boneage:DIR or csv:FILE."
        ),
        out: Path = typer.Option(
            ...,
            "--out",
            "-o",
            help="Run directory to write (config, folds, checkpoints, oof.csv, metrics).",
        ),
        task: str = typer.Option("regression", help=_TASK_HELP),
        backbone: str = typer.Option(
            "resnet18",
            help="resnet18/34/50/101/152, mobilenet_v2, densenet121, efficientnet_b0, convnext_tiny, vgg16_bn, mobilenet_v2_050.",
        ),
        init: str = typer.Option(
            "scratch",
            help="scratch, imagenet (torchvision weights from the torch cache) or checkpoint:PATH (a run directory, .safetensors or .ckpt).",
        ),
        scheme: str = typer.Option(
            "full", help="Fine-tuning scheme: full, head, partial:K, gradual, discriminative."
        ),
        folds: int = typer.Option(
            5, help="Patient-grouped cross-validation folds (1: a single train/validation split)."
        ),
        epochs: int = typer.Option(30, help="Maximum epochs per fold."),
        batch_size: int = typer.Option(32, help="Images per batch (per device)."),
        image_size: int = typer.Option(
            256, help="Side of the square preprocessed image, in pixels."
        ),
        lr: float = typer.Option(
            1e-3, help="Base learning rate (AdamW, warm-up then cosine decay)."
        ),
        seed: int = typer.Option(
            0, help="Seed of the folds, the initialisation and the augmentation."
        ),
        test_fraction: float = typer.Option(
            0.0,
            help="Fraction of patients held out as a test split (predicted by every fold model).",
        ),
        val_fraction: float = typer.Option(0.2, help="Validation fraction when --folds 1."),
        patience: int = typer.Option(
            10, help="Early stopping after this many epochs without improvement (0: off)."
        ),
        monitor: str = typer.Option(
            "",
            help="Validation metric for early stopping and the best checkpoint (default: val_rmse, val_mae for boneage, val_loss for classes).",
        ),
        loss: str = typer.Option(
            "",
            help="mse or huber (regression, boneage), ce (classification), coral (ordinal); default per task.",
        ),
        target_transform: str = typer.Option(
            "none",
            help="none or log1p: learn the skewed score on a log scale (outputs stay on the score scale).",
        ),
        extra_heads: bool = typer.Option(
            False,
            "--extra-heads",
            help="Regression: predict erosion and JSN as well; the total is their sum.",
        ),
        label_smoothing: float = typer.Option(0.0, help="Cross-entropy label smoothing."),
        class_weights: bool = typer.Option(
            True,
            "--class-weights/--no-class-weights",
            help="Inverse-frequency class weights in cross-entropy.",
        ),
        use_sex: bool = typer.Option(
            False, "--use-sex", help="Boneage: give the model the sex of the child as an input."
        ),
        bins: str = typer.Option(
            "",
            help="Severity class lower edges, comma-separated (default: 1,5,10,20,40,80 for patient totals, halved per hand).",
        ),
        lr_decay: float = typer.Option(
            0.5, help="Discriminative scheme: learning-rate factor per stage down from the top."
        ),
        unfreeze_every: int = typer.Option(
            0, help="Gradual scheme: epochs between unfreezing stages (0: spread over the run)."
        ),
        weight_decay: float = typer.Option(1e-4, help="AdamW weight decay."),
        dropout: float = typer.Option(0.0, help="Dropout before the head."),
        augment: bool = typer.Option(
            True,
            "--augment/--no-augment",
            help="Training augmentation (rotation, scale, shift, flip, brightness, contrast, gamma, noise).",
        ),
        max_minutes: float = typer.Option(
            0.0, help="Wall-clock limit per fold in minutes (0: none)."
        ),
        max_cpu_minutes: float = typer.Option(
            0.0,
            help="CPU-time limit per fold in minutes, for budgeted runs on shared machines (0: none).",
        ),
        accelerator: str = typer.Option("auto", help="cpu, gpu, mps or auto."),
        devices: str = typer.Option(
            "auto", help="Devices per node: a count, a list like 0,1, or auto."
        ),
        strategy: str = typer.Option("auto", help="auto or ddp (distributed data parallel)."),
        num_nodes: int = typer.Option(1, help="Machines taking part in distributed training."),
        precision: str = typer.Option(
            "auto",
            help="auto (mixed bf16/fp16 on GPUs, 32 on CPUs), 32-true, 16-mixed, bf16-mixed.",
        ),
        num_workers: int = typer.Option(2, help="Data-loader worker processes."),
        cache_dir: str = typer.Option(
            "", help="Where the preprocessed-image cache lives (default: the data stage's)."
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Continue the run in --out: finished folds are kept, an unfinished one resumes from its last epoch.",
        ),
    ) -> None:
        """Train one model per patient-grouped fold and write a run directory.

        Every image gets exactly one out-of-fold prediction (oof.csv) from the fold model that never saw its patient; a held-out test split (--test-fraction) is predicted by the mean of the fold models (test.csv). Stop it any time and rerun with --resume. See docs/training.md.
        """
        kw = dict(locals())
        kw.pop("out"), kw.pop("resume")
        from svdh.train import train_run

        cfg = _options_to_config(**kw)
        train_run(cfg, out, resume=resume, kind="train")

    @app.command("pretrain")
    def pretrain(
        source: str = typer.Argument(
            ...,
            help="Bone-age data: rsna-boneage:DIR (the Kaggle layout or boneage.csv + <id>.png).",
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Run directory to write; later use --init checkpoint:OUT."
        ),
        backbone: str = typer.Option(
            "resnet18", help="The backbone to pretrain (the SvdH model must use the same)."
        ),
        init: str = typer.Option("scratch", help="scratch, imagenet or checkpoint:PATH."),
        epochs: int = typer.Option(30, help="Maximum epochs."),
        batch_size: int = typer.Option(32, help="Images per batch (per device)."),
        image_size: int = typer.Option(
            256, help="Side of the square preprocessed image, in pixels."
        ),
        lr: float = typer.Option(1e-3, help="Base learning rate."),
        folds: int = typer.Option(
            1, help="1: one train/validation split (default); K: K-fold cross-validation."
        ),
        val_fraction: float = typer.Option(0.15, help="Validation fraction with --folds 1."),
        test_fraction: float = typer.Option(
            0.1, help="Held-out test fraction; its MAE in months is the headline figure."
        ),
        use_sex: bool = typer.Option(
            True, "--use-sex/--no-sex", help="Give the model the sex of the child (RSNA 'male')."
        ),
        loss: str = typer.Option("huber", help="mse or huber."),
        patience: int = typer.Option(8, help="Early-stopping patience in epochs (0: off)."),
        seed: int = typer.Option(0, help="Seed."),
        max_minutes: float = typer.Option(0.0, help="Wall-clock limit in minutes (0: none)."),
        accelerator: str = typer.Option("auto", help="cpu, gpu, mps or auto."),
        devices: str = typer.Option("auto", help="Devices per node."),
        strategy: str = typer.Option("auto", help="auto or ddp."),
        num_nodes: int = typer.Option(1, help="Machines in distributed training."),
        precision: str = typer.Option("auto", help="auto, 32-true, 16-mixed, bf16-mixed."),
        num_workers: int = typer.Option(2, help="Data-loader worker processes."),
        cache_dir: str = typer.Option("", help="Where the preprocessed-image cache lives."),
        resume: bool = typer.Option(
            False, "--resume", help="Continue an interrupted pretraining run in --out."
        ),
    ) -> None:
        """Pretrain a bone-age model (months) on RSNA-style data and report its MAE.

        The result seeds SvdH models: svdh train ... --init checkpoint:OUT (the backbone weights transfer; the head is trained anew).
        """
        kw = dict(locals())
        kw.pop("out"), kw.pop("resume")
        from svdh.train import train_run

        cfg = _options_to_config(task="boneage", **kw)
        metrics = train_run(cfg, out, resume=resume, kind="pretrain")
        if metrics:
            where = "test" if metrics.get("test") else "overall"
            typer.echo(
                f"bone-age MAE ({'held-out test' if where == 'test' else 'validation'}): "
                f"{metrics[where]['mae']:.2f} months; use --init checkpoint:{out}"
            )
