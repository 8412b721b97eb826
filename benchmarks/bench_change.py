"""Change between visits on phantoms: PCC of change, progression AUC, the model's own SDC.

Protocol (issue 15): one phantom cohort followed over two visits about a year apart, every
visit filmed twice (``svdh synth --visits 2 --repeat``: the repeat films have no true change).
A share of the patients (``--test-fraction``) is held out of training and model selection
(unseen patients); the rest trains a single-visit model with patient-grouped folds (all of a
patient's visits and films in one fold), whose out-of-fold predictions give out-of-fold change
pairs. Those calibrate the change interval (split-conformal), the progression probability and
the model's SDC from known change. On the unseen patients the benchmark reports:

* PCC and ICC of predicted against true patient change (0-280), RMSE of change;
* progression (true change > threshold, default 5 = the readers' individual-level SDC)
  AUC, sensitivity, specificity; share of non-progressors true and predicted;
* the model's SDC from repeat films (changes measured twice: 1.96 SD(d) / sqrt(2)) and from
  known change, against the readers' 4-6 units on 0-280;
* the coverage of the 90% change interval calibrated on the out-of-fold pairs.

Targets: PCC of change >= 0.8, progression AUC >= 0.85, model SDC <= 5.

    nice -n 10 python benchmarks/bench_change.py --out /tmp/change --n 240 --epochs 12
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


def fmt(fig: dict | None, digits: int = 2) -> str:
    if not fig:
        return "-"
    v, (lo, hi) = fig["value"], fig["ci"]
    if not np.isfinite(v):
        return "-"
    ci = f" ({lo:.{digits}f}-{hi:.{digits}f})" if np.isfinite(lo) else ""
    return f"{v:.{digits}f}{ci}"


def table(m: dict, name: str) -> list[str]:
    sdc = m["model_sdc"]
    rep = sdc.get("changes_measured_twice", {}).get("sdc")
    films = sdc.get("films_of_one_visit", {}).get("sdc")
    pr = m["progression"]
    return [
        f"| {name}: patients / pairs | {m['n_patients']} / {m['n_pairs']} |",
        f"| PCC of predicted vs true patient change (target >= 0.8) | {fmt(m['patient']['pcc'], 3)} |",
        f"| ICC(2,1) of change | {fmt(m['patient']['icc'], 3)} |",
        f"| RMSE of change (0-280) | {fmt(m['patient']['rmse'])} |",
        f"| mean true / predicted change | {m['patient']['mean_true']:.2f} / {m['patient']['mean_pred']:.2f} |",
        f"| progression (true change > {pr['threshold']:g}) AUC (target >= 0.85) | {fmt(pr['auc'], 3)} |",
        f"| sensitivity / specificity of the call (predicted change > {pr['threshold']:g}) | {fmt(pr['sensitivity'])} / {fmt(pr['specificity'])} |",
        f"| non-progressors true / predicted | {fmt(pr['non_progressors_true'])} / {fmt(pr['non_progressors_pred'])} |",
        f"| model SDC, changes measured twice: 1.96 SD(d)/sqrt(2) (target <= 5) | {fmt(rep)} |",
        f"| model SDC, repeat films of one visit: 1.96 SD(d) | {fmt(films)} |",
        f"| model SDC from known change: 1.96 SD(error) | {fmt(sdc['known_change'])} |",
        f"| 90% change interval: coverage / mean width | {m['interval']['coverage']:.3f} / {m['interval']['mean_width']:.1f} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--n", type=int, default=240, help="phantom patients (2 visits x 2 films x 2 hands)"
    )
    ap.add_argument("--draw-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=96, help="training image size")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--severity", default="cohort")
    ap.add_argument("--rate", type=float, default=6.0, help="--progression-rate")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--max-cpu-minutes", type=float, default=4.0, help="per fold")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()

    import torch

    from svdh.evaluate.change import ChangeCalibration, change_metrics, change_pairs
    from svdh.synth.visits import VISITS_CSV, generate_visits
    from svdh.train import TrainConfig, train_run

    torch.set_num_threads(1)
    os.environ.setdefault("SVDH_CACHE_DIR", str(args.out / "cache"))
    cohort = args.out / "cohort"
    t0 = time.time()
    if not (cohort / VISITS_CSV).exists():
        generate_visits(
            cohort,
            args.n,
            visits=2,
            repeat=True,
            progression_rate=args.rate,
            size=args.draw_size,
            seed=args.seed,
            severity=args.severity,
            workers=args.workers,
        )
    t_synth = time.time() - t0
    cfg = TrainConfig(
        source=f"csv:{cohort / VISITS_CSV}",
        task="regression",
        backbone=args.backbone,
        init="scratch",
        folds=args.folds,
        test_fraction=args.test_fraction,
        image_size=args.size,
        epochs=args.epochs,
        batch_size=32,
        lr=1e-3,
        extra_heads=True,
        augment=False,
        patience=0,
        max_cpu_minutes=args.max_cpu_minutes,
        num_workers=0,
        accelerator="cpu",
        seed=args.seed,
    )
    run = args.out / "run"
    t1 = time.time()
    cpu1 = time.process_time()
    if not (run / "test.csv").exists():
        train_run(cfg, run, quiet=True)
    t_train, cpu_train = time.time() - t1, time.process_time() - cpu1
    dtypes = {"patient_id": str, "visit": str, "image_id": str, "side": str}
    oof = pd.read_csv(run / "oof.csv", dtype=dtypes)
    test = pd.read_csv(run / "test.csv", dtype=dtypes)
    pairs = change_pairs(oof)
    cal = ChangeCalibration.fit(pairs["dy_P_true"], pairs["dy_P_pred"])
    m_oof = change_metrics(oof, n_boot=args.n_boot, seed=args.seed)
    m_test = change_metrics(test, n_boot=args.n_boot, seed=args.seed, calibration=cal)
    single = float(np.corrcoef(test["y_true"], test["y_pred"])[0, 1])
    rmse1 = float(np.sqrt(np.mean((test["y_true"] - test["y_pred"]) ** 2)))
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "synth_s": t_synth,
        "train_wall_s": t_train,
        "train_cpu_s": cpu_train,
        "single_visit_test_hand_pcc": single,
        "single_visit_test_hand_rmse": rmse1,
        "calibration": cal.to_dict(max_residuals=21),
        "test": m_test,
        "oof": m_oof,
    }
    (args.out / "bench_change.json").write_text(json.dumps(result, indent=1, default=float))
    cmd = "python " + " ".join(sys.argv)
    lines = [
        "| figure | unseen patients (CI over patients) |",
        "|---|---|",
        *table(m_test, "unseen"),
        f"| single-visit hand score on the same films: PCC / RMSE | {single:.3f} / {rmse1:.1f} |",
        "",
        "| figure | out-of-fold pairs of the training patients |",
        "|---|---|",
        *table(m_oof, "out-of-fold"),
    ]
    text = "\n".join(lines)
    print(text)
    print(
        f"synth {t_synth:.0f} s, training + prediction {t_train:.0f} s wall / {cpu_train:.0f} s CPU"
    )
    if args.write_docs:
        docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
        section = _section(cmd, args, text, t_synth, t_train, cpu_train)
        body = docs.read_text(encoding="utf-8")
        head = "## Change between visits"
        if head in body:
            body = body[: body.index(head)].rstrip() + "\n"
        docs.write_text(body.rstrip() + "\n\n" + section, encoding="utf-8")


def _section(cmd: str, args, text: str, t_synth: float, t_train: float, cpu: float) -> str:
    return (
        "## Change between visits (issue 15)\n\n"
        f"Command: `{cmd}` (CPU, torch 1 thread, the shared 2-core machine).\n\n"
        f"Protocol: {args.n} phantom patients (`{args.severity}` severity, progression rate "
        f"{args.rate:g} a year among progressors, 35% stable), two visits about a year apart, "
        f"every visit filmed twice; drawn at {args.draw_size} px, trained at {args.size} px: "
        f"{args.backbone} from scratch, {args.folds} patient-grouped folds, {args.epochs} epochs "
        f"(at most {args.max_cpu_minutes:g} CPU minutes a fold), erosion and JSN heads; "
        f"{float(args.test_fraction):.0%} of the patients held out (unseen). Change: predicted "
        "score at visit 2 minus visit 1 (first film of each), patient = both hands (0-280). "
        "The change interval and progression probability of the unseen patients are calibrated "
        f"on the out-of-fold pairs. Synth {t_synth:.0f} s; training and prediction {t_train:.0f} s "
        f"wall, {cpu:.0f} s CPU.\n\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
