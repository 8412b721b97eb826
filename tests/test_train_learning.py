"""The training engine learns: SvdH regression on phantom hands it never saw.

Not plumbing: a ResNet-18 at 96 px, trained within 2 minutes of CPU time on ~270 phantom
hands (``svdh.synth``, uniform severity), must reach PCC >= 0.6 on 80 hands of patients held
out of training and of model selection (the run's test split). The CPU budget is enforced by
the run itself (``max_cpu_minutes``), not asserted on a clock.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from svdh.train import TrainConfig, train_run


@pytest.mark.slow
def test_regression_learns_on_unseen_phantom_hands(tmp_path, monkeypatch) -> None:
    from svdh.synth import generate_cohort

    torch.set_num_threads(1)
    monkeypatch.setenv("SVDH_CACHE_DIR", str(tmp_path / "cache"))
    generate_cohort(
        tmp_path / "ra", n=200, mode="ra", size=128, seed=7, severity="uniform", workers=2
    )
    cfg = TrainConfig(
        source=f"ra2-dream:{tmp_path / 'ra'}",
        task="regression",
        backbone="resnet18",
        init="scratch",
        folds=1,
        val_fraction=0.15,
        test_fraction=0.2,
        image_size=96,
        epochs=10,
        batch_size=32,
        lr=1e-3,
        augment=False,
        patience=0,
        max_cpu_minutes=2.0,
        num_workers=0,
        accelerator="cpu",
        seed=0,
    )
    cpu0 = time.process_time()
    metrics = train_run(cfg, tmp_path / "run", quiet=True)
    cpu = time.process_time() - cpu0

    folds = pd.read_csv(tmp_path / "run" / "folds.csv", dtype={"patient_id": str})
    test = pd.read_csv(tmp_path / "run" / "test.csv", dtype={"patient_id": str})
    trained_on = set(folds.loc[folds["fold"] >= 0, "patient_id"])
    assert len(test) == 80 and trained_on.isdisjoint(test["patient_id"])  # 40 unseen patients
    pcc = float(np.corrcoef(test["y_true"], test["y_pred"])[0, 1])
    print(
        f"phantom learning test: PCC {pcc:.3f}, RMSE {metrics['test']['rmse']:.1f} on unseen hands; "
        f"{cpu:.0f} s CPU for training and prediction"
    )
    assert np.isclose(pcc, metrics["test"]["pcc"])
    assert pcc >= 0.6
