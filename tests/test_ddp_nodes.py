"""Multi-node DDP: ``svdh train`` as two torchrun nodes of one process each (gloo, CPU).

The two "nodes" are two torchrun launchers on this machine with a static rendezvous on
127.0.0.1 (``--node-rank``, ``--master-addr``, ``--master-port``), as two machines sharing a
file system would run them. The run directory they write must equal a one-node run's: the
same folds, the same ``oof.csv`` rows (every image once, by the fold that held its patient
out) and the same test rows; only the predicted values may differ (another sampler order).
Both nodes start at once on an empty cache folder, as two machines would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SVDH = str(Path(sys.executable).parent / "svdh")
KEYS = ["image_id", "patient_id", "side", "fold", "y_true"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _phantoms(root: Path, env: dict[str, str]) -> str:
    r = subprocess.run(
        [SVDH, "synth", "--out", str(root), "--n", "10", "--size", "96", "--severity", "uniform"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return f"ra2-dream:{root}"


def _train_args(src: str, out: Path) -> list[str]:
    return [
        "train",
        src,
        "--out",
        str(out),
        "--folds",
        "2",
        "--test-fraction",
        "0.2",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--backbone",
        "mobilenet_v2_050",
        "--num-workers",
        "0",
        "--patience",
        "0",
        "--accelerator",
        "cpu",
        "--no-augment",
    ]


def _table(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "side": str})
    return df[KEYS].sort_values("image_id").reset_index(drop=True)


@pytest.mark.slow
def test_two_torchrun_nodes_write_the_one_node_run(tmp_path) -> None:
    env = dict(os.environ, SVDH_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("SVDH_DEBUG", None)
    src = _phantoms(tmp_path / "phantoms", env)
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"

    r = subprocess.run(
        [SVDH, *_train_args(src, one)], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]

    # the nodes build their own preprocessed-image cache, at the same moment: one must wait
    # for the other rather than write the same files
    env_nodes = dict(env, SVDH_CACHE_DIR=str(tmp_path / "cache_nodes"))
    port = _free_port()
    ddp = ["--strategy", "ddp", "--num-nodes", "2", "--devices", "1"]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                SVDH,
                *_train_args(src, two),
                *ddp,
            ],
            env=env_nodes,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = []
    for p in nodes:
        try:
            logs.append(p.communicate(timeout=300)[0])
        finally:
            p.kill()
    for rank, (p, log) in enumerate(zip(nodes, logs, strict=True)):
        assert p.returncode == 0, f"node {rank}:\n{log[-3000:]}"

    # the same folds, patients grouped, and the same rows in oof.csv and test.csv
    f1, f2 = (pd.read_csv(d / "folds.csv", dtype=str) for d in (one, two))
    pd.testing.assert_frame_equal(f1, f2)
    assert (f2.groupby("patient_id")["fold"].nunique() == 1).all()
    for name in ("oof.csv", "test.csv"):
        a, b = _table(one / name), _table(two / name)
        pd.testing.assert_frame_equal(a, b)
        assert b["image_id"].is_unique
    oof = pd.read_csv(two / "oof.csv", dtype={"patient_id": str})
    assert oof["y_pred"].notna().all()
    assert set(oof["image_id"].astype(str)) == set(f2.loc[f2["fold"] != "-1", "image_id"])
    for k in (0, 1):
        done = json.loads((two / f"fold_{k}" / "done.json").read_text())
        assert done["world_size"] == 2
        assert json.loads((one / f"fold_{k}" / "done.json").read_text())["world_size"] == 1
        assert (two / f"fold_{k}" / "best.safetensors").is_file()
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["overall"]["n"] == m2["overall"]["n"] and m1["test"]["n"] == m2["test"]["n"]
