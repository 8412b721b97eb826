"""The settings of one training run, validated, and how they resolve per task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from svdh.core.errors import BadConfigError
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
TARGET_COLUMN = {
    "regression": "svdh",
    "classification": "svdh",
    "ordinal": "svdh",
    "boneage": "boneage",
}


@dataclass
class TrainConfig:
    """Everything that defines a run; written resolved to ``RUN/config.yaml``."""

    source: str = ""
    task: str = "regression"
    backbone: str = "resnet18"
    init: str = "scratch"
    scheme: str = "full"
    folds: int = 5
    val_fraction: float = 0.2  # only with folds == 1 (a single train/validation split)
    test_fraction: float = 0.0
    epochs: int = 30
    batch_size: int = 32
    image_size: int = 256
    lr: float = 1e-3
    lr_decay: float = 0.5  # discriminative: per-stage learning-rate factor
    unfreeze_every: int = 0  # gradual: epochs between unfreezing stages (0: spread evenly)
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    dropout: float = 0.0
    loss: str = ""  # default per task
    huber_delta: float = 1.0
    target_transform: str = "none"
    extra_heads: bool = False
    label_smoothing: float = 0.0
    class_weights: bool = True
    use_sex: bool = False
    bin_edges: list[float] | None = None  # severity class lower edges; default by score scope
    augment: bool = True
    monitor: str = ""  # default per task
    patience: int = 10  # early-stopping patience in epochs (0: off)
    max_minutes: float = 0.0  # wall-clock limit per fold (0: none)
    max_cpu_minutes: float = 0.0  # CPU-time limit of this process per fold (0: none)
    seed: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    num_workers: int = 2
    cache_dir: str = ""  # where the preprocessed image cache goes ("" = the foundation default)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried to config.yaml

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
        return self.task in ("classification", "ordinal")

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
        if self.patience < 0 or self.num_workers < 0:
            raise BadConfigError("--patience and --num-workers must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
