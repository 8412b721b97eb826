"""Bone-age recipe ablations on a subset of the RSNA 100 px copy, through the pretrain code path.

The developers' split of ``svdh pretrain`` (seed 0, 10% held-out test patients, 15%
validation) is made on the whole set; then ``--n-train`` training images, 500 validation and
``--n-test`` held-out test images are kept, and ``svdh.train.train_run`` trains one fold on
them exactly as ``svdh pretrain`` would (task boneage, sex as an input). Prints one JSON line:
test MAE, validation MAE, the bias per 3-year band of true bone age, wall and CPU seconds.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_boneage_recipe.py --name base \\
        --n-train 3000 --epochs 6 --crop 1 --loss huber
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna-boneage-100px"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_boneage_recipe"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-test", type=int, default=800)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--loss", default="huber")
    ap.add_argument("--augment", type=int, default=1)
    ap.add_argument("--aug-strength", type=float, default=1.0)
    ap.add_argument("--aug-stretch", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--sex", type=int, default=1)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--precision", default="bf16-mixed")
    a = ap.parse_args()
    import torch

    from svdh.data.cache import ensure_cache
    from svdh.evaluate.boneage import figures_of_table
    from svdh.train import TrainConfig
    from svdh.train.data import LazyImages
    from svdh.train.loop import RunData, assign_run_folds, train_run

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    src = f"rsna-boneage:{a.data}"
    cfg = TrainConfig(
        source=src, task="boneage", backbone=a.backbone, folds=1, val_fraction=0.15,
        test_fraction=0.1, epochs=a.epochs, batch_size=a.batch, image_size=a.size, lr=a.lr,
        loss=a.loss, use_sex=bool(a.sex), patience=0, accelerator="cpu", num_workers=0,
        augment=bool(a.augment), precision=a.precision, crop=bool(a.crop),
        aug_strength=a.aug_strength, aug_stretch=a.aug_stretch, weight_decay=a.weight_decay,
    )  # fmt: skip
    pre = cfg.preprocess
    cache = ensure_cache(src, a.size, cfg=pre, workers=1, progress=False)
    man = cache.manifest.copy()
    man.attrs["source"] = src
    man = assign_run_folds(cfg, man)
    rng = np.random.default_rng(0)
    f = man["fold"].to_numpy()
    keep = np.concatenate(
        [
            rng.permutation(np.flatnonzero(f > 0))[: a.n_train],
            rng.permutation(np.flatnonzero(f == 0))[:500],
            rng.permutation(np.flatnonzero(f < 0))[: a.n_test],
        ]
    )
    sub = man.iloc[np.sort(keep)].copy()
    sub.loc[sub["fold"] > 0, "fold"] = 1
    sub.attrs["source"] = src
    data = RunData(
        sub.reset_index(drop=True), LazyImages(cache.path / "images.npy"), pre.to_dict(), src
    )
    out = a.out / a.name
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.time(), time.process_time()
    m = train_run(cfg, out, data=data, quiet=True)
    fig = figures_of_table(pd.read_csv(out / "test.csv"))
    res = {
        "name": a.name,
        "args": vars(a) | {"out": str(a.out), "data": str(a.data)},
        "test_mae": round(fig["mae"], 2),
        "val_mae": round(m["overall"]["mae"], 2),
        "test_pcc": round(fig["pcc"], 3),
        "bias_by_band": {b["band"]: round(b["bias"], 1) for b in fig["by_band"]},
        "wall_s": round(time.time() - t0),
        "cpu_s": round(time.process_time() - c0),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
