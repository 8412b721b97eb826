"""The training loop: patient-grouped folds, one Lightning fit per fold, run-directory outputs.

The files written are those of :class:`svdh.runs.layout.RunDir` (see ``docs/architecture.md``).

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

import io
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

from svdh.core.errors import BadDatasetError, BadRunError
from svdh.core.files import atomic_write_bytes, atomic_write_text, write_json, write_yaml
from svdh.core.scoring import SeverityBins
from svdh.core.tasks import Task
from svdh.data.cache import ensure_cache, open_prepared_cache
from svdh.models.losses import class_weights_from_labels
from svdh.models.net import SvdhNet, average_raw, build_model, predict_outputs
from svdh.models.schemes import default_unfreeze_every
from svdh.models.weights import save_weights
from svdh.runs.layout import FoldDir, RunDir, fold_name
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
    """The images of ``cfg.source`` preprocessed as ``cfg.preprocess`` asks: from the cache
    ``svdh prepare --out DIR`` built (``cfg.cache``, which must match), or from the cache
    kept under ``cfg.cache_dir`` (built on first use)."""
    if cfg.cache:
        cache = open_prepared_cache(cfg.cache, cfg.preprocess, cfg.source)
    else:
        cache = ensure_cache(
            cfg.source,
            cfg.image_size,
            cfg.cache_dir or None,
            cfg=cfg.preprocess,
            skip_invalid=cfg.skip_invalid,
            progress=sys.stderr.isatty() and _is_main(),
        )
    manifest = cache.manifest.copy()
    manifest.attrs["source"] = cfg.source or str(cache.meta.get("source", ""))
    images = LazyImages(cache.images_path)
    return RunData(manifest, images, cache.config.to_dict(), manifest.attrs["source"])


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
    if cfg.task == Task.BONEAGE:
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
    if cfg.task == Task.BONEAGE:
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


def make_dataset(
    data: RunData,
    targets: Targets,
    rows: np.ndarray,
    augment: bool,
    strength: float = 1.0,
    stretch: float = 0.0,
) -> CacheDataset:
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
        radiograph_augmentation(
            strength, flip=not data.preprocess.get("canonical"), stretch=stretch
        )
        if augment
        else None,
    )


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


def _fold_model(
    cfg: TrainConfig, targets: Targets, bins: SeverityBins | None, train_rows: np.ndarray
):  # noqa: ANN202
    """The fold's network and its LightningModule (target standardisation, class weights)."""
    from svdh.train.module import SvdhModule

    model = build_model(
        cfg.backbone,
        cfg.task,
        cfg.init,
        n_classes=bins.n_classes if bins else 7,
        extra_heads=cfg.extra_heads,
        target_transform=cfg.target_transform,
        use_sex=cfg.use_sex,
        max_score=bins.max_score if (bins and cfg.task == Task.REGRESSION) else None,
        dropout=cfg.dropout,
    )
    head_kept = bool(getattr(model, "init_report", {}).get("head_transferred"))
    if model.is_regression and not head_kept:
        # a transferred head keeps the standardisation it was trained with
        model.set_target_stats(*_target_stats(model, targets.y[train_rows]))
    cw = None
    if cfg.task == Task.CLASSIFICATION and cfg.class_weights:
        assert bins is not None and targets.label is not None
        cw = class_weights_from_labels(targets.label[train_rows], bins.n_classes).tolist()
    module = SvdhModule(model, cfg.to_dict(), bins.to_dict() if bins else None, cw)
    return model, module


def _fold_callbacks(
    cfg: TrainConfig, fd: FoldDir, model: SvdhNet, n_trained: int
) -> tuple[Any, Any, list[Any], int]:
    """Checkpointing, timing, early stopping, budgets and progress output of one fold;
    returns (checkpoint callback, epoch timer, all callbacks, minimum epochs)."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from svdh.train.callbacks import CpuBudget, EpochLine, EpochTimer

    monitor, mode = cfg.monitor_mode
    ckpt_cb = ModelCheckpoint(
        dirpath=fd.path,
        filename=fd.ckpt_stem,
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        # "link": when the last epoch is also the best, last.ckpt links to best.ckpt instead of
        # writing the same weights and optimizer state twice
        save_last="link",
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    timer = EpochTimer()
    callbacks: list[Any] = [ckpt_cb, timer]
    min_epochs = 1
    if cfg.patience > 0:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience, check_finite=False)
        )
    if cfg.scheme_obj.dynamic:
        n_stages = len(model.spec.stages)
        every = cfg.unfreeze_every or default_unfreeze_every(cfg.epochs, n_stages)
        min_epochs = min(cfg.epochs, every * n_stages + 1)  # no stop before all stages train
    if cfg.max_cpu_minutes > 0:
        callbacks.append(CpuBudget(cfg.max_cpu_minutes))
    if sys.stderr.isatty():
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    else:
        callbacks.append(EpochLine(fd.k, n_trained, cfg.epochs))
    return ckpt_cb, timer, callbacks, min_epochs


def _trainer(
    cfg: TrainConfig, rd: RunDir, fd: FoldDir, callbacks: list[Any], min_epochs: int
) -> Any:
    """The Lightning ``Trainer`` of one fold."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    strategy: Any = cfg.strategy
    if cfg.strategy == "ddp" and cfg.scheme_obj.dynamic:
        from lightning.pytorch.strategies import DDPStrategy

        # gradual unfreezing changes which parameters get gradients during training
        strategy = DDPStrategy(find_unused_parameters=True)
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=_devices(cfg.devices),
        strategy=strategy,
        num_nodes=cfg.num_nodes,
        precision=resolve_precision(cfg),
        max_epochs=cfg.epochs,
        min_epochs=min_epochs,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes > 0 else None,
        callbacks=callbacks,
        logger=[
            CSVLogger(rd.logs / "csv", name=fold_name(fd.k)),
            TensorBoardLogger(rd.logs / "tensorboard", name=fold_name(fd.k)),
        ],
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=50,
        default_root_dir=str(fd.path),
        benchmark=False,
        # checkpoints are cloned on the training thread and written in the background, so
        # the per-epoch last.ckpt (needed for --resume) does not stall a fast GPU; each
        # file is still written to a temporary name and renamed, and fit waits for it
        plugins=[AsyncCheckpointIO()],
    )


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

    from svdh.train.callbacks import FoldData

    rd = RunDir(run_dir)
    fd = rd.fold(k)
    if fd.done.exists():
        return json.loads(fd.done.read_text())
    fd.path.mkdir(parents=True, exist_ok=True)
    fold = data.manifest["fold"].to_numpy(dtype=np.int64)
    train_rows, val_rows = _train_rows(fold, k), np.flatnonzero(fold == k)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise BadDatasetError(
            f"fold {k} has {len(train_rows)} training and {len(val_rows)} validation images; "
            "use fewer --folds or more patients"
        )
    L.seed_everything(cfg.seed + k, workers=True, verbose=False)
    model, module = _fold_model(cfg, targets, bins, train_rows)
    ckpt_cb, timer, callbacks, min_epochs = _fold_callbacks(cfg, fd, model, n_trained)
    if sys.stderr.isatty() and _is_main():
        print(
            f"fold {k + 1}/{n_trained}: {len(train_rows)} training and {len(val_rows)} validation images",
            file=sys.stderr,
            flush=True,
        )
    trainer = _trainer(cfg, rd, fd, callbacks, min_epochs)
    datamodule = FoldData(
        make_dataset(data, targets, train_rows, cfg.augment, cfg.aug_strength, cfg.aug_stretch),
        make_dataset(data, targets, val_rows, False),
        cfg,
        calib_ds=make_dataset(data, targets, train_rows, False),
    )
    last = _resume_point(fd)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last else None)
    seconds = time.perf_counter() - t0
    info = None
    if trainer.is_global_zero:
        fit = _FoldFit(ckpt_cb, trainer, resolve_precision(cfg), seconds, timer.seconds)
        fit.stopped_by = _budget_stop(cfg, trainer, callbacks)
        info = _finish_fold(cfg, data, targets, model.config, fd, fit)
        if info.get("stopped_by"):
            print(
                f"fold {k + 1}/{n_trained}: stopped by {info['stopped_by']} after "
                f"{info['epochs_run']} of {cfg.epochs} epochs",
                file=sys.stderr,
                flush=True,
            )
    _barrier()
    return (
        info
        if info is not None
        else (json.loads(fd.done.read_text()) if fd.done.exists() else None)
    )


def _resume_point(fd: FoldDir) -> Path | None:
    """The checkpoint an unfinished fold continues from: ``last.ckpt`` or, should the process
    have died between writing the best checkpoint and re-linking ``last.ckpt`` to it,
    ``best.ckpt``; None (start the fold afresh) when neither can be read."""
    for p in fd.resume_candidates:
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


@dataclass
class _FoldFit:
    """What a finished ``trainer.fit`` of one fold leaves for its outputs."""

    ckpt_cb: Any
    trainer: Any
    precision: str
    seconds: float
    epoch_seconds: list[float]
    stopped_by: str | None = None  # the budget option that ended training early, if one did


def _budget_stop(cfg: TrainConfig, trainer: Any, callbacks: list[Any]) -> str | None:
    """``--max-cpu-minutes M`` or ``--max-minutes M`` when that budget ended the fit early."""
    from lightning.pytorch.callbacks import Timer

    from svdh.train.callbacks import CpuBudget

    if any(isinstance(c, CpuBudget) and c.hit for c in callbacks):
        return f"--max-cpu-minutes {cfg.max_cpu_minutes:g}"
    if cfg.max_minutes > 0 and trainer.current_epoch < cfg.epochs:
        timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
        if any(
            t.time_remaining("train") is not None and t.time_remaining("train") <= 0 for t in timers
        ):
            return f"--max-minutes {cfg.max_minutes:g}"
    return None


def _best_epoch(best: Path) -> int | None:
    try:
        return int(torch.load(best, map_location="cpu", weights_only=True)["epoch"]) + 1  # 1-based
    except Exception:  # the epoch is informative only
        return None


def _finish_fold(
    cfg: TrainConfig,
    data: RunData,
    targets: Targets,
    arch: dict[str, Any],
    fd: FoldDir,
    fit: _FoldFit,
) -> dict[str, Any]:
    """Write the fold's best weights, its predictions and, last, ``done.json``."""
    k = fd.k
    best = Path(fit.ckpt_cb.best_model_path) if fit.ckpt_cb.best_model_path else fd.last_ckpt
    model = SvdhNet(**dict(arch))
    model.load_state_dict(_state_from_ckpt(best))
    score = fit.ckpt_cb.best_model_score
    best_epoch = _best_epoch(best)
    save_weights(fd.weights, model.state_dict(), arch, {"fold": k, "best_epoch": best_epoch})
    fold = data.manifest["fold"].to_numpy(dtype=np.int64)
    val_rows, test_rows = np.flatnonzero(fold == k), np.flatnonzero(fold < 0)
    device = fit.trainer.strategy.root_device

    def raw(rows: np.ndarray) -> np.ndarray:
        ds = make_dataset(data, targets, rows, False)
        return predict_raw(model, ds, cfg, device, fit.precision)

    val_raw, test_raw = raw(val_rows), raw(test_rows)
    buf = io.BytesIO()
    np.savez(buf, val_rows=val_rows, val_raw=val_raw, test_rows=test_rows, test_raw=test_raw)
    atomic_write_bytes(fd.predictions, buf.getvalue())
    info = {
        "fold": k,
        "monitor": cfg.monitor_mode[0],
        "best_score": None if score is None else float(score),
        "best_epoch": best_epoch,
        "epochs_run": int(fit.trainer.current_epoch),
        "stopped_by": fit.stopped_by,  # a budget that ended training early (None: it did not)
        "seconds": round(fit.seconds, 1),
        "epoch_seconds": fit.epoch_seconds,  # of this process's epochs (a resumed fit: the new ones)
        "n_train": int(((fold != k) & (fold >= 0)).sum()),
        "n_val": int(len(val_rows)),
        "world_size": int(fit.trainer.world_size),
        "precision": fit.precision,
    }
    write_json(fd.done, info)
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
    table.add_column("epochs run", justify="right")
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
            fmt(f.get("epochs_run"))
            + (f" (stopped by {f['stopped_by']})" if f.get("stopped_by") else ""),
            fmt(f.get("seconds"), 0),
        )
    table.add_row(
        "out-of-fold", *(fmt(metrics["overall"].get(c)) for c in cols), "", "", "", style="bold"
    )
    if metrics.get("test"):
        table.add_row(
            "test (mean of folds)",
            *(fmt(metrics["test"].get(c)) for c in cols),
            "",
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
    rd = RunDir(run_dir)
    fold = data.manifest["fold"].to_numpy(dtype=np.int64)
    parts, test_raws, test_rows = [], [], None
    for k in folds_trained:
        z = np.load(rd.fold(k).predictions)
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
            f"delete the {fold_name(0).rstrip('0')}* directories and train again"
        )
    order = {iid: i for i, iid in enumerate(data.manifest["image_id"].astype(str))}
    oof = oof.iloc[np.argsort([order[i] for i in oof["image_id"]], kind="stable")].reset_index(
        drop=True
    )
    atomic_write_text(rd.oof, oof.to_csv(index=False))
    metrics: dict[str, Any] = {"task": cfg.task, "monitor": cfg.monitor_mode[0], "folds": []}
    for k in folds_trained:
        fm = _summary(table_metrics(cfg.task, oof[oof["fold"] == k], bins, n_boot=0))
        fm.update(
            {
                "fold": k,
                **{
                    x: infos.get(k, {}).get(x)
                    for x in ("best_epoch", "best_score", "epochs_run", "stopped_by", "seconds")
                },
            }
        )
        metrics["folds"].append(fm)
    metrics["overall"] = table_metrics(cfg.task, oof, bins, n_boot=1000)
    if test_rows is not None and test_raws:
        test = prediction_table(
            cfg, data, targets, bins, test_rows, average_raw(cfg.task, test_raws), -1
        )
        atomic_write_text(rd.test, test.to_csv(index=False))
        metrics["test"] = table_metrics(cfg.task, test, bins, n_boot=1000)
    write_json(rd.metrics, metrics)
    return metrics


# --------------------------------------------------------------------------- the run


def _check_run_dir(rd: RunDir, resume: bool) -> dict[str, Any] | None:
    cfg_path = rd.config
    if cfg_path.exists():
        if not resume:
            raise BadRunError(
                f"{rd.path} already holds a run; add --resume to continue it, or choose another --out"
            )
        saved = yaml.safe_load(cfg_path.read_text())
        if not isinstance(saved, dict) or "train" not in saved:
            raise BadRunError(f"{cfg_path}: not a training run's config; choose another --out")
        return saved
    if rd.path.exists() and any(rd.path.iterdir()) and not resume:
        raise BadRunError(f"{rd.path} exists and is not empty; choose another --out")
    return None


RUNTIME_FIELDS = ("accelerator", "devices", "strategy", "num_nodes", "precision", "num_workers")


def _settings(cfg: TrainConfig, rd: RunDir, resume: bool, main: bool) -> tuple[TrainConfig, bool]:
    """The run's settings: ``cfg``, or on resume the saved ones with this call's runtime
    settings; and whether a config was saved before."""
    if main:
        saved = _check_run_dir(rd, resume)
    else:
        saved = yaml.safe_load(rd.config.read_text()) if rd.config.exists() else None
    if saved is not None:
        runtime = {f: getattr(cfg, f) for f in RUNTIME_FIELDS}
        cfg = TrainConfig.from_run_config(saved)
        for f, v in runtime.items():
            setattr(cfg, f, v)
    return cfg.validate(), saved is not None


def _with_folds(cfg: TrainConfig, rd: RunDir, data: RunData) -> RunData:
    """``data`` with its manifest's ``fold`` column: from ``folds.csv`` of a started run, the
    source's own, or freshly assigned."""
    manifest = data.manifest.reset_index(drop=True)
    manifest.attrs.update(data.manifest.attrs)
    if "image_id" not in manifest.columns:
        raise BadDatasetError("the manifest has no image_id column")
    if rd.folds_csv.exists():
        f = pd.read_csv(rd.folds_csv, dtype={"image_id": str, "patient_id": str})
        if set(f["image_id"]) != set(manifest["image_id"].astype(str)):
            raise BadRunError(
                f"{rd.folds_csv}: the images of the source changed since the run started; "
                "start a new run with another --out"
            )
        fmap = dict(zip(f["image_id"], f["fold"], strict=True))
        manifest["fold"] = [int(fmap[i]) for i in manifest["image_id"].astype(str)]
    elif "fold" not in manifest.columns:
        manifest = assign_run_folds(cfg, manifest)
    return RunData(manifest, data.images, data.preprocess, data.source or cfg.source)


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
    rd = RunDir(out)
    main = _is_main()
    cfg, started = _settings(cfg, rd, resume, main)
    data = _with_folds(cfg, rd, data if data is not None else load_run_data(cfg))
    manifest = data.manifest
    bins, scope = resolve_bins(cfg, manifest)
    targets = build_targets(cfg, manifest, bins)
    folds_trained = (
        [0] if cfg.folds == 1 else sorted(int(k) for k in set(manifest["fold"]) if k >= 0)
    )
    if main:
        rd.path.mkdir(parents=True, exist_ok=True)
        if not rd.folds_csv.exists():
            cols = ["image_id", "patient_id", "fold"]
            atomic_write_text(rd.folds_csv, manifest[cols].to_csv(index=False))
        if not started:
            write_yaml(rd.config, run_config(cfg, data, bins, scope, kind))
    _barrier()
    infos: dict[int, dict] = {}
    for k in folds_trained:
        info = fit_fold(cfg, data, targets, bins, k, rd.path, len(folds_trained))
        if info:
            infos[k] = info
    if not main:
        return {}
    metrics = assemble_outputs(cfg, data, targets, bins, rd.path, folds_trained, infos)
    if not quiet:
        print_metrics_table(
            metrics, f"{kind} {rd.path.name}: {cfg.task}, {cfg.backbone}, {cfg.init}, {cfg.scheme}"
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

    tc = cfg.to_run_dict()
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
        "max_score": bins.max_score if (bins and cfg.task == Task.REGRESSION) else None,
        "dropout": cfg.dropout,
        "tta_flip": True,  # flip test-time augmentation (docs/benchmarks.md: it helps)
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
