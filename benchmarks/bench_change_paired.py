"""A paired model against the difference of single-visit scores, on bench_change.py's run.

The paired model is a difference head on the single-visit model: the backbone of each fold
model is kept (frozen) and a ridge regression (scikit-learn ``RidgeCV``) maps the difference
of the two films' backbone features, plus the difference of their scores, to the change. It
is fitted on out-of-fold pairs only: fold model k's head learns from the pairs of fold k's
patients (which model k never saw), with every combination of their films (visit 1 film a/b
-> visit 2 film a/b: the true change; film a -> film b of one visit: no change). On the
unseen patients each fold model's head predicts the change and the fold predictions are
averaged, as the single-visit scores are. Compared on the same pairs (film 1 of each visit):
PCC of change, RMSE, progression AUC, and the SDC from changes measured twice.

    python benchmarks/bench_change_paired.py --out /tmp/change   (after bench_change.py)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd


def features(run_dir: Path, images: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    """Backbone features and scores of every cached image through every fold model."""
    import torch

    from svdh.models.weights import load_run

    info = load_run(run_dir)
    out = []
    with torch.no_grad():
        for net in info.models:
            feats, scores = [], []
            for i in range(0, len(images), batch):
                x = torch.from_numpy(np.asarray(images[i : i + batch], np.float32) / 255.0)
                f = net.features(x.unsqueeze(1))
                feats.append(f.numpy())
                scores.append(net.decode(net.head(f, None))[:, :1].numpy())
            out.append(np.hstack([np.vstack(feats), np.vstack(scores)]))
    return out


def film_pairs(man: pd.DataFrame) -> pd.DataFrame:
    """Every (film at visit u, film at visit v) combination per patient and hand, u <= v."""
    m = man[["patient_id", "side", "visit", "film", "row", "svdh", "fold"]]
    p = m.merge(m, on=["patient_id", "side", "fold"], suffixes=("_a", "_b"))
    keep = (p["visit_a"].astype(int) < p["visit_b"].astype(int)) | (
        (p["visit_a"] == p["visit_b"]) & (p["film_a"] < p["film_b"])
    )
    p = p[keep].reset_index(drop=True)
    p["change"] = p["svdh_b"] - p["svdh_a"]
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="bench_change.py's --out")
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args()
    import torch
    from sklearn.linear_model import RidgeCV

    from svdh.data.cache import ensure_cache

    torch.set_num_threads(1)
    os.environ.setdefault("SVDH_CACHE_DIR", str(args.out / "cache"))
    cache = ensure_cache(f"csv:{args.out / 'cohort' / 'visits.csv'}", args.size, progress=False)
    man = cache.manifest.copy()
    folds = pd.read_csv(args.out / "run" / "folds.csv", dtype={"image_id": str})
    man = man.merge(folds[["image_id", "fold"]], on="image_id")
    vis = pd.read_csv(args.out / "cohort" / "visits.csv", dtype={"image_id": str})
    man = man.merge(vis[["image_id", "film"]], on="image_id")
    man["row"] = man["cache_index"].astype(int)
    feats = features(args.out / "run", cache.images)
    pairs = film_pairs(man)
    pred = np.full(len(pairs), np.nan)
    test = pairs["fold"].to_numpy() < 0
    test_preds = []
    for k, f in enumerate(feats):
        d = f[pairs["row_b"]] - f[pairs["row_a"]]
        own = pairs["fold"].to_numpy() == k
        head = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(d[own], pairs.loc[own, "change"])
        # out-of-fold pairs of fold k: a head fitted on the other halves of fold k's patients
        pid = pairs.loc[own, "patient_id"].to_numpy()
        half = pd.Series(pid).astype("category").cat.codes.to_numpy() % 2 == 0
        idx = np.flatnonzero(own)
        for h in (True, False):
            fit = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(
                d[idx[half == h]], pairs.loc[idx[half == h], "change"]
            )
            pred[idx[half != h]] = fit.predict(d[idx[half != h]])
        test_preds.append(head.predict(d[test]))
        print(f"fold {k}: ridge alpha {head.alpha_:g} on {own.sum()} film pairs")
    pred[test] = np.mean(test_preds, axis=0)
    pairs["pred"] = pred
    results = {}
    for name, sel in (("unseen", test), ("out-of-fold", ~test)):
        results[name] = compare(pairs[sel], man, feats)
    (args.out / "bench_change_paired.json").write_text(json.dumps(results, indent=1, default=float))
    for name, r in results.items():
        print(name)
        for k, v in r.items():
            print(f"  {k}: {v}")


def compare(pairs: pd.DataFrame, man: pd.DataFrame, feats: list[np.ndarray]) -> dict:
    """Paired head against the score difference, patient level (L + R), visit 1 -> 2."""
    from sklearn.metrics import roc_auc_score

    from svdh.evaluate.change import sdc_of_differences

    cross = pairs[pairs["visit_a"] != pairs["visit_b"]]
    out: dict = {}
    one = cross[(cross["film_a"] == 1) & (cross["film_b"] == 1)]
    two = cross[(cross["film_a"] == 2) & (cross["film_b"] == 2)]
    k_of = lambda fold: int(fold) if fold >= 0 else None  # noqa: E731

    def score_diff(p: pd.DataFrame) -> np.ndarray:
        vals = []
        for r in p.itertuples():
            k = k_of(r.fold)
            fs = [feats[k]] if k is not None else feats
            vals.append(np.mean([f[r.row_b, -1] - f[r.row_a, -1] for f in fs]))
        return np.asarray(vals)

    for name, how in (("difference of single-visit scores", score_diff), ("paired head", None)):
        res = []
        for p in (one, two):
            v = how(p) if how else p["pred"].to_numpy()
            res.append(
                pd.DataFrame({"pid": p["patient_id"].to_numpy(), "t": p["change"], "v": v})
                .groupby("pid")
                .sum()
            )
        a, b = res
        t, v = a["t"].to_numpy(), a["v"].to_numpy()
        both = a.merge(b, left_index=True, right_index=True, suffixes=("", "_2"))
        out[name] = {
            "n_patients": int(len(a)),
            "pcc": float(np.corrcoef(t, v)[0, 1]),
            "rmse": float(np.sqrt(np.mean((t - v) ** 2))),
            "auc_gt5": float(roc_auc_score(t > 5, v)) if 0 < (t > 5).sum() < len(t) else None,
            "sdc_twice": float(sdc_of_differences(both["v_2"] - both["v"])),
            "sdc_known": float(1.96 * np.std(v - t, ddof=1)),
        }
    return out


if __name__ == "__main__":
    main()
