"""The training engine learns: SvdH regression on phantom hands it never saw.

Not plumbing: ResNet-18 and MobileNetV2 at 96 px, trained from scratch for 10 epochs
(MobileNetV2 20) on 150 phantom patients drawn at 128 px (``svdh.synth``, uniform severity), must correlate with the
true score on the hands of 30 patients held out of training and of model selection (the
run's test split). Thresholds are the measured figures (docs/benchmarks.md, "learning
protocol") less a margin for other seeds and machines. The CPU budget is enforced by the run
itself (``max_cpu_minutes``), not asserted on a clock.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from svdh.train import TrainConfig, train_run

#: backbone -> (settings beyond the shared recipe, lowest acceptable held-out PCC)
#: measured (seed 0, this protocol, flip TTA): ResNet-18 0.82, MobileNetV2 0.63; on canonical
#: hands (the default since 2026-12-07) MobileNetV2 needs more epochs: 0.44 at 10, 0.59 at 20
#: on the benchmark's cohort (docs/benchmarks.md, "MobileNetV2 on canonical hands")
LEARNERS = {
    "resnet18": ({"lr": 1e-3}, 0.7),
    "mobilenet_v2": ({"lr": 3e-3, "grad_clip": 1.0, "epochs": 20}, 0.45),
}


@pytest.fixture(scope="module")
def phantom_ra(tmp_path_factory):
    from svdh.synth import generate_cohort

    root = tmp_path_factory.mktemp("learning")
    generate_cohort(root / "ra", n=150, mode="ra", size=128, seed=7, severity="uniform", workers=2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(LEARNERS))
def test_regression_learns_on_unseen_phantom_hands(
    backbone: str, phantom_ra, tmp_path, monkeypatch
) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("SVDH_CACHE_DIR", str(phantom_ra / "cache"))
    extra, threshold = LEARNERS[backbone]
    cfg = TrainConfig(
        source=f"ra2-dream:{phantom_ra / 'ra'}",
        task="regression",
        backbone=backbone,
        init="scratch",
        folds=1,
        val_fraction=0.15,
        test_fraction=0.2,
        **{
            "image_size": 96,
            "epochs": 10,
            "batch_size": 32,
            "augment": False,
            "patience": 0,
            "max_cpu_minutes": 3.0,
            "num_workers": 0,
            "accelerator": "cpu",
            "seed": 0,
            **extra,
        },
    )
    cpu0 = time.process_time()
    metrics = train_run(cfg, tmp_path / "run", quiet=True)
    cpu = time.process_time() - cpu0

    folds = pd.read_csv(tmp_path / "run" / "folds.csv", dtype={"patient_id": str})
    test = pd.read_csv(tmp_path / "run" / "test.csv", dtype={"patient_id": str})
    trained_on = set(folds.loc[folds["fold"] >= 0, "patient_id"])
    assert len(test) == 60 and trained_on.isdisjoint(test["patient_id"])  # 30 unseen patients
    pcc = float(np.corrcoef(test["y_true"], test["y_pred"])[0, 1])
    print(
        f"phantom learning test, {backbone}: PCC {pcc:.3f}, RMSE {metrics['test']['rmse']:.1f} "
        f"on unseen hands; {cpu:.0f} s CPU for training and prediction"
    )
    assert np.isclose(pcc, metrics["test"]["pcc"])
    assert test["y_pred"].std() > 0.25 * test["y_true"].std()  # not one value for every hand
    assert pcc >= threshold
