"""Framework overhead: images/s of svdh's training engine against a bare PyTorch loop.

Both train the same model (same seed, optimiser param groups and learning-rate schedule) on
the same data set object (same augmentation, loader settings and batch size) for the same
epochs, validating once per epoch; they alternate ``--repeats`` times in one process and the
medians are compared. The svdh side is ``svdh.train.train_run`` (what ``svdh train`` runs)
on one train/validation split; its time is ``trainer.fit`` (Lightning set-up, checkpoints,
logs, validation metrics, early-stopping bookkeeping included), read from ``done.json``.
Two figures: the whole fit (set-up and first epoch included) and the steady state (the
median images/s of epochs 2 onwards, training + validation + checkpointing of each epoch).

    python benchmarks/bench_train_overhead.py --n 640 --size 64 --backbone resnet18 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from svdh.models import build_model
from svdh.models.schemes import Scheme, param_groups
from svdh.train import TrainConfig, train_run
from svdh.train.callbacks import _loader
from svdh.train.data import LazyImages
from svdh.train.loop import (
    RunData,
    _target_stats,
    build_targets,
    make_dataset,
    resolve_bins,
)


def synthetic_data(n: int, size: int, seed: int = 0) -> RunData:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    man = pd.DataFrame(
        {
            "image": [f"/mem/{i}.png" for i in range(n)],
            "image_id": [f"im{i}" for i in range(n)],
            "patient_id": [f"P{i}" for i in range(n)],
            "side": "L",
            "svdh": rng.uniform(0, 100, n).round(),
            "score_scope": "hand",
        }
    )
    man["fold"] = np.where(np.arange(n) % 5 == 0, 0, 1)  # 20% validation (fold 0)
    return RunData(man, LazyImages(images), {"size": size}, "synthetic")


def bare_loop(cfg: TrainConfig, data: RunData) -> tuple[float, list[float]]:
    """Seconds of a plain PyTorch train + per-epoch validation loop, and of each epoch."""
    device = torch.device("cuda" if cfg.accelerator in ("gpu", "cuda") else "cpu")
    bins, _ = resolve_bins(cfg, data.manifest)
    targets = build_targets(cfg, data.manifest, bins)
    fold = data.manifest["fold"].to_numpy()
    tr, va = np.flatnonzero(fold == 1), np.flatnonzero(fold == 0)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, cfg.task, max_score=140)
    model.set_target_stats(*_target_stats(model, targets.y[tr]))
    model.to(device)
    train_ds, val_ds = (
        make_dataset(data, targets, tr, cfg.augment),
        make_dataset(data, targets, va, False),
    )
    train_dl = _loader(train_ds, cfg, shuffle=True, drop_last=True)
    val_dl = _loader(val_ds, cfg, shuffle=False)
    opt = torch.optim.AdamW(
        param_groups(model, Scheme.parse(cfg.scheme), cfg.lr, cfg.lr_decay, cfg.weight_decay)
    )
    total = len(train_dl) * cfg.epochs
    warm = max(1, int(total * cfg.warmup_fraction))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.02 + 0.49 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total - warm))))
        ),
    )
    amp = device.type == "cuda" and "mixed" in cfg.precision
    dtype = torch.bfloat16 if cfg.precision.startswith("bf16") else torch.float16
    loss_fn = torch.nn.MSELoss()
    t0 = time.perf_counter()
    epochs = []
    for _ in range(cfg.epochs):
        te = time.perf_counter()
        model.train()
        for b in train_dl:
            x, y = b["x"].to(device, non_blocking=True), b["y"][:, :1].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                raw = model.forward_raw(x)
            loss = loss_fn(raw.float(), model.encode_target(y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        preds, trues = [], []
        with torch.no_grad():
            for b in val_dl:
                with torch.autocast(device.type, dtype=dtype, enabled=amp):
                    preds.append(model(b["x"].to(device)).float().cpu())
                trues.append(b["y"][:, :1])
        rmse = float(torch.sqrt(((torch.cat(preds) - torch.cat(trues)) ** 2).mean()))
        epochs.append(time.perf_counter() - te)  # the float() above waited for the GPU
    assert math.isfinite(rmse)
    return time.perf_counter() - t0, epochs


def svdh_engine(cfg: TrainConfig, data: RunData, out: Path) -> tuple[float, list[float]]:
    """Seconds of ``trainer.fit`` (set-up included) and of each epoch, from done.json."""
    train_run(cfg, out, data=data, quiet=True)
    done = json.loads((out / "fold_0" / "done.json").read_text())
    return float(done["seconds"]), list(done["epoch_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=640, help="images (80%% train, 20%% validation)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = synthetic_data(a.n, a.size)
    cfg = TrainConfig(
        source="synthetic",
        backbone=a.backbone,
        folds=1,
        epochs=a.epochs,
        batch_size=a.batch_size,
        image_size=a.size,
        num_workers=a.num_workers,
        accelerator=a.accelerator,
        precision=a.precision,
        patience=0,
        devices="1",
    )
    n_train = int((data.manifest["fold"] == 1).sum())
    imgs = n_train * a.epochs
    bare, eng, bare_ep, eng_ep = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(cfg, data)  # warm-up: allocator, kernels, page cache
        for r in range(a.repeats):
            t, ep = bare_loop(cfg, data)
            bare.append(imgs / t)
            bare_ep += [n_train / s for s in ep[1:]]
            t, ep = svdh_engine(cfg, data, Path(tmp) / f"run{r}")
            eng.append(imgs / t)
            eng_ep += [n_train / s for s in ep[1:]]
            print(
                f"repeat {r + 1}: whole fit: bare {bare[-1]:.1f} img/s, svdh {eng[-1]:.1f} img/s; "
                f"epochs 2+: bare {statistics.median(bare_ep):.1f}, svdh {statistics.median(eng_ep):.1f}",
                file=sys.stderr,
            )
    dev = (
        torch.cuda.get_device_name()
        if a.accelerator in ("gpu", "cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    what = (
        f"{a.backbone} {a.size}px, batch {a.batch_size}, {n_train} train + {a.n - n_train} val images, "
        f"{a.epochs} epochs, {a.precision}, {a.num_workers} loader workers, {dev}"
    )
    for label, b, e in (
        ("whole fit", statistics.median(bare), statistics.median(eng)),
        ("epochs 2+", statistics.median(bare_ep), statistics.median(eng_ep)),
    ):
        print(
            f"| {what} | {label} | {b:.1f} | {e:.1f} | {e / b:.3f} ({(1 - e / b) * 100:+.1f}% slower) |"
        )


if __name__ == "__main__":
    main()
