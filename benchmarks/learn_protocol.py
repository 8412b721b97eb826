"""One run of the learning protocol (issue 12) with overrides, appended to a TSV.

The protocol of ``tests/test_train_learning.py``: a phantom cohort drawn at 128 px, trained at
96 px from scratch, one fold (15% of the training patients validate), 20% of the patients
held out as the test split, 10 epochs, batch 32, no augmentation, torch 1 thread, seed 0.
Any ``TrainConfig`` field can be overridden with JSON; ``data`` names the cohort folder (from
``svdh synth --out DIR --severity uniform --size 128 --seed 101``). ``--mod`` applies a model
change for an ablation (``zeroinit``: zero the last BatchNorm of each MobileNetV2 residual
block; ``relu``: ReLU for ReLU6; ``dwfanin``: depthwise weights re-initialised with fan-in;
``stem1``: stride 1 in MobileNetV2's stem). The figure is the held-out test PCC.

    python benchmarks/learn_protocol.py NAME '{"backbone": "mobilenet_v2", "lr": 3e-4}' \
        --data /tmp/exp/uniform --out /tmp/exp
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
import torch
from torch import nn

BASE = dict(
    task="regression", backbone="resnet18", init="scratch", folds=1, val_fraction=0.15,
    test_fraction=0.2, image_size=96, epochs=10, batch_size=32, augment=False, patience=0,
    num_workers=0, accelerator="cpu", seed=0, lr=1e-3,
)  # fmt: skip


def _zeroinit(m: nn.Module) -> None:
    from torchvision.models.mobilenetv2 import InvertedResidual

    for b in m.modules():
        if isinstance(b, InvertedResidual) and b.use_res_connect:
            nn.init.zeros_(
                [x for x in b.conv.modules() if isinstance(x, nn.BatchNorm2d)][-1].weight
            )


def _relu(m: nn.Module) -> None:
    for mod in list(m.modules()):
        for name, c in list(mod.named_children()):
            if isinstance(c, nn.ReLU6):
                setattr(mod, name, nn.ReLU(inplace=True))


def _dwfanin(m: nn.Module) -> None:
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and mod.groups > 1:
            nn.init.kaiming_normal_(mod.weight, mode="fan_in")


def _stem1(m: nn.Module) -> None:
    m.backbone.features[0][0].stride = (1, 1)


MODS = {"zeroinit": _zeroinit, "relu": _relu, "dwfanin": _dwfanin, "stem1": _stem1}


def _patch(mods: list[str]) -> None:
    import svdh.train.loop as loop

    build = loop.build_model

    def patched(*a, **k):  # noqa: ANN002, ANN003, ANN202
        model = build(*a, **k)
        for name in mods:
            MODS[name](model)
        return model

    loop.build_model = patched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("overrides", nargs="?", default="{}")
    ap.add_argument("--data", type=Path, required=True, help="a phantom cohort (ra2-dream layout)")
    ap.add_argument("--out", type=Path, required=True, help="runs/NAME, cache/, results.tsv")
    ap.add_argument("--mod", default="", help="comma-separated: " + ", ".join(MODS))
    a = ap.parse_args()
    from svdh.train import TrainConfig, train_run

    torch.set_num_threads(1)
    _patch([m for m in a.mod.split(",") if m])
    os.environ["SVDH_CACHE_DIR"] = str(a.out / "cache")
    over = json.loads(a.overrides)
    cfg = TrainConfig(**{**BASE, "source": f"ra2-dream:{a.data}", **over})
    run = a.out / "runs" / a.name
    shutil.rmtree(run, ignore_errors=True)
    cpu0, wall0 = time.process_time(), time.time()
    train_run(cfg, run, quiet=True)
    cpu = time.process_time() - cpu0
    t = pd.read_csv(run / "test.csv")
    pcc = float(np.corrcoef(t["y_true"], t["y_pred"])[0, 1])
    rmse = float(np.sqrt(((t["y_true"] - t["y_pred"]) ** 2).mean()))
    line = "\t".join(
        [a.name, a.data.name, a.mod or "-", json.dumps(over), f"PCC {pcc:.3f}", f"RMSE {rmse:.1f}",
         f"cpu {cpu:.0f}s", f"wall {time.time() - wall0:.0f}s", f"load {os.getloadavg()[0]:.1f}"]
    )  # fmt: skip
    print(line)
    with open(a.out / "results.tsv", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
