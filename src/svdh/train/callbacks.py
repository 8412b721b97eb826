"""The Lightning pieces of the training loop: one fold's data module and the callbacks that
print, time and budget its epochs. Imported by :mod:`svdh.train.loop` only when a fold
trains, so that reading runs never imports Lightning."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from svdh.train.config import TrainConfig
from svdh.train.data import CacheDataset


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


class FoldData(L.LightningDataModule):
    """One fold's training and validation sets, and the training images without augmentation
    (``calib_ds``) over which BatchNorm statistics are re-estimated (precise BN)."""

    def __init__(
        self,
        train_ds: CacheDataset,
        val_ds: CacheDataset,
        cfg: TrainConfig,
        calib_ds: CacheDataset | None = None,
    ) -> None:
        super().__init__()
        self.train_ds, self.val_ds, self.cfg = train_ds, val_ds, cfg
        self.calib_ds = calib_ds
        # its own generator: drawing these batches leaves the training's random stream as it was
        self._calib_gen = torch.Generator().manual_seed(cfg.seed)

    def calibration_dataloader(self) -> torch.utils.data.DataLoader | None:
        """Shuffled batches of the training images as validation and prediction see them (no
        augmentation): statistics taken over augmented batches differ from those of the
        clean images the model is then applied to (bone age: MAE 19.7 -> 15.5 months by
        re-estimating them on clean images; docs/benchmarks.md)."""
        if self.calib_ds is None:
            return None
        drop_last = len(self.calib_ds) > self.cfg.batch_size
        return torch.utils.data.DataLoader(
            self.calib_ds,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            drop_last=drop_last,
            generator=self._calib_gen,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        # drop a last partial batch (BatchNorm cannot train on a batch of one image)
        drop_last = len(self.train_ds) > self.cfg.batch_size
        return _loader(self.train_ds, self.cfg, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return _loader(self.val_ds, self.cfg, shuffle=False)


class EpochLine(Callback):
    """Prints one line per epoch (when there is no progress bar)."""

    def __init__(self, fold: int, n_folds: int, epochs: int) -> None:
        self.fold, self.n_folds, self.epochs = fold, n_folds, epochs
        self.t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if getattr(pl_module, "_train_n", 0):
            m["train_loss"] = float(pl_module._train_sum) / pl_module._train_n
        shown = " ".join(f"{k} {v:.4g}" for k, v in sorted(m.items()))
        dt = time.perf_counter() - self.t0
        print(
            f"fold {self.fold + 1}/{self.n_folds} epoch {trainer.current_epoch + 1}/{self.epochs}: "
            f"{shown} ({dt:.0f} s)",
            file=sys.stderr,
            flush=True,
        )


class EpochTimer(Callback):
    """Records each epoch's wall time (training + validation) in ``seconds``."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds.append(round(time.perf_counter() - self.t0, 3))


class CpuBudget(Callback):
    """Stops training once this process has used ``minutes`` of CPU time in the fold (all its
    threads; loader worker processes not included). Unlike a wall-clock limit it does not cut
    a run short because other work shares the machine."""

    def __init__(self, minutes: float) -> None:
        self.minutes = minutes
        self.start = time.process_time()
        self.hit = False  # whether this budget stopped the fit

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if time.process_time() - self.start > self.minutes * 60:
            trainer.should_stop = True
            self.hit = True
