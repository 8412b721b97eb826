"""The settings of one training run, validated, and how they resolve per task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from svdh.core.errors import BadConfigError
from svdh.core.preprocess import PreprocessConfig
from svdh.core.tasks import Task
from svdh.models.backbones import get_backbone
from svdh.models.heads import check_task, check_transform
from svdh.models.losses import DEFAULT_LOSS, LOSSES
from svdh.models.schemes import Scheme

#: Validation metric watched by early stopping and best-checkpoint selection, per task.
DEFAULT_MONITOR = {
    "regression": ("val_rmse", "min"),
    "boneage": ("val_mae", "min"),
    "classification": ("val_loss", "min"),
    "ordinal": ("val_loss", "min"),
}
MONITOR_MODES = {
    "val_loss": "min",
    "val_rmse": "min",
    "val_mae": "min",
    "val_pcc": "max",
    "val_acc": "max",
    "val_class_mae": "min",
}
#: --lr-scaling: the learning-rate factor for a batch ``n`` times one process's batch.
LR_SCALING = {
    "sqrt": lambda n: float(n) ** 0.5,
    "linear": float,
    "none": lambda n: 1.0,
}
TARGET_COLUMN = {
    "regression": "svdh",
    "classification": "svdh",
    "ordinal": "svdh",
    "boneage": "boneage",
}


def opt(default: Any, help: str, *flags: str, cli: bool = True, **kw: Any) -> Any:
    """A ``TrainConfig`` field with its command-line help: the one declaration from which
    ``svdh train``/``svdh pretrain`` options (``svdh.cli.train``) and the experiment schema
    (``svdh.experiment``) are derived. ``flags``: the option names when not ``--field-name``;
    ``cli=False``: settable in config files only."""
    meta = {"help": help, "flags": flags, "cli": cli}
    if isinstance(default, (list, dict)) or default is None and kw.get("factory"):
        return field(default_factory=kw.pop("factory"), metadata=meta)
    return field(default=default, metadata=meta)


_PP = PreprocessConfig()
#: TrainConfig fields that are preprocessing settings, and their PreprocessConfig names: the
#: run stores them once, in its ``preprocess`` section (the cache's PreprocessConfig).
PREPROCESS_FIELDS = {
    "image_size": "size",
    "margin": "margin",
    "clahe": "clahe",
    "crop": "crop",
    "canonical": "canonical",
}

_TASK_HELP = (
    "regression (SvdH total), classification or ordinal (severity classes), boneage (months)."
)
_BACKBONE_HELP = (
    "resnet18/34/50/101/152, mobilenet_v2, densenet121, efficientnet_b0, convnext_tiny, "
    "vgg16_bn, mobilenet_v2_050."
)


@dataclass
class TrainConfig:
    """Everything that defines a run; written resolved to ``RUN/config.yaml``.

    Each field's ``help`` is the help text of its ``svdh train`` option."""

    source: str = opt("", "Data source: ra2-dream:DIR, rsna-boneage:DIR or csv:FILE.", cli=False)
    task: str = opt("regression", _TASK_HELP)
    backbone: str = opt("resnet18", _BACKBONE_HELP)
    init: str = opt(
        "scratch",
        "scratch, imagenet (torchvision weights from the torch cache) or checkpoint:PATH "
        "(a run directory, .safetensors or .ckpt).",
    )
    scheme: str = opt("full", "Fine-tuning scheme: full, head, partial:K, gradual, discriminative.")
    folds: int = opt(
        5, "Patient-grouped cross-validation folds (1: a single train/validation split)."
    )
    epochs: int = opt(30, "Maximum epochs per fold.")
    batch_size: int = opt(32, "Images per batch (per device).")
    image_size: int = opt(_PP.size, "Side of the square preprocessed image, in pixels.")
    margin: float = opt(
        _PP.margin, "Margin around the detected hand, as a fraction of its longer side."
    )
    clahe: bool = opt(
        _PP.clahe,
        "Contrast-limited adaptive histogram equalisation after resizing.",
        "--clahe",
    )
    crop: bool = opt(
        _PP.crop,
        "Crop to the detected hand (--no-crop: pad and resize the whole film).",
        "--crop/--no-crop",
    )
    canonical: bool = opt(
        True,
        "Turn every hand fingers-up and show it as a left-hand PA view before the crop "
        "(docs/film-quality.md), so rotated and mirrored films score alike; prediction then "
        "does the same (--no-canonical: the film as given).",
        "--canonical/--no-canonical",
    )
    lr: float = opt(
        1e-3,
        "Base learning rate (AdamW, warm-up then cosine decay) for one process's batch; "
        "see --lr-scaling for several processes.",
    )
    lr_scaling: str = opt(
        "sqrt",
        "How --lr grows when DDP trains on N processes (an N times larger batch): sqrt "
        "(lr x sqrt(N)), linear (lr x N) or none.",
    )
    seed: int = opt(0, "Seed of the folds, the initialisation and the augmentation.")
    test_fraction: float = opt(
        0.0, "Fraction of patients held out as a test split (predicted by every fold model)."
    )
    val_fraction: float = opt(0.2, "Validation fraction when --folds 1.")
    patience: int = opt(10, "Early stopping after this many epochs without improvement (0: off).")
    monitor: str = opt(
        "",
        "Validation metric for early stopping and the best checkpoint (default: val_rmse, "
        "val_mae for boneage, val_loss for classes).",
    )
    loss: str = opt(
        "",
        "mse, huber or l1 (regression, boneage), ce (classification), coral (ordinal); "
        "default per task.",
    )
    huber_delta: float = opt(1.0, "Huber loss threshold (standardised units).", cli=False)
    target_transform: str = opt(
        "none",
        "none or log1p: learn the skewed score on a log scale (outputs stay on the score scale).",
    )
    extra_heads: bool = opt(
        False,
        "Regression: predict erosion and JSN as well; the total is their sum.",
        "--extra-heads",
    )
    label_smoothing: float = opt(0.0, "Cross-entropy label smoothing.")
    class_weights: bool = opt(
        True,
        "Inverse-frequency class weights in cross-entropy.",
        "--class-weights/--no-class-weights",
    )
    use_sex: bool = opt(
        False, "Boneage: give the model the sex of the child as an input.", "--use-sex"
    )
    bin_edges: list[float] | None = opt(
        None,
        "Severity class lower edges, comma-separated (default: 1,5,10,20,40,80 for patient "
        "totals, halved per hand).",
        "--bins",
    )
    lr_decay: float = opt(
        0.5, "Discriminative scheme: learning-rate factor per stage down from the top."
    )
    unfreeze_every: int = opt(
        0, "Gradual scheme: epochs between unfreezing stages (0: spread over the run)."
    )
    weight_decay: float = opt(1e-4, "AdamW weight decay.")
    warmup_fraction: float = opt(0.05, "Fraction of the steps spent warming up.", cli=False)
    dropout: float = opt(0.0, "Dropout before the head.")
    precise_bn_batches: int = opt(
        32,
        "Batches of the training images, without augmentation, over which BatchNorm "
        "statistics are re-estimated before each validation (precise BN; 0: off).",
    )
    ema_decay: float = opt(0.0, "EMA of the weights, e.g. 0.99 (0: off).")
    grad_clip: float = opt(0.0, "Gradient-norm clipping (0: off).")
    augment: bool = opt(
        True,
        "Training augmentation (rotation, scale, shift, flip, brightness, contrast, gamma, noise).",
        "--augment/--no-augment",
    )
    aug_strength: float = opt(
        1.0,
        "Scale of the augmentation ranges (rotation 10 deg, scale and shift 10%/5%, exposure, "
        "noise at 1); 0.5 halves them.",
    )
    aug_stretch: float = opt(
        0.0,
        "Random aspect-ratio change of up to this fraction in training (0: off), so that "
        "squashed and padded hands both look familiar.",
    )
    max_minutes: float = opt(0.0, "Wall-clock limit per fold in minutes (0: none).")
    max_cpu_minutes: float = opt(
        0.0,
        "CPU-time limit per fold in minutes, for budgeted runs on shared machines (0: none).",
    )
    channels_last: bool = opt(
        True,
        "On CUDA GPUs, keep images and convolution weights channels-last (faster convolutions "
        "with mixed precision); ignored on CPUs.",
        "--channels-last/--no-channels-last",
    )
    accelerator: str = opt("auto", "cpu, gpu, mps or auto.")
    devices: str = opt("auto", "Devices per node: a count, a list like 0,1, or auto.")
    strategy: str = opt("auto", "auto or ddp (distributed data parallel).")
    num_nodes: int = opt(1, "Machines taking part in distributed training.")
    precision: str = opt(
        "auto", "auto (mixed bf16/fp16 on GPUs, 32 on CPUs), 32-true, 16-mixed, bf16-mixed."
    )
    num_workers: int = opt(2, "Data-loader worker processes.")
    cache_dir: str = opt(
        "", "Where the preprocessed-image cache lives (default: the data stage's)."
    )
    cache: str = opt(
        "",
        "A cache folder built by `svdh prepare --out DIR`: train on it (its preprocessing must "
        "match --image-size/--margin/--clahe/--crop).",
    )
    skip_invalid: bool = opt(
        False,
        "Leave out the images the cache cannot prepare (unreadable, or refused by the "
        "canonical stage: feet, no hand outline), each named in the log, instead of stopping.",
        "--skip-invalid",
    )
    extra: dict[str, Any] = opt(
        {}, "Free-form notes carried to config.yaml.", cli=False, factory=dict
    )

    # -- derived ------------------------------------------------------------------------
    @property
    def scheme_obj(self) -> Scheme:
        return Scheme.parse(self.scheme)

    @property
    def loss_name(self) -> str:
        return self.loss or DEFAULT_LOSS[self.task]

    @property
    def target_column(self) -> str:
        return TARGET_COLUMN[self.task]

    @property
    def monitor_mode(self) -> tuple[str, str]:
        if not self.monitor:
            return DEFAULT_MONITOR[self.task]
        return self.monitor, MONITOR_MODES[self.monitor]

    @property
    def is_class_task(self) -> bool:
        return Task(self.task).is_class

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing these settings ask for (the rest at PreprocessConfig defaults)."""
        return PreprocessConfig(**{pp: getattr(self, f) for f, pp in PREPROCESS_FIELDS.items()})

    def validate(self) -> TrainConfig:
        """Check every setting; raise ``BadConfigError`` naming the option at fault."""
        check_task(self.task)
        get_backbone(self.backbone)
        check_transform(self.target_transform)
        Scheme.parse(self.scheme)
        if self.loss and self.loss not in LOSSES[self.task]:
            raise BadConfigError(
                f"--loss {self.loss} does not fit --task {self.task}; "
                f"choose one of: {', '.join(LOSSES[self.task])}"
            )
        if self.monitor and self.monitor not in MONITOR_MODES:
            raise BadConfigError(f"--monitor must be one of: {', '.join(MONITOR_MODES)}")
        if self.monitor in ("val_acc", "val_class_mae") and not self.is_class_task:
            raise BadConfigError(f"--monitor {self.monitor} needs a class task")
        if not (self.init in ("scratch", "imagenet") or self.init.startswith("checkpoint:")):
            raise BadConfigError(f"--init {self.init!r}: use scratch, imagenet or checkpoint:PATH")
        for name, lo in (("folds", 1), ("epochs", 1), ("batch_size", 1), ("num_nodes", 1)):
            if int(getattr(self, name)) < lo:
                raise BadConfigError(f"--{name.replace('_', '-')} must be at least {lo}")
        if self.image_size < 32:
            raise BadConfigError("--image-size must be at least 32 pixels")
        if self.lr <= 0:
            raise BadConfigError("--lr must be positive")
        if not 0.0 <= self.test_fraction < 0.9:
            raise BadConfigError("--test-fraction must be in [0, 0.9)")
        if not 0.0 < self.val_fraction < 0.9:
            raise BadConfigError("--val-fraction must be in (0, 0.9)")
        if self.extra_heads and self.task != "regression":
            raise BadConfigError("--extra-heads (erosion and JSN) needs --task regression")
        if self.use_sex and self.task != "boneage":
            raise BadConfigError("--use-sex is for --task boneage")
        if self.target_transform != "none" and self.task not in ("regression", "boneage"):
            raise BadConfigError("--target-transform applies to regression and boneage tasks")
        if self.lr_scaling not in LR_SCALING:
            raise BadConfigError(f"--lr-scaling must be one of: {', '.join(LR_SCALING)}")
        if not 0.0 <= self.aug_strength <= 3.0 or not 0.0 <= self.aug_stretch < 1.0:
            raise BadConfigError("--aug-strength must be in [0, 3] and --aug-stretch in [0, 1)")
        if self.patience < 0 or self.num_workers < 0:
            raise BadConfigError("--patience and --num-workers must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_run_dict(self) -> dict[str, Any]:
        """The ``train`` section of ``config.yaml``: every setting except the preprocessing
        ones, which the run stores once, in its ``preprocess`` section."""
        return {k: v for k, v in self.to_dict().items() if k not in PREPROCESS_FIELDS}

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> TrainConfig:
        """The settings of a saved run (``config.yaml``): its ``train`` section plus its
        preprocessing (older runs kept ``image_size`` in ``train`` too; both read)."""
        d = dict(config.get("train") or {})
        pp = PreprocessConfig.from_record(config, warn=False).to_dict()
        for f, name in PREPROCESS_FIELDS.items():
            d.setdefault(f, pp[name])
        return cls.from_dict(d)
