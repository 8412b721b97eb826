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

from svdh.data.cache import open_cache
from svdh.models.net import recalibrate_batchnorm
from svdh.models.weights import load_run

RUN = "/tmp/ba/boneage_full"
CACHE = "/tmp/boneage_cache/rsna-boneage-rsna-boneage-100px-96px-1b4b17a91d"


class Images:
    """Cached model inputs and the sex input (+1 male, -1 female, 0 unknown) by image id."""

    def __init__(self) -> None:
        c = open_cache(CACHE)
        self.cache, self.man = c, c.manifest.set_index("image_id")

    def x(self, ids: list[str]) -> torch.Tensor:
        rows = self.man.loc[ids, "cache_index"].to_numpy()
        return torch.from_numpy(self.cache.batch(rows)).float().div(255).unsqueeze(1)

    def sex(self, ids: list[str]) -> torch.Tensor:
        mm = pd.to_numeric(self.man.loc[ids, "male"], errors="coerce").to_numpy(dtype=np.float64)
        return torch.tensor(np.where(np.isfinite(mm), 2 * mm - 1, 0.0), dtype=torch.float32)

    def batches(self, ids: list[str], size: int):  # noqa: ANN201
        for i in range(0, len(ids), size):
            b = ids[i : i + size]
            yield self.x(b), self.sex(b)


def predict(model: torch.nn.Module, im: Images, ids: list[str]) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(x, s)[:, 0].numpy() for x, s in im.batches(ids, 64)])


def figures(name: str, p: np.ndarray, y: np.ndarray) -> None:
    e = p - y
    print(
        f"{name}: n {len(y)} MAE {np.abs(e).mean():.1f} RMSE {np.sqrt((e**2).mean()):.1f} "
        f"bias {e.mean():.1f} PCC {np.corrcoef(p, y)[0, 1]:.3f}"
    )


def main(split: str) -> None:
    torch.set_num_threads(1)
    model = load_run(RUN).models[0].float()
    im = Images()
    folds = pd.read_csv(f"{RUN}/folds.csv", dtype=str)
    train = list(folds.loc[folds.fold.astype(int) >= 1, "image_id"].sample(1024, random_state=0))
    rows = pd.read_csv(f"{RUN}/{'test' if split == 'test' else 'oof'}.csv", dtype={"image_id": str})
    ids, y = list(rows.image_id), rows.y_true.to_numpy()
    figures(f"{split}, stored statistics", predict(model, im, ids), y)
    recalibrate_batchnorm(model, im.batches(train, 32))
    p = predict(model, im, ids)
    figures(f"{split}, statistics on clean training images", p, y)
    band = (y // 36).astype(int)
    print(
        {
            f"{3 * b}-{3 * b + 3} y": round(float((p - y)[band == b].mean()), 1)
            for b in np.unique(band)
        }
    )


if __name__ == "__main__":
    main("test" if "test" in sys.argv else "validation")
