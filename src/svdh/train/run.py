"""Training runs: patient-grouped folds, one Lightning fit per fold, run-directory outputs.

Layout written (see ``docs/architecture.md``, Runs)::

    RUN/config.yaml  folds.csv  oof.csv  test.csv  metrics.json  logs/{csv,tensorboard}/fold_k/
    RUN/fold_k/best.ckpt  last.ckpt  best.safetensors  predictions.npz  done.json

Resuming: ``last.ckpt`` is saved at the end of every epoch; a fold is finished when its
``done.json`` exists (written last, after its weights and predictions, each written to a
temporary name and renamed). ``train_run(..., resume=True)`` skips finished folds and
continues an unfinished one from its ``last.ckpt``, so a run killed with ``kill -9`` loses
at most the epoch it was in.

Distributed training: every process runs this fold loop; Lightning's DDP averages
gradients. Predictions are made after each fold by global rank 0 alone, over the full
validation fold in manifest order, so ``oof.csv`` holds each image exactly once (no
duplicates from distributed-sampler padding); the other ranks wait at a barrier.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from svdh.core.errors import BadConfigError, BadDatasetError, BadRunError
from svdh.core.scoring import SeverityBins
from svdh.models.losses import class_weights_from_labels
from svdh.models.net import SvdhNet, average_raw, build_model, predict_outputs
from svdh.models.schemes import default_unfreeze_every
from svdh.runs.tables import plain
from svdh.train.config import TrainConfig
from svdh.train.data import CacheDataset, LazyImages, Targets, radiograph_augmentation

#: Manifest columns carried into oof.csv / test.csv when present.
CARRY = ("patient_svdh", "reader2", "visit", "male")


@dataclass
class RunData:
    """What a run trains on: the manifest (with ``cache_index`` and, once split, ``fold``),
    the cached images and the preprocessing that made them."""

    manifest: pd.DataFrame
    images: LazyImages
    preprocess: dict[str, Any]
    source: str = ""


# --------------------------------------------------------------------------- small helpers


def _global_rank_env() -> int:
    """This process's global rank as its launcher set it, before the process group exists:
    torchrun (``RANK``), SLURM (``SLURM_PROCID``), or Lightning's own launcher, which starts
    the other processes of a node with ``LOCAL_RANK`` >= 1 (``NODE_RANK`` for the node)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit() and (
            var != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        ):
            return int(os.environ[var])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return node * 1000 + local  # only compared with 0


def _is_main() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return _global_rank_env() == 0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def resolve_precision(cfg: TrainConfig) -> str:
    """``auto``: bf16 (or fp16) mixed precision on CUDA GPUs, full precision elsewhere."""
    if cfg.precision != "auto":
        return cfg.precision
    if cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _devices(value: str | int) -> Any:
    s = str(value)
    if s == "auto":
        return "auto"
    if s.lstrip("-").isdigit():
        return int(s)
    return s  # "0,1": explicit device ids


# --------------------------------------------------------------------------- data


def load_run_data(cfg: TrainConfig) -> RunData:
    """Read ``cfg.source`` and its preprocessed-image cache at ``cfg.image_size``."""
    try:
        from svdh.data.cache import ensure_cache
    except ImportError as exc:  # the foundation stage is not installed
        raise BadConfigError(f"the data stage (svdh.data.cache) is unavailable: {exc}") from None
    cache = ensure_cache(
        cfg.source,
        int(cfg.image_size),
        cfg.cache_dir or None,
        progress=sys.stderr.isatty() and _is_main(),
    )
    manifest = cache.manifest.copy()
    manifest.attrs["source"] = cfg.source
    images = LazyImages(Path(cache.path) / "images.npy")
    return RunData(manifest, images, cache.config.to_dict(), cfg.source)


def assign_run_folds(cfg: TrainConfig, manifest: pd.DataFrame) -> pd.DataFrame:
    """Patient-grouped, score-stratified folds (``fold`` -1 = held-out test)."""
    from svdh.data.splits import assign_folds

    n = cfg.folds if cfg.folds > 1 else max(2, round(1 / cfg.val_fraction))
    stratify = cfg.target_column if cfg.target_column in manifest.columns else None
    return assign_folds(
        manifest, n_folds=n, seed=cfg.seed, stratify=stratify, test_fraction=cfg.test_fraction
    )


def resolve_bins(cfg: TrainConfig, manifest: pd.DataFrame) -> tuple[SeverityBins | None, str]:
    """Severity bins of the manifest's score scope (None for bone age)."""
    scope = "hand"
    if "score_scope" in manifest.columns and manifest["score_scope"].notna().any():
        scopes = sorted(set(manifest["score_scope"].dropna().astype(str)))
        if len(scopes) > 1:
            raise BadDatasetError(
                f"{manifest.attrs.get('source', 'manifest')}: mixes score scopes {scopes}; "
                "train hand scores and patient totals separately"
            )
        scope = scopes[0]
    if cfg.task == "boneage":
        return None, scope
    return SeverityBins.for_scope(scope, cfg.bin_edges), scope


def build_targets(cfg: TrainConfig, df: pd.DataFrame, bins: SeverityBins | None) -> Targets:
    """Targets per manifest row; a missing label is an error naming the rows."""
    src = df.attrs.get("source", "manifest")

    def col(name: str) -> np.ndarray:
        if name not in df.columns:
            raise BadDatasetError(f"{src}: has no column {name!r}, needed for --task {cfg.task}")
        v = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad) == len(v):
            hint = (
                "bone-age data train with --task boneage (svdh pretrain)"
                if name == "svdh"
                else "this source has no such labels; choose a task it supports"
            )
            raise BadDatasetError(
                f"{src}: no image has a {name} label, needed for --task {cfg.task}; {hint}"
            )
        if len(bad):
            ids = ", ".join(str(df["image_id"].iloc[i]) for i in bad[:5])
            raise BadDatasetError(
                f"{src}: {len(bad)} image(s) have no {name} label (e.g. {ids}); "
                "fix the labels or drop those rows (--skip-invalid when preparing)"
            )
        return v

    t = Targets()
    if cfg.task == "boneage":
        t.y = col("boneage")[:, None]
        if cfg.use_sex:
            m = (
                pd.to_numeric(df.get("male"), errors="coerce").to_numpy(dtype=np.float64)
                if "male" in df
                else np.full(len(df), np.nan)
            )
            t.sex = np.where(np.isfinite(m), 2 * m - 1, 0.0)
        return t
    total = col("svdh")
    if cfg.extra_heads:
        t.y = np.column_stack([total, col("erosion"), col("jsn")])
    else:
        t.y = total[:, None]
    if cfg.is_class_task:
        assert bins is not None
        t.label = np.asarray(bins.to_class(total), dtype=np.int64).reshape(-1)
    return t


def _subset(t: Targets, rows: np.ndarray) -> Targets:
    return Targets(
        y=None if t.y is None else t.y[rows],
        label=None if t.label is None else t.label[rows],
        sex=None if t.sex is None else t.sex[rows],
    )


def make_dataset(data: RunData, targets: Targets, rows: np.ndarray, augment: bool) -> CacheDataset:
    ci = (
        data.manifest["cache_index"].to_numpy(dtype=np.int64)
        if "cache_index" in data.manifest
        else np.arange(len(data.manifest))
    )
    return CacheDataset(
        data.images,
        ci[rows],
        rows,
        _subset(targets, rows),
        radiograph_augmentation() if augment else None,
    )


def _loader(
    ds: CacheDataset, cfg: TrainConfig, shuffle: bool, drop_last: bool = False
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=cfg.num_workers,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def FoldData(train_ds: CacheDataset, val_ds: CacheDataset, cfg: TrainConfig) -> Any:  # noqa: N802
    """A ``LightningDataModule`` of one fold's training and validation sets (built lazily so
    that importing this module does not import Lightning)."""
    import lightning as L

    class _FoldData(L.LightningDataModule):
        def train_dataloader(self) -> torch.utils.data.DataLoader:
            # drop a last partial batch (BatchNorm cannot train on a batch of one image)
            return _loader(train_ds, cfg, shuffle=True, drop_last=len(train_ds) > cfg.batch_size)

        def val_dataloader(self) -> torch.utils.data.DataLoader:
            return _loader(val_ds, cfg, shuffle=False)

    return _FoldData()


@torch.no_grad()
def predict_raw(
    model: SvdhNet,
    ds: CacheDataset,
    cfg: TrainConfig,
    device: torch.device,
    precision: str = "32-true",
) -> np.ndarray:
    """``model(x)`` over a dataset in its row order (one process, no padding)."""
    model.eval().to(device)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=max(cfg.batch_size, 64), shuffle=False, num_workers=cfg.num_workers
    )
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    use_amp = device.type == "cuda" and "mixed" in precision
    outs = []
    for batch in loader:
        x = batch["x"].to(device, non_blocking=True)
        sex = batch["sex"].to(device) if "sex" in batch else None
        with torch.autocast(device.type, dtype=dtype, enabled=use_amp):
            outs.append(model(x, sex).float().cpu())
    if not outs:
        return np.zeros((0, 1), dtype=np.float32)
    return torch.cat(outs).numpy()


# --------------------------------------------------------------------------- one fold


def _train_rows(fold: np.ndarray, k: int) -> np.ndarray:
    return np.flatnonzero((fold != k) & (fold >= 0))


def _target_stats(model: SvdhNet, y: np.ndarray) -> tuple[list[float], list[float]]:
    cols = y[:, 1:3] if model.config["extra_heads"] else y[:, :1]
    t = model._fwd(torch.as_tensor(np.clip(cols, 0, None), dtype=torch.float64)).numpy()
    # a floor on the spread (1 score point; 0.1 on the log scale) keeps a training fold of
    # near-constant scores from blowing the standardised targets up
    floor = 0.1 if model.config["target_transform"] == "log1p" else 1.0
    return t.mean(axis=0).tolist(), np.maximum(t.std(axis=0), floor).tolist()


class _EpochLine:
    """A Lightning callback printing one line per epoch (when there is no progress bar)."""

    def __new__(cls, fold: int, n_folds: int, monitor: str, epochs: int):
        from lightning.pytorch.callbacks import Callback

        class EpochLine(Callback):
            def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001
                self.t0 = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001
                if not trainer.is_global_zero:
                    return
                m = {
                    k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")
                }
                if getattr(pl_module, "_train_n", 0):
                    m["train_loss"] = float(pl_module._train_sum) / pl_module._train_n
                shown = " ".join(f"{k} {v:.4g}" for k, v in sorted(m.items()))
                dt = time.perf_counter() - getattr(self, "t0", time.perf_counter())
                print(
                    f"fold {fold + 1}/{n_folds} epoch {trainer.current_epoch + 1}/{epochs}: {shown} ({dt:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

        return EpochLine()


class _EpochTimer:
    """A Lightning callback recording each epoch's wall time (training + validation)."""

    def __new__(cls):
        from lightning.pytorch.callbacks import Callback

        class EpochTimer(Callback):
            def __init__(self) -> None:
                self.seconds: list[float] = []

            def on_train_epoch_start(self, trainer, pl_module):  # noqa: ANN001
                self.t0 = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module):  # noqa: ANN001
                self.seconds.append(round(time.perf_counter() - self.t0, 3))

        return EpochTimer()


class _CpuBudget:
    """A Lightning callback stopping training once this process has used ``minutes`` of CPU
    time in the fold (all its threads; loader worker processes not included). Unlike a
    wall-clock limit it does not cut a run short because other work shares the machine."""

    def __new__(cls, minutes: float):
        from lightning.pytorch.callbacks import Callback

        class CpuBudget(Callback):
            def on_train_start(self, trainer, pl_module):  # noqa: ANN001
                self.start = time.process_time()

            def on_train_batch_end(self, trainer, pl_module, *args):  # noqa: ANN001, ANN002
                if time.process_time() - self.start > minutes * 60:
                    trainer.should_stop = True

        return CpuBudget()


def _quiet_lightning() -> None:
    import logging

    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO; override after)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pat in (
        ".*does not have many workers.*",
        ".*GPU available but not used.*",
        ".*sync_dist=True.*",
        ".*LeafSpec.*",
        ".*Checkpoint directory .* exists.*",
        ".*exists and is not empty.*",
        ".*The number of training batches.*",
        ".*on_epoch=True.*",
        ".*TensorBoard.*",
        ".*isinstance.*LeafSpec.*",
        ".*Experiment logs directory.*",
        ".*`training_step` returned.*",
        ".*max_epochs.*already.*",
        ".*Found keys that are not in the model state dict.*",
        ".*torch.distributed.reduce_op.*",
        ".*all_gather is deprecated.*",
    ):
        warnings.filterwarnings("ignore", message=pat)


def fit_fold(
    cfg: TrainConfig,
    data: RunData,
    targets: Targets,
    bins: SeverityBins | None,
    k: int,
    run_dir: Path,
    n_trained: int,
) -> dict[str, Any] | None:
    """Train fold ``k`` (or continue it from ``last.ckpt``) and write its outputs."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from svdh.train.module import SvdhModule

    fold_dir = run_dir / f"fold_{k}"
    done = fold_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    fold_dir.mkdir(parents=True, exist_ok=True)
    fold = data.manifest["fold"].to_numpy(dtype=np.int64)
    train_rows, val_rows = _train_rows(fold, k), np.flatnonzero(fold == k)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise BadDatasetError(
            f"fold {k} has {len(train_rows)} training and {len(val_rows)} validation images; "
            "use fewer --folds or more patients"
        )
    L.seed_everything(cfg.seed + k, workers=True, verbose=False)
    model = build_model(
        cfg.backbone,
        cfg.task,
        cfg.init,
        n_classes=bins.n_classes if bins else 7,
        extra_heads=cfg.extra_heads,
        target_transform=cfg.target_transform,
        use_sex=cfg.use_sex,
        max_score=bins.max_score if (bins and cfg.task == "regression") else None,
        dropout=cfg.dropout,
    )
    head_kept = bool(getattr(model, "init_report", {}).get("head_transferred"))
    if model.is_regression and not head_kept:
        # a transferred head keeps the standardisation it was trained with
        model.set_target_stats(*_target_stats(model, targets.y[train_rows]))
    cw = None
    if cfg.task == "classification" and cfg.class_weights:
        cw = class_weights_from_labels(targets.label[train_rows], bins.n_classes).tolist()
    module = SvdhModule(model, cfg.to_dict(), bins.to_dict() if bins else None, cw)

    monitor, mode = cfg.monitor_mode
    ckpt_cb = ModelCheckpoint(
        dirpath=fold_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        # "link": when the last epoch is also the best, last.ckpt links to best.ckpt instead of
        # writing the same weights and optimizer state twice
        save_last="link",
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    timer = _EpochTimer()
    callbacks: list[Any] = [ckpt_cb, timer]
    min_epochs = 1
    if cfg.patience > 0:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience, check_finite=False)
        )
    if cfg.scheme_obj.dynamic:
        every = cfg.unfreeze_every or default_unfreeze_every(cfg.epochs, len(model.spec.stages))
        min_epochs = min(
            cfg.epochs, every * len(model.spec.stages) + 1
        )  # no stop before all stages train
    if cfg.max_cpu_minutes > 0:
        callbacks.append(_CpuBudget(cfg.max_cpu_minutes))
    tty = sys.stderr.isatty()
    if tty:
        from lightning.pytorch.callbacks import RichProgressBar

        if _is_main():
            print(
                f"fold {k + 1}/{n_trained}: {len(train_rows)} training and {len(val_rows)} validation images",
                file=sys.stderr,
                flush=True,
            )

        callbacks.append(RichProgressBar(leave=False))
    else:
        callbacks.append(_EpochLine(k, n_trained, monitor, cfg.epochs))

    strategy: Any = cfg.strategy
    if cfg.strategy == "ddp" and cfg.scheme_obj.dynamic:
        from lightning.pytorch.strategies import DDPStrategy

        # gradual unfreezing changes which parameters get gradients during training
        strategy = DDPStrategy(find_unused_parameters=True)
    precision = resolve_precision(cfg)
    logs = run_dir / "logs"
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=_devices(cfg.devices),
        strategy=strategy,
        num_nodes=cfg.num_nodes,
        precision=precision,
        max_epochs=cfg.epochs,
        min_epochs=min_epochs,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes > 0 else None,
        callbacks=callbacks,
        logger=[
            CSVLogger(logs / "csv", name=f"fold_{k}"),
            TensorBoardLogger(logs / "tensorboard", name=f"fold_{k}"),
        ],
        enable_progress_bar=tty,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
        default_root_dir=str(fold_dir),
        benchmark=False,
        # checkpoints are cloned on the training thread and written in the background, so
        # the per-epoch last.ckpt (needed for --resume) does not stall a fast GPU; each
        # file is still written to a temporary name and renamed, and fit waits for it
        plugins=[AsyncCheckpointIO()],
    )
    datamodule = FoldData(
        make_dataset(data, targets, train_rows, cfg.augment),
        make_dataset(data, targets, val_rows, False),
        cfg,
    )
    last = _resume_point(fold_dir)
    t0 = time.perf_counter()
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=str(last) if last else None,
    )
    seconds = time.perf_counter() - t0
    info = None
    if trainer.is_global_zero:
        info = _finish_fold(
            cfg,
            data,
            targets,
            model.config,
            k,
            fold_dir,
            ckpt_cb,
            trainer,
            precision,
            seconds,
            timer.seconds,
        )
    _barrier()
    return info if info is not None else (json.loads(done.read_text()) if done.exists() else None)


def _resume_point(fold_dir: Path) -> Path | None:
    """The checkpoint an unfinished fold continues from: ``last.ckpt`` or, should the process
    have died between writing the best checkpoint and re-linking ``last.ckpt`` to it,
    ``best.ckpt``; None (start the fold afresh) when neither can be read."""
    for name in ("last.ckpt", "best.ckpt"):
        p = fold_dir / name
        if p.exists():  # follows the link; a dangling one does not count
            try:
                torch.load(p, map_location="cpu", weights_only=True, mmap=True)
                return p
            except Exception:  # a torn file: try the other
                continue
    return None


def _state_from_ckpt(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {
        k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")
    }


def save_weights(
    path: Path,
    state: dict[str, torch.Tensor],
    arch: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """``best.safetensors``: the model's state dict plus its architecture as metadata."""
    from safetensors.torch import save

    meta = {
        "svdh_model": json.dumps(plain(arch)),
        **{k: json.dumps(plain(v)) for k, v in (extra or {}).items()},
    }
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def _finish_fold(
    cfg: TrainConfig,
    data: RunData,
    targets: Targets,
    arch: dict[str, Any],
    k: int,
    fold_dir: Path,
    ckpt_cb: Any,
    trainer: Any,
    precision: str,
    seconds: float,
    epoch_seconds: list[float],
) -> dict[str, Any]:
    best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else fold_dir / "last.ckpt"
    state = _state_from_ckpt(best)
    model = SvdhNet(**{k2: v for k2, v in arch.items()})
    model.load_state_dict(state)
    score = ckpt_cb.best_model_score
    best_epoch = None
    try:
        best_epoch = (
            int(torch.load(best, map_location="cpu", weights_only=True)["epoch"]) + 1
        )  # 1-based
    except Exception:  # the epoch is informative only
        pass
    save_weights(
        fold_dir / "best.safetensors",
        model.state_dict(),
        arch,
        {"fold": k, "best_epoch": best_epoch},
    )
    fold = data.manifest["fold"].to_numpy(dtype=np.int64)
    val_rows, test_rows = np.flatnonzero(fold == k), np.flatnonzero(fold < 0)
    device = trainer.strategy.root_device
    val_raw = predict_raw(
        model, make_dataset(data, targets, val_rows, False), cfg, device, precision
    )
    test_raw = predict_raw(
        model, make_dataset(data, targets, test_rows, False), cfg, device, precision
    )
    import io

    buf = io.BytesIO()
    np.savez(buf, val_rows=val_rows, val_raw=val_raw, test_rows=test_rows, test_raw=test_raw)
    atomic_write_bytes(fold_dir / "predictions.npz", buf.getvalue())
    info = {
        "fold": k,
        "monitor": cfg.monitor_mode[0],
        "best_score": None if score is None else float(score),
        "best_epoch": best_epoch,
        "epochs_run": int(trainer.current_epoch),
        "seconds": round(seconds, 1),
        "epoch_seconds": epoch_seconds,  # of this process's epochs (a resumed fit: the new ones)
        "n_train": int(((fold != k) & (fold >= 0)).sum()),
        "n_val": int(len(val_rows)),
        "world_size": int(trainer.world_size),
        "precision": precision,
    }
    atomic_write_text(fold_dir / "done.json", json.dumps(plain(info), indent=2))
    return info


# --------------------------------------------------------------------------- outputs


def prediction_table(
    cfg: TrainConfig,
    data: RunData,
    targets: Targets,
    bins: SeverityBins | None,
    rows: np.ndarray,
    raw: np.ndarray,
    fold: np.ndarray | int,
) -> pd.DataFrame:
    """Rows of ``oof.csv`` / ``test.csv`` (columns: see the Runs contract)."""
    m = data.manifest.iloc[rows]
    out = pd.DataFrame(
        {
            "image": m["image"].astype(str).to_numpy(),
            "image_id": m["image_id"].astype(str).to_numpy(),
            "patient_id": m["patient_id"].astype(str).to_numpy(),
            "side": m["side"].fillna("").astype(str).to_numpy() if "side" in m else "",
            "fold": fold if np.ndim(fold) else np.full(len(rows), int(fold)),
        }
    )
    res = predict_outputs(cfg.task, raw, bins)
    out["y_true"] = targets.y[rows, 0]
    out["y_pred"] = res["score"]
    if bins is not None:
        k = bins.n_classes
        out["class_true"] = np.asarray(bins.to_class(targets.y[rows, 0])).reshape(-1)
        out["class_pred"] = res["severity_class"]
        for c in range(k):
            out[f"p_{c}"] = res["probs"][:, c]
    if cfg.extra_heads:
        out["erosion_true"], out["erosion_pred"] = targets.y[rows, 1], res["erosion"]
        out["jsn_true"], out["jsn_pred"] = targets.y[rows, 2], res["jsn"]
    for c in CARRY:
        if c in m.columns and pd.to_numeric(m[c], errors="coerce").notna().any():
            out[c] = m[c].to_numpy()
    return out


def table_metrics(
    task: str, df: pd.DataFrame, bins: SeverityBins | None, n_boot: int = 200
) -> dict[str, Any]:
    from svdh.evaluate.metrics import class_metrics, score_metrics

    with np.errstate(invalid="ignore", divide="ignore"):  # constant predictions: PCC is NaN
        return _table_metrics(df, bins, n_boot, score_metrics, class_metrics)


def _table_metrics(
    df: pd.DataFrame, bins: SeverityBins | None, n_boot: int, score_metrics: Any, class_metrics: Any
) -> dict[str, Any]:
    out: dict[str, Any] = (
        score_metrics(
            df["y_true"].to_numpy(float),
            df["y_pred"].to_numpy(float),
            bins=bins,
            groups=df["patient_id"].to_numpy(),
            n_boot=n_boot,
            seed=0,
        )
        if len(df) > 1
        else {"n": len(df)}
    )
    if bins is not None and len(df):
        out.update(
            class_metrics(
                df["class_true"].to_numpy(int), df["class_pred"].to_numpy(int), bins.n_classes
            )
        )
    for sub in ("erosion", "jsn"):
        if f"{sub}_true" in df.columns and len(df) > 1:
            s = score_metrics(
                df[f"{sub}_true"].to_numpy(float), df[f"{sub}_pred"].to_numpy(float), n_boot=0
            )
            out[sub] = {key: s[key] for key in ("pcc", "rmse", "mae")}
    return out


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "pcc", "rmse", "mae", "accuracy", "qwk", "class_mae")
    return {k: m[k] for k in keys if k in m}


def print_metrics_table(metrics: dict[str, Any], title: str) -> None:
    """The per-fold metrics table at the end of a run (rich)."""
    from rich.console import Console
    from rich.table import Table

    cols = ["n", "pcc", "rmse", "mae"]
    if any("accuracy" in f for f in metrics["folds"]):
        cols += ["accuracy", "qwk"]
    table = Table(title=title)
    table.add_column("fold", no_wrap=True)
    for c in cols:
        table.add_column(c.upper() if c in ("pcc", "rmse", "mae", "qwk") else c, justify="right")
    table.add_column("best epoch", justify="right")
    table.add_column("s", justify="right")

    def fmt(v: Any, nd: int = 3) -> str:
        if v is None:
            return "-"
        return f"{v:d}" if isinstance(v, int) else f"{float(v):.{nd}f}"

    for f in metrics["folds"]:
        table.add_row(
            str(f["fold"]),
            *(fmt(f.get(c)) for c in cols),
            fmt(f.get("best_epoch")),
            fmt(f.get("seconds"), 0),
        )
    table.add_row(
        "out-of-fold", *(fmt(metrics["overall"].get(c)) for c in cols), "", "", style="bold"
    )
    if metrics.get("test"):
        table.add_row(
            "test (mean of folds)",
            *(fmt(metrics["test"].get(c)) for c in cols),
            "",
            "",
            style="bold",
        )
    Console(stderr=True, width=None if sys.stderr.isatty() else 120).print(table)


def assemble_outputs(
    cfg: TrainConfig,
    data: RunData,
    targets: Targets,
    bins: SeverityBins | None,
    run_dir: Path,
    folds_trained: list[int],
    infos: dict[int, dict],
) -> dict[str, Any]:
    """Write ``oof.csv``, ``test.csv`` and ``metrics.json`` from the finished folds."""
    fold = data.manifest["fold"].to_numpy(dtype=np.int64)
    parts, test_raws, test_rows = [], [], None
    for k in folds_trained:
        z = np.load(run_dir / f"fold_{k}" / "predictions.npz")
        parts.append(prediction_table(cfg, data, targets, bins, z["val_rows"], z["val_raw"], k))
        if len(z["test_rows"]):
            test_rows = z["test_rows"]
            test_raws.append(z["test_raw"])
    oof = pd.concat(parts, ignore_index=True)
    expected = np.flatnonzero(np.isin(fold, folds_trained))
    counts = oof["image_id"].value_counts()
    if len(oof) != len(expected) or (counts > 1).any():
        raise BadRunError(
            f"{run_dir}: out-of-fold predictions cover {len(oof)} rows for {len(expected)} images; "
            "delete the fold_* directories and train again"
        )
    order = {iid: i for i, iid in enumerate(data.manifest["image_id"].astype(str))}
    oof = oof.iloc[np.argsort([order[i] for i in oof["image_id"]], kind="stable")].reset_index(
        drop=True
    )
    atomic_write_text(run_dir / "oof.csv", oof.to_csv(index=False))
    metrics: dict[str, Any] = {"task": cfg.task, "monitor": cfg.monitor_mode[0], "folds": []}
    for k in folds_trained:
        fm = _summary(table_metrics(cfg.task, oof[oof["fold"] == k], bins, n_boot=0))
        fm.update(
            {
                "fold": k,
                **{
                    x: infos.get(k, {}).get(x)
                    for x in ("best_epoch", "best_score", "epochs_run", "seconds")
                },
            }
        )
        metrics["folds"].append(fm)
    metrics["overall"] = table_metrics(cfg.task, oof, bins, n_boot=1000)
    if test_rows is not None and test_raws:
        test = prediction_table(
            cfg, data, targets, bins, test_rows, average_raw(cfg.task, test_raws), -1
        )
        atomic_write_text(run_dir / "test.csv", test.to_csv(index=False))
        metrics["test"] = table_metrics(cfg.task, test, bins, n_boot=1000)
    atomic_write_text(
        run_dir / "metrics.json", json.dumps(plain(metrics), indent=2, allow_nan=False) + "\n"
    )
    return metrics


# --------------------------------------------------------------------------- the run


def _check_run_dir(run_dir: Path, resume: bool) -> dict[str, Any] | None:
    cfg_path = run_dir / "config.yaml"
    if cfg_path.exists():
        if not resume:
            raise BadRunError(
                f"{run_dir} already holds a run; add --resume to continue it, or choose another --out"
            )
        saved = yaml.safe_load(cfg_path.read_text())
        if not isinstance(saved, dict) or "train" not in saved:
            raise BadRunError(f"{cfg_path}: not a training run's config; choose another --out")
        return saved
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise BadRunError(f"{run_dir} exists and is not empty; choose another --out")
    return None


RUNTIME_FIELDS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "num_workers")


def train_run(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    data: RunData | None = None,
    kind: str = "train",
    quiet: bool = False,
) -> dict[str, Any]:
    """Train every fold of ``cfg`` into the run directory ``out``; returns metrics.

    ``data`` may be given directly (tests, benchmarks); otherwise it is read from
    ``cfg.source`` through the preprocessed-image cache. With ``resume`` an existing run
    continues with its saved settings (only the runtime settings ``accelerator``,
    ``devices``, ``strategy``, ``num_nodes``, ``precision`` and ``num_workers`` may change).
    """
    _quiet_lightning()
    run_dir = Path(out)
    main = _is_main()
    saved = (
        _check_run_dir(run_dir, resume)
        if main
        else (
            yaml.safe_load((run_dir / "config.yaml").read_text())
            if (run_dir / "config.yaml").exists()
            else None
        )
    )
    if saved is not None:
        runtime = {f: getattr(cfg, f) for f in RUNTIME_FIELDS}
        cfg = TrainConfig.from_dict(saved["train"])
        for f, v in runtime.items():
            setattr(cfg, f, v)
    cfg.validate()
    if data is None:
        data = load_run_data(cfg)
    manifest = data.manifest.reset_index(drop=True)
    manifest.attrs.update(data.manifest.attrs)
    if "image_id" not in manifest.columns:
        raise BadDatasetError("the manifest has no image_id column")
    folds_csv = run_dir / "folds.csv"
    if folds_csv.exists():
        f = pd.read_csv(folds_csv, dtype={"image_id": str, "patient_id": str})
        if set(f["image_id"]) != set(manifest["image_id"].astype(str)):
            raise BadRunError(
                f"{folds_csv}: the images of the source changed since the run started; "
                "start a new run with another --out"
            )
        fmap = dict(zip(f["image_id"], f["fold"], strict=True))
        manifest["fold"] = [int(fmap[i]) for i in manifest["image_id"].astype(str)]
    elif "fold" not in manifest.columns:
        manifest = assign_run_folds(cfg, manifest)
    data = RunData(manifest, data.images, data.preprocess, data.source or cfg.source)
    bins, scope = resolve_bins(cfg, manifest)
    targets = build_targets(cfg, manifest, bins)
    folds_trained = (
        [0] if cfg.folds == 1 else sorted(int(k) for k in set(manifest["fold"]) if k >= 0)
    )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not folds_csv.exists():
            atomic_write_text(
                folds_csv, manifest[["image_id", "patient_id", "fold"]].to_csv(index=False)
            )
        if saved is None:
            atomic_write_text(
                run_dir / "config.yaml",
                yaml.safe_dump(plain(run_config(cfg, data, bins, scope, kind)), sort_keys=False),
            )
    _barrier()
    infos: dict[int, dict] = {}
    for k in folds_trained:
        info = fit_fold(cfg, data, targets, bins, k, run_dir, len(folds_trained))
        if info:
            infos[k] = info
    if not main:
        return {}
    metrics = assemble_outputs(cfg, data, targets, bins, run_dir, folds_trained, infos)
    if not quiet:
        print_metrics_table(
            metrics, f"{kind} {run_dir.name}: {cfg.task}, {cfg.backbone}, {cfg.init}, {cfg.scheme}"
        )
    return metrics


def _is_phantom_source(manifest: pd.DataFrame) -> bool:
    if not len(manifest):
        return False
    return (Path(str(manifest["image"].iloc[0])).parent / "landmarks.json").is_file()


def run_config(
    cfg: TrainConfig, data: RunData, bins: SeverityBins | None, scope: str, kind: str
) -> dict[str, Any]:
    """The resolved ``config.yaml``: enough to rebuild every fold model and its inputs."""
    from svdh import __version__

    tc = cfg.to_dict()
    tc["loss"] = cfg.loss_name
    tc["monitor"] = cfg.monitor_mode[0]
    tc["precision"] = resolve_precision(cfg)
    arch = {
        "backbone": cfg.backbone,
        "task": cfg.task,
        "n_classes": bins.n_classes if bins else 7,
        "extra_heads": cfg.extra_heads,
        "target_transform": cfg.target_transform,
        "use_sex": cfg.use_sex,
        "max_score": bins.max_score if (bins and cfg.task == "regression") else None,
        "dropout": cfg.dropout,
    }
    man = data.manifest
    return {
        "kind": kind,
        "svdh_version": __version__,
        "task": cfg.task,
        "backbone": cfg.backbone,
        "init": cfg.init,
        "scheme": cfg.scheme,
        "source": data.source or cfg.source,
        "data_kind": "phantom" if _is_phantom_source(man) else "images",
        "image_size": cfg.image_size,
        "score_scope": scope,
        "bins": bins.to_dict() if bins else None,
        "n_classes": arch["n_classes"],
        "folds": cfg.folds,
        "holdout": cfg.folds == 1,
        "seed": cfg.seed,
        "prediction_kind": "oof",
        "n_images": int(len(man)),
        "n_patients": int(man["patient_id"].nunique()),
        "n_test": int((man["fold"] < 0).sum()),
        "model": arch,
        "preprocess": data.preprocess,
        "train": tc,
    }
