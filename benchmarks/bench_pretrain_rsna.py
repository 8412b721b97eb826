"""Bone-age pretraining on real radiographs: ``svdh pretrain`` on the RSNA 100 px copy.

Runs the command itself (``svdh pretrain rsna-boneage:DIR``) with a held-out test split of
patients (10%) and a validation split for early model selection (15%), then reads the run's
``metrics.json``: MAE in months on the held-out test images (mean of the fold model's
predictions; one fold) and on the validation split. Sizes are kept modest for a shared
2-core CPU; pass larger ones on a GPU.

    python benchmarks/bench_pretrain_rsna.py --out /tmp/rsna_pretrain --precision bf16-mixed

Recipe options (``--size``, ``--epochs``, ``--lr``...) are passed on only when given: without
them the run is ``svdh pretrain``'s default recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rsna-boneage-100px"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    # recipe options: left out, ``svdh pretrain``'s own defaults apply (the recipe under test)
    for name, kind in (("size", int), ("epochs", int), ("backbone", str), ("batch-size", int),
                       ("lr", float), ("max-cpu-minutes", float)):  # fmt: skip
        ap.add_argument(f"--{name}", type=kind, default=None)
    # runtime options (they do not change what is learnt, only how fast)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--precision", default="auto", help="bf16-mixed: 1.8x cheaper on AVX512 CPUs")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="OMP threads of the training process")
    a = ap.parse_args()
    if not a.data.is_dir():
        sys.exit(f"no data at {a.data}")
    svdh = str(Path(sys.executable).parent / "svdh")
    cmd = [svdh, "pretrain", f"rsna-boneage:{a.data}", "--out", str(a.out)]
    recipe = {"image-size": a.size, "epochs": a.epochs, "backbone": a.backbone,
              "batch-size": a.batch_size, "lr": a.lr, "max-cpu-minutes": a.max_cpu_minutes}  # fmt: skip
    cmd += [x for k, v in recipe.items() if v is not None for x in (f"--{k}", str(v))]
    cmd += ["--accelerator", a.accelerator, "--precision", a.precision]
    cmd += ["--num-workers", str(a.num_workers)]
    if a.out.exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    print(" ".join(cmd[1:]), file=sys.stderr)
    t, c = time.time(), os.times()
    subprocess.run(cmd, check=True, env=env)
    wall, c1 = time.time() - t, os.times()
    cpu = c1.children_user + c1.children_system - c.children_user - c.children_system
    m = json.loads((a.out / "metrics.json").read_text())
    done = json.loads((a.out / "fold_0" / "done.json").read_text())
    cfg = yaml.safe_load((a.out / "config.yaml").read_text())
    tr, pp = cfg["train"], cfg["preprocess"]
    print(
        f"| {tr['backbone']} {pp['size']}px, {tr['epochs']} epochs, batch {tr['batch_size']}, "
        f"{tr['precision']}, {a.accelerator} | {done['n_train']} / {done['n_val']} / "
        f"{m['test']['n']} | {m['test']['mae']:.2f} | {m['overall']['mae']:.2f} | "
        f"{m['test']['pcc']:.3f} | {cpu / 60:.1f} min CPU, {wall / 60:.1f} min wall, "
        f"load {os.getloadavg()[0]:.1f} |"
    )


if __name__ == "__main__":
    main()
