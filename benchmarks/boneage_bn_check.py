"""Bone age: the same trained weights with BatchNorm statistics re-estimated on the training
images without augmentation (what precise BN now does) against the stored ones.

    OMP_NUM_THREADS=2 python benchmarks/boneage_bn_check.py test   # held-out test split
    python benchmarks/boneage_bn_check.py                          # validation split

Paths are those of the 2026-12-07 run (RUN=/tmp/ba/boneage_full, its 96 px cache); edit them
for another run. A diagnostic, not a product path.
"""

import sys

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, "/work/main/src")
from svdh.data.cache import open_cache
from svdh.models.net import recalibrate_batchnorm
from svdh.models.weights import load_run

torch.set_num_threads(1)


def main():
    run = "/tmp/ba/boneage_full"
    info = load_run(run)
    m = info.models[0].float()
    cdir = "/tmp/boneage_cache/rsna-boneage-rsna-boneage-100px-96px-1b4b17a91d"
    c = open_cache(cdir)
    man = c.manifest.set_index("image_id")
    folds = pd.read_csv(f"{run}/folds.csv", dtype=str)
    tr_ids = folds.loc[folds.fold.astype(int) >= 1, "image_id"].sample(1024, random_state=0)
    val = pd.read_csv(f"{run}/oof.csv", dtype={"image_id": str})

    def xs(ids):
        return (
            torch.from_numpy(c.batch(man.loc[list(ids), "cache_index"].to_numpy()))
            .float()
            .div(255)
            .unsqueeze(1)
        )

    def sex(ids):
        mm = pd.to_numeric(man.loc[list(ids), "male"], errors="coerce").to_numpy(dtype=np.float64)
        v = np.where(np.isfinite(mm), 2 * mm - 1, 0.0)
        return torch.tensor(v, dtype=torch.float32)

    def pred(ids):
        out = []
        ids = list(ids)
        with torch.no_grad():
            for i in range(0, len(ids), 64):
                b = ids[i : i + 64]
                out.append(m(xs(b), sex(b))[:, 0].numpy())
        return np.concatenate(out)

    y = val.y_true.to_numpy()
    p0 = pred(val.image_id)
    print(
        f"stored stats: MAE {np.abs(p0 - y).mean():.1f} bias {(p0 - y).mean():.1f} PCC {np.corrcoef(p0, y)[0, 1]:.3f} (oof.csv MAE {np.abs(val.y_pred - y).mean():.1f})"
    )
    ids = list(tr_ids)
    recalibrate_batchnorm(
        m, ((xs(ids[i : i + 32]), sex(ids[i : i + 32])) for i in range(0, len(ids), 32))
    )
    p1 = pred(val.image_id)
    print(
        f"stats on clean training images: MAE {np.abs(p1 - y).mean():.1f} bias {(p1 - y).mean():.1f} PCC {np.corrcoef(p1, y)[0, 1]:.3f}"
    )


def test_split():
    run = "/tmp/ba/boneage_full"
    info = load_run(run)
    m = info.models[0].float()
    c = open_cache("/tmp/boneage_cache/rsna-boneage-rsna-boneage-100px-96px-1b4b17a91d")
    man = c.manifest.set_index("image_id")
    folds = pd.read_csv(f"{run}/folds.csv", dtype=str)
    ids = list(folds.loc[folds.fold.astype(int) >= 1, "image_id"].sample(1024, random_state=0))

    def xs(b):
        return (
            torch.from_numpy(c.batch(man.loc[list(b), "cache_index"].to_numpy()))
            .float()
            .div(255)
            .unsqueeze(1)
        )

    def sx(b):
        mm = pd.to_numeric(man.loc[list(b), "male"], errors="coerce").to_numpy(dtype=np.float64)
        return torch.tensor(np.where(np.isfinite(mm), 2 * mm - 1, 0.0), dtype=torch.float32)

    recalibrate_batchnorm(
        m, ((xs(ids[i : i + 32]), sx(ids[i : i + 32])) for i in range(0, len(ids), 32))
    )
    t = pd.read_csv(f"{run}/test.csv", dtype={"image_id": str})
    tid = list(t.image_id)
    out = []
    with torch.no_grad():
        for i in range(0, len(tid), 64):
            b = tid[i : i + 64]
            out.append(m(xs(b), sx(b))[:, 0].numpy())
    p = np.concatenate(out)
    y = t.y_true.to_numpy()
    e = p - y
    print(
        f"TEST clean-stat: n {len(y)} MAE {np.abs(e).mean():.1f} "
        f"RMSE {np.sqrt((e**2).mean()):.1f} bias {e.mean():.1f} PCC {np.corrcoef(p, y)[0, 1]:.3f}"
    )
    band = (y // 36).astype(int)
    print({f"{3 * b}-{3 * b + 3}y": round(float(e[band == b].mean()), 1) for b in np.unique(band)})
    print(f"TEST stored: MAE {np.abs(t.y_pred - y).mean():.1f}")


if __name__ == "__main__":
    test_split() if "test" in sys.argv else main()
