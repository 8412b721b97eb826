"""The paper's question on phantoms: does bone-age pretraining help, and with which scheme?

Bo, Coates and Papiez (MIUA 2024) pretrained on RSNA Bone Age and fine-tuned on RA2-DREAM
with several schemes. Here both data sets are phantoms (``svdh.synth``): a child cohort
(``--mode child``, the RSNA analogue) pretrains ResNet-18 and MobileNetV2 on bone age
(``svdh pretrain``'s code path); RA cohorts (uniform severity) of 200 and 1,000 training
hands are then fitted from scratch (scheme ``full``) and from the bone-age model with every
scheme, and each model is scored on the same 200 hands of unseen phantom patients.

"Training hands" include the 20% validation split used for early model selection.

    python benchmarks/bench_transfer_phantom.py --out /tmp/transfer --size 64 --epochs 10

With ``--pretrained RUN`` the bone-age model is a finished run instead (the real-radiograph
pillar: ``svdh pretrain`` on RSNA films), fine-tuned on the same phantom RA cohorts:

    python benchmarks/bench_transfer_phantom.py --out /tmp/transfer_rsna --size 96 \
        --backbones resnet18 --schemes full,discriminative --pretrained RSNA_RUN
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

SCHEMES = ("full", "head", "partial:2", "gradual", "discriminative")


def cohort(
    path: Path, n: int, mode: str, seed: int, size: int, workers: int, severity: str = "uniform"
) -> Path:
    from svdh.synth import generate_cohort

    if not (path / ("training.csv" if mode == "ra" else "boneage.csv")).exists():
        generate_cohort(
            path, n=n, mode=mode, size=size, seed=seed, severity=severity, workers=workers
        )
    return path


def ra_data(pool: Path, test: Path, n_hands: int, size: int, seed: int):
    """RunData: the first ``n_hands`` hands of the pool (train + 20% validation) + the test cohort."""
    from svdh.data.cache import ensure_cache
    from svdh.data.splits import assign_folds
    from svdh.train.data import LazyImages
    from svdh.train.loop import RunData

    c_pool = ensure_cache(f"ra2-dream:{pool}", size, progress=False)
    c_test = ensure_cache(f"ra2-dream:{test}", size, progress=False)
    mp = c_pool.manifest
    patients = list(dict.fromkeys(mp["patient_id"]))[: n_hands // 2]
    mp = mp[mp["patient_id"].isin(patients)].copy()
    mp = assign_folds(mp, n_folds=5, seed=seed, stratify="svdh")
    mt = c_test.manifest.copy()
    mt["fold"] = -1
    images = np.concatenate(
        [np.asarray(c_pool.images[mp["cache_index"].to_numpy()]), np.asarray(c_test.images)]
    )
    mt["cache_index"] = mt["cache_index"] + len(mp)
    mp["cache_index"] = np.arange(len(mp))
    man = pd.concat([mp, mt], ignore_index=True)
    man.attrs["source"] = f"ra2-dream:{pool} (+ test {test})"
    return RunData(man, LazyImages(images), c_pool.config.to_dict(), man.attrs["source"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--size", type=int, default=64, help="training image size (phantoms drawn at 2x)"
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--children", type=int, default=1500)
    ap.add_argument("--hands", default="200,1000")
    ap.add_argument("--backbones", default="resnet18,mobilenet_v2")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--workers", type=int, default=2, help="phantom generation and loader workers")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--augment", action="store_true", help="training augmentation (off: as the learning test)"
    )
    ap.add_argument(
        "--pretrained",
        type=Path,
        help="a finished bone-age run (e.g. svdh pretrain on real RSNA films) to fine-tune from "
        "instead of pretraining on phantom children (one backbone: the run's)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("SVDH_CACHE_DIR", str(a.out / "cache"))
    from svdh.train import TrainConfig, train_run

    hands = [int(h) for h in a.hands.split(",")]
    draw = 2 * a.size
    t0 = time.time()
    child = (
        None if a.pretrained else cohort(a.out / "child", a.children, "child", 1, draw, a.workers)
    )
    pool = cohort(a.out / "ra_pool", max(hands) // 2, "ra", 2, draw, a.workers)
    test = cohort(a.out / "ra_test", 100, "ra", 3, draw, a.workers)
    print(f"phantoms ready in {time.time() - t0:.0f} s", file=sys.stderr)
    common = dict(
        image_size=a.size,
        batch_size=a.batch_size,
        lr=a.lr,
        accelerator=a.accelerator,
        num_workers=0 if a.accelerator == "cpu" else a.workers,
        patience=0,
        devices="1",
        seed=0,
        augment=a.augment,
    )
    results_path = a.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["backbone"], r["init"], r["scheme"], r["hands"]) for r in results}
    for bb in a.backbones.split(","):
        pre = a.pretrained or a.out / f"pretrain_{bb}"
        if not (pre / "metrics.json").exists():
            t = time.time()
            m = train_run(
                TrainConfig(
                    source=f"rsna-boneage:{child}",
                    task="boneage",
                    backbone=bb,
                    folds=1,
                    val_fraction=0.15,
                    test_fraction=0.1,
                    epochs=a.pretrain_epochs,
                    use_sex=True,
                    loss="huber",
                    **common,
                ),
                pre,
                resume=pre.exists(),
                kind="pretrain",
                quiet=True,
            )
            print(
                f"{bb} bone-age pretraining: test MAE {m['test']['mae']:.1f} months ({time.time() - t:.0f} s)",
                file=sys.stderr,
            )
        for n in hands:
            data = ra_data(pool, test, n, a.size, seed=0)
            runs = [("scratch", "full")] + [(f"checkpoint:{pre}", s) for s in a.schemes.split(",")]
            for init, scheme in runs:
                init_name = "scratch" if init == "scratch" else "bone age"
                if a.pretrained and init != "scratch":
                    init_name = "RSNA bone age"
                if (bb, init_name, scheme, n) in done:
                    continue
                out = (
                    a.out
                    / "runs"
                    / f"{bb}_{init_name.replace(' ', '')}_{scheme.replace(':', '')}_{n}"
                )
                t = time.time()
                cfg = TrainConfig(
                    source=data.source,
                    task="regression",
                    backbone=bb,
                    init=init,
                    scheme=scheme,
                    folds=1,
                    epochs=a.epochs,
                    **common,
                )
                m = train_run(cfg, out, resume=out.exists(), data=data, quiet=True)
                r = {
                    "backbone": bb,
                    "init": init_name,
                    "scheme": scheme,
                    "hands": n,
                    "pcc": m["test"]["pcc"],
                    "rmse": m["test"]["rmse"],
                    "mae": m["test"]["mae"],
                    "val_pcc": m["overall"]["pcc"],
                    "seconds": round(time.time() - t),
                }
                results.append(r)
                results_path.write_text(json.dumps(results, indent=1))
                print(
                    f"{bb:14s} {init_name:8s} {scheme:15s} {n:5d} hands: test PCC {r['pcc']:.3f} "
                    f"RMSE {r['rmse']:.1f} ({r['seconds']} s)",
                    file=sys.stderr,
                )
    print(
        "| backbone | init | scheme | " + " | ".join(f"{n} hands PCC / RMSE" for n in hands) + " |"
    )
    print("|---|---|---|" + "---|" * len(hands))
    df = pd.DataFrame(results)
    for (bb, init, scheme), g in df.groupby(["backbone", "init", "scheme"], sort=False):
        cells = []
        for n in hands:
            row = g[g["hands"] == n]
            cells.append(
                f"{row['pcc'].iloc[0]:.3f} / {row['rmse'].iloc[0]:.1f}" if len(row) else "-"
            )
        print(f"| {bb} | {init} | {scheme} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
