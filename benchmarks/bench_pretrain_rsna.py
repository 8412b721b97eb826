"""Bone-age pretraining on real radiographs: ``svdh pretrain`` on the RSNA 100 px copy.

Runs the command itself (``svdh pretrain rsna-boneage:DIR``) with a held-out test split of
patients (10%) and a validation split for early model selection (15%), then reads the run's
``metrics.json``: MAE in months on the held-out test images (mean of the fold model's
predictions; one fold) and on the validation split. Sizes are kept modest for a shared
2-core CPU; pass larger ones on a GPU.

    python benchmarks/bench_pretrain_rsna.py --out /tmp/rsna_pretrain --size 64 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rsna-boneage-100px"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the training process")
    a = ap.parse_args()
    if not a.data.is_dir():
        sys.exit(f"no data at {a.data}")
    svdh = str(Path(sys.executable).parent / "svdh")
    cmd = [
        svdh,
        "pretrain",
        f"rsna-boneage:{a.data}",
        "--out",
        str(a.out),
        "--backbone",
        a.backbone,
        "--image-size",
        str(a.size),
        "--epochs",
        str(a.epochs),
        "--batch-size",
        str(a.batch_size),
        "--lr",
        str(a.lr),
        "--accelerator",
        a.accelerator,
        "--num-workers",
        str(a.num_workers),
        "--test-fraction",
        "0.1",
        "--val-fraction",
        "0.15",
        "--patience",
        "0",
    ]
    if a.out.exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    print(" ".join(cmd[1:]), file=sys.stderr)
    t = time.time()
    subprocess.run(cmd, check=True, env=env)
    wall = time.time() - t
    m = json.loads((a.out / "metrics.json").read_text())
    done = json.loads((a.out / "fold_0" / "done.json").read_text())
    print(
        f"| {a.backbone} {a.size}px, {a.epochs} epochs, batch {a.batch_size}, {a.accelerator} | "
        f"{done['n_train']} / {done['n_val']} / {m['test']['n']} | {m['test']['mae']:.2f} | "
        f"{m['overall']['mae']:.2f} | {m['test']['pcc']:.3f} | {wall / 60:.0f} min |"
    )


if __name__ == "__main__":
    main()
