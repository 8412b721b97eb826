"""Phantom accuracy at a resolution where damage is visible: members, mean, stacking, baselines.

The fixed protocol of issue 12, section 3, that anyone can rerun:

* **data:** phantom RA cohorts (``svdh.synth``) of ``uniform`` and ``cohort`` severity;
  200 and 1,000 training patients (both hands each; seed 11), and 200 unseen test patients
  of another seed (12), drawn at twice the training size;
* **resolution:** 128 px on the CPU (``--size``; 256 and 512 on a GPU);
* **models:** each member (``--members``) is trained with ``--folds`` folds on the training
  patients (out-of-fold predictions for the ensemble), its fold models averaged on the test
  patients; then the plain mean of the members and the stacking ensemble
  (``svdh.evaluate.ensemble.build_ensemble``, nested cross-validation);
  ``--init pretrain`` first pretrains each backbone on bone age of phantom children;
* **figures**, on the test patients: PCC with its 95% CI (patients resampled), RMSE, ICC(2,1)
  and the quadratic-weighted kappa of the severity class; beside the mean predictor and a
  ridge regression on global image statistics (mean and SD of the image and of its bright
  region, the area of that region), which cannot read joints.

    python benchmarks/bench_accuracy.py --out /tmp/acc               # the protocol (hours on CPU)
    python benchmarks/bench_accuracy.py --out /tmp/acc --quick       # minutes: 60 patients, 64 px
    python benchmarks/bench_accuracy.py --out /tmp/acc --patients 200 --severities uniform

Results accumulate in ``OUT/results.json`` (a rerun skips finished cells) and the table is
printed in Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

#: (backbone, task, extra train settings) of each member; the registry names them.
MEMBERS = {
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", {}),
    "mobilenet_v2": ("mobilenet_v2", {}),
    "efficientnet_b0": ("efficientnet_b0", {}),
}


def cohort(
    path: Path, n: int, mode: str, seed: int, size: int, severity: str, workers: int
) -> Path:
    from svdh.synth import generate_cohort

    if not (path / ("training.csv" if mode == "ra" else "boneage.csv")).exists():
        generate_cohort(
            path, n=n, mode=mode, size=size, seed=seed, severity=severity, workers=workers
        )
    return path


def run_data(train: Path, test: Path, n_patients: int, size: int, folds: int) -> Any:
    """RunData: the first ``n_patients`` training patients in ``folds`` folds + the test cohort
    as the run's held-out test split (fold -1)."""
    from svdh.data.cache import ensure_cache
    from svdh.data.splits import assign_folds
    from svdh.train.data import LazyImages
    from svdh.train.loop import RunData

    c_tr = ensure_cache(f"ra2-dream:{train}", size, progress=False)
    c_te = ensure_cache(f"ra2-dream:{test}", size, progress=False)
    mp = c_tr.manifest
    patients = list(dict.fromkeys(mp["patient_id"]))[:n_patients]
    mp = mp[mp["patient_id"].isin(patients)].copy()
    mp = assign_folds(mp, n_folds=folds, seed=0, stratify="svdh")
    mt = c_te.manifest.copy()
    mt["fold"] = -1
    mt["patient_id"] = "T" + mt["patient_id"].astype(str)  # never equal to a training patient
    mt["image_id"] = "T" + mt["image_id"].astype(str)
    images = np.concatenate(
        [np.asarray(c_tr.images[mp["cache_index"].to_numpy()]), np.asarray(c_te.images)]
    )
    mt["cache_index"] = np.arange(len(mt)) + len(mp)
    mp["cache_index"] = np.arange(len(mp))
    man = pd.concat([mp, mt], ignore_index=True)
    man.attrs.update(c_tr.manifest.attrs)
    man.attrs["source"] = f"ra2-dream:{train} (+ test {test})"
    return RunData(man, LazyImages(images), c_tr.config.to_dict(), man.attrs["source"])


def image_statistics(images: np.ndarray) -> np.ndarray:
    """Four global statistics per image: mean, SD, and the mean and area of the bright
    region (pixels above the image's Otsu threshold). They see brightness and hand size,
    not joints."""
    from skimage.filters import threshold_otsu

    out = []
    for im in np.asarray(images, np.float32) / 255.0:
        t = threshold_otsu(im) if np.ptp(im) > 0 else 1.0
        fg = im > t
        bright = im[fg] if fg.any() else im.reshape(-1)
        out.append([im.mean(), im.std(), bright.mean(), bright.std(), fg.mean()])
    return np.asarray(out)


def figures(y: np.ndarray, p: np.ndarray, patients: np.ndarray, bins: Any) -> dict[str, Any]:
    from svdh.evaluate.metrics import class_metrics, score_metrics

    with np.errstate(invalid="ignore", divide="ignore"):
        s = score_metrics(y, p, bins=bins, groups=patients, n_boot=500)
        c = class_metrics(
            np.asarray(bins.to_class(y)).reshape(-1),
            np.asarray(bins.to_class(np.clip(p, 0, bins.max_score))).reshape(-1),
            bins.n_classes,
        )
    return {
        "pcc": s["pcc"],
        "pcc_ci": s["pcc_ci"],
        "rmse": s["rmse"],
        "icc": s["icc"],
        "qwk": c["qwk"],
    }


def baselines(data: Any, bins: Any) -> dict[str, dict[str, Any]]:
    """The mean predictor and the global-statistics ridge, fitted on the training patients."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    man = data.manifest
    y = man["svdh"].to_numpy(float)
    tr, te = man["fold"].to_numpy() >= 0, man["fold"].to_numpy() < 0
    X = image_statistics(np.asarray(data.images.array)[man["cache_index"].to_numpy()])
    pid = man["patient_id"].to_numpy()
    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    ridge.fit(X[tr], y[tr])
    return {
        "mean predictor": figures(y[te], np.full(te.sum(), y[tr].mean()), pid[te], bins),
        "global-statistics ridge": figures(y[te], ridge.predict(X[te]), pid[te], bins),
    }


def pretrain(out: Path, backbone: str, children: Path, common: dict[str, Any], epochs: int) -> str:
    from svdh.train import TrainConfig, train_run

    pre = out / f"pretrain_{backbone}"
    if not (pre / "metrics.json").exists():
        cfg = TrainConfig(
            source=f"rsna-boneage:{children}",
            task="boneage",
            backbone=backbone,
            folds=1,
            val_fraction=0.15,
            epochs=epochs,
            use_sex=True,
            loss="huber",
            **common,
        )
        m = train_run(cfg, pre, resume=pre.exists(), kind="pretrain", quiet=True)
        print(f"{backbone}: bone-age MAE {m['overall']['mae']:.1f} months", file=sys.stderr)
    return f"checkpoint:{pre}"


def cell(
    a: argparse.Namespace, severity: str, n: int, common: dict[str, Any], inits: dict[str, str]
) -> list[dict[str, Any]]:
    """Every member, the mean, stacking and the baselines for one (severity, n) cell."""
    from svdh.evaluate.ensemble import build_ensemble
    from svdh.runs.tables import read_run
    from svdh.train import TrainConfig, train_run

    draw = 2 * a.size
    train = cohort(
        a.out / f"ra_{severity}_train", max(a.patients_list), "ra", 11, draw, severity, a.workers
    )
    test = cohort(
        a.out / f"ra_{severity}_test", a.test_patients, "ra", 12, draw, severity, a.workers
    )
    data = run_data(train, test, n, a.size, a.folds)
    from svdh.core.scoring import SeverityBins

    bins = SeverityBins.hand()
    rows = [
        {"severity": severity, "patients": n, "model": k, **v}
        for k, v in baselines(data, bins).items()
    ]
    dirs, preds = [], []
    for name in a.members_list:
        backbone, extra = MEMBERS[name]
        out = a.out / "runs" / f"{severity}_{n}_{name}"
        t0 = time.time()
        cfg = TrainConfig(
            source=data.source,
            task="regression",
            backbone=backbone,
            init=inits.get(backbone, "scratch"),
            folds=a.folds,
            epochs=a.epochs,
            **common,
            **extra,
        )
        train_run(cfg, out, resume=out.exists(), data=data, quiet=True)
        test_df = pd.read_csv(out / "test.csv", dtype={"patient_id": str})
        preds.append(test_df["y_pred"].to_numpy(float))
        dirs.append(out)
        f = figures(
            test_df["y_true"].to_numpy(float), preds[-1], test_df["patient_id"].to_numpy(), bins
        )
        rows.append(
            {
                "severity": severity,
                "patients": n,
                "model": name,
                **f,
                "seconds": round(time.time() - t0),
            }
        )
        print(
            f"{severity} {n} {name}: test PCC {f['pcc']:.3f} ({rows[-1]['seconds']} s)",
            file=sys.stderr,
        )
    y, pid = test_df["y_true"].to_numpy(float), test_df["patient_id"].to_numpy()
    if len(dirs) > 1:
        rows.append(
            {
                "severity": severity,
                "patients": n,
                "model": "mean of members",
                **figures(y, np.mean(preds, axis=0), pid, bins),
            }
        )
        ens = build_ensemble(dirs, a.out / "runs" / f"{severity}_{n}_stacking", n_boot=0)
        st = read_run(ens).test
        rows.append(
            {
                "severity": severity,
                "patients": n,
                "model": "stacking",
                **figures(
                    st["y_true"].to_numpy(float),
                    st["y_pred"].to_numpy(float),
                    st["patient_id"].to_numpy(),
                    bins,
                ),
            }
        )
        nested = json.loads((ens / "metrics.json").read_text())
        rows[-1]["nested_cv_pcc"] = nested.get("overall", {}).get("pcc")
        rows[-1]["best_member_oof_pcc"] = max(
            (m.get("pcc") or float("nan")) for m in nested.get("members", {}).values()
        )
    return rows


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| severity | training patients | model | PCC [95% CI] | RMSE | ICC | QWK |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ci = r.get("pcc_ci") or [float("nan")] * 2
        lines.append(
            f"| {r['severity']} | {r['patients']} | {r['model']} | {r['pcc']:.3f} "
            f"[{ci[0]:.2f}, {ci[1]:.2f}] | {r['rmse']:.1f} | {r['icc']:.3f} | {r['qwk']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="60 patients, 64 px, 4 epochs, 2 members")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--patients", default="200,1000", help="training patients per cell")
    ap.add_argument("--test-patients", type=int, default=200)
    ap.add_argument("--severities", default="uniform,cohort")
    ap.add_argument("--members", default="resnet18,resnet50,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--init", choices=("scratch", "pretrain"), default="pretrain")
    ap.add_argument("--children", type=int, default=1000, help="phantom children for pretraining")
    ap.add_argument("--pretrain-epochs", type=int, default=10)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.quick:
        a.size, a.patients, a.test_patients, a.epochs = 64, "60", 40, 4
        a.members, a.folds, a.init, a.severities = "resnet18,mobilenet_v2", 2, "scratch", "uniform"
    a.patients_list = [int(p) for p in a.patients.split(",")]
    a.members_list = a.members.split(",")
    torch.set_num_threads(a.threads)
    os.environ.setdefault("SVDH_CACHE_DIR", str(a.out / "cache"))
    common = dict(
        image_size=a.size,
        batch_size=32,
        patience=0,
        accelerator=a.accelerator,
        num_workers=0 if a.accelerator == "cpu" else a.workers,
        devices="1",
        seed=0,
    )
    inits: dict[str, str] = {}
    if a.init == "pretrain":
        children = cohort(
            a.out / "children", a.children, "child", 13, 2 * a.size, "uniform", a.workers
        )
        for name in a.members_list:
            bb = MEMBERS[name][0]
            inits[bb] = pretrain(a.out, bb, children, common, a.pretrain_epochs)
    path = a.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else []
    done = {(r["severity"], r["patients"]) for r in results}
    t0 = time.time()
    for severity in a.severities.split(","):
        for n in a.patients_list:
            if (severity, n) in done:
                continue
            results += cell(a, severity, n, common, inits)
            path.write_text(json.dumps(results, indent=1, default=float))
    print(f"{time.time() - t0:.0f} s; load average {open('/proc/loadavg').read().split()[:3]}")
    print(table(results))


if __name__ == "__main__":
    main()
