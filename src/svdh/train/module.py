"""The Lightning module: loss, optimiser and schedule, fine-tuning scheme, validation metrics."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch

from svdh.core.scoring import SeverityBins
from svdh.models.losses import make_loss
from svdh.models.net import SvdhNet, predict_outputs, recalibrate_batchnorm
from svdh.models.schemes import (
    Scheme,
    apply_scheme,
    default_unfreeze_every,
    hold_frozen_batchnorm,
    param_groups,
)


def _pcc(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):  # near-constant predictions: NaN
        return float(np.corrcoef(a, b)[0, 1])


def ema_callback(decay: float) -> Any:
    """An EMA of the weights and buffers whose decay ramps up as ``min(decay, (1+n)/(10+n))``
    after ``n`` updates, so a run of a few hundred steps is not dominated by its start."""
    from lightning.pytorch.callbacks import WeightAveraging

    def avg_fn(avg: torch.Tensor, cur: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg * d + cur * (1.0 - d)

    return WeightAveraging(avg_fn=avg_fn, use_buffers=True)


class SvdhModule(L.LightningModule):
    """Trains one ``SvdhNet`` for one fold.

    ``train_cfg`` is ``TrainConfig.to_dict()``; ``class_weights`` are for cross-entropy.
    Hyper-parameters (model architecture included) are saved in every checkpoint.
    """

    def __init__(
        self,
        model: SvdhNet,
        train_cfg: dict[str, Any],
        bins: dict | None = None,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "model": dict(model.config),
                "train": dict(train_cfg),
                "bins": bins,
                "class_weights": class_weights,
            }
        )
        self.model = model
        self.cfg = train_cfg
        self.task = model.task
        self.bins = SeverityBins.from_dict(bins) if bins else None
        self.scheme = Scheme.parse(train_cfg.get("scheme", "full"))
        self.n_stages = len(model.spec.stages)
        self.unfreeze_every = int(train_cfg.get("unfreeze_every") or 0) or default_unfreeze_every(
            int(train_cfg["epochs"]), self.n_stages
        )
        cw = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.loss_fn = make_loss(
            self.task,
            train_cfg.get("loss") or None,
            n_classes=model.config["n_classes"],
            class_weights=cw,
            label_smoothing=float(train_cfg.get("label_smoothing", 0.0)),
            huber_delta=float(train_cfg.get("huber_delta", 1.0)),
        )
        if not self.scheme.dynamic:
            # Static schemes freeze before the strategy wraps the model (DDP registers only
            # parameters that require gradients when it is built).
            apply_scheme(self.model, self.scheme)
        self._val: list[dict[str, torch.Tensor]] = []
        self._train_sum, self._train_n = torch.zeros(()), 0

    # -- steps ----------------------------------------------------------------------------
    def _targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model.is_regression:
            y = batch["y"]
            if self.model.config["extra_heads"]:
                y = y[:, 1:3]  # erosion, JSN; the total is their sum
            else:
                y = y[:, :1]
            return self.model.encode_target(y)
        return batch["label"]

    def _loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(raw.float(), target)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        raw = self.model.forward_raw(self._images(batch), batch.get("sex"))
        loss = self._loss(raw, self._targets(batch))
        # summed on the device and logged once per epoch: per-step logging costs more Python
        # time than a fast GPU spends on a small batch
        self._train_sum = self._train_sum + loss.detach() * len(raw)
        self._train_n += len(raw)
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_sum, self._train_n = torch.zeros((), device=self.device), 0
        if self.scheme.dynamic:
            trainable = apply_scheme(
                self.model, self.scheme, self.current_epoch, self.unfreeze_every
            )
            self.log("trainable_stages", float(len(trainable)), sync_dist=False)
        hold_frozen_batchnorm(self.model)

    def on_train_epoch_end(self) -> None:
        if self._train_n:
            self.log("train_loss", self._train_sum / self._train_n, sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        raw = self.model.forward_raw_tta(self._images(batch), batch.get("sex")).float()
        rec = {"idx": batch["idx"], "raw": raw}
        if "y" in batch:
            rec["y"] = batch["y"]
        if "label" in batch:
            rec["label"] = batch["label"]
        self._val.append(rec)

    def on_validation_epoch_start(self) -> None:
        self._val = []
        n = int(self.cfg.get("precise_bn_batches", 0) or 0)
        if n > 0 and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._precise_batchnorm(n)

    def _precise_batchnorm(self, n: int) -> None:
        """Re-estimate BatchNorm statistics on up to ``n`` batches of the training images,
        without augmentation, before each validation, so validation, the checkpoint and
        predictions use statistics of the current weights on images like theirs (see
        ``recalibrate_batchnorm``)."""
        dm = getattr(self.trainer, "datamodule", None)
        calib = getattr(dm, "calibration_dataloader", None)
        loader = calib() if calib is not None else None
        if loader is None:  # no un-augmented copy of the training images: use the training batches
            loader = self.trainer.train_dataloader
        if loader is None:
            return

        def batches():  # noqa: ANN202
            for i, b in enumerate(loader):
                if i >= n:
                    break
                b = self.transfer_batch_to_device(b, self.device, 0)
                yield b["x"], b.get("sex")

        with self.trainer.precision_plugin.forward_context():
            recalibrate_batchnorm(self.model, batches())
        if self.trainer.world_size > 1:
            # every rank saw other images: average, so the ranks keep identical models
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                    for buf in (m.running_mean, m.running_var):
                        buf.copy_(self.all_gather(buf).float().mean(0).to(buf.dtype))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        cat = {k: torch.cat([r[k] for r in self._val]) for k in self._val[0]}
        self._val = []
        if self.trainer.world_size > 1:
            # Every rank saw a padded shard; gather all and keep each row once, so the metric
            # is computed on the validation fold exactly, identically on every rank.
            cat = {k: v.reshape(-1, *v.shape[2:]) for k, v in self.all_gather(cat).items()}
        idx = cat["idx"].cpu().numpy()
        _, first = np.unique(idx, return_index=True)
        keep = torch.as_tensor(first, device=cat["raw"].device)
        cat = {k: v[keep] for k, v in cat.items()}
        with torch.no_grad():
            loss = float(self._loss(cat["raw"], self._targets(cat)))
        metrics = {"val_loss": loss}
        if self.model.is_regression:
            pred = self.model.decode(cat["raw"]).cpu().numpy()[:, 0]
            true = cat["y"].cpu().numpy()[:, 0]
            err = pred - true
            metrics.update(
                val_rmse=float(np.sqrt(np.mean(err**2))),
                val_mae=float(np.mean(np.abs(err))),
                val_pcc=_pcc(true, pred),
            )
        else:
            out = predict_outputs(self.task, cat["raw"], self.bins)
            lab = cat["label"].cpu().numpy()
            metrics.update(
                val_acc=float(np.mean(out["severity_class"] == lab)),
                val_class_mae=float(np.mean(np.abs(out["severity_class"] - lab))),
            )
            if "y" in cat:
                true = cat["y"].cpu().numpy()[:, 0]
                err = out["score"] - true
                metrics.update(
                    val_rmse=float(np.sqrt(np.mean(err**2))),
                    val_mae=float(np.mean(np.abs(err))),
                    val_pcc=_pcc(true, out["score"]),
                )
        # identical on every rank already: no sync needed
        for k, v in metrics.items():
            self.log(
                k,
                v if math.isfinite(v) else float("nan"),
                prog_bar=k in ("val_loss", "val_rmse", "val_mae", "val_acc"),
            )

    # -- optimisation ---------------------------------------------------------------------
    def configure_callbacks(self) -> list[Any]:
        """EMA of the weights (``ema_decay`` > 0): validation, checkpoints and predictions
        use the averaged weights (Lightning's ``WeightAveraging``)."""
        decay = float(self.cfg.get("ema_decay", 0.0) or 0.0)
        if decay <= 0:
            return []
        return [ema_callback(decay)]

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip = float(self.cfg.get("grad_clip", 0.0) or 0.0) or gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def effective_lr(self) -> float:
        """``lr`` scaled for the processes that train together (``lr_scaling``): each adds
        one batch to every step, so the step's batch is ``world_size`` times larger."""
        from svdh.train.config import LR_SCALING

        world = int(self.trainer.world_size) if self._trainer is not None else 1
        scale = LR_SCALING[str(self.cfg.get("lr_scaling") or "none")](world)
        return float(self.cfg["lr"]) * scale

    def on_fit_start(self) -> None:
        """Channels-last memory on CUDA (``channels_last``): faster convolutions under mixed
        precision; CPUs keep the default layout."""
        if self.device.type == "cuda" and self.cfg.get("channels_last", True):
            self.model.to(memory_format=torch.channels_last)

    def _images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's images, channels-last on CUDA (``channels_last``) like the weights."""
        x = batch["x"]
        if x.is_cuda and x.ndim == 4 and self.cfg.get("channels_last", True):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        groups = param_groups(
            self.model,
            self.scheme,
            self.effective_lr(),
            float(cfg.get("lr_decay", 0.5)),
            float(cfg.get("weight_decay", 1e-4)),
        )
        opt = torch.optim.AdamW(groups)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, int(total * float(cfg.get("warmup_fraction", 0.05))))

        def schedule(step: int) -> float:
            # linear warm-up, then cosine decay to 2% of the base learning rate
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
