"""Benchmark of ``svdh predict``: throughput against the bare batched forward pass, and memory.

    .venv/bin/python benchmarks/bench_predict.py [--n 200] [--size 256] [--members resnet18,mobilenet_v2]
        [--folds 2] [--batch-size 16] [--device cpu] [--out /tmp/bench_predict]

1. Writes ``n`` phantom radiographs (``svdh synth``, 512 px PNG) and a bundle of the given
   members (``folds`` fold models each, random weights: speed does not depend on them) at
   ``size`` px.
2. Throughput, in one process, alternating ``--reps`` times and keeping each one's best (the
   ratio of medians is reported too):
   * bare: the images preprocessed beforehand (not timed), then only the batched forward pass
     of every fold model of every member (``torch.inference_mode``);
   * predict: :func:`svdh.inference.writers.predict_files`, i.e. what ``svdh predict -o out.csv`` runs
     after start-up: read and decode files, preprocess, forward, combine, intervals, quality
     checks, write the CSV.
   Also the whole command line (``svdh predict``) once, start-up and model loading included.
3. Memory: peak resident memory (ru_maxrss) and the peak of Python-tracked allocations
   (tracemalloc) of ``predict_files`` over 100 and 400 images (the cohort's files repeated),
   each in a fresh process, with a small bundle (``--memory-members``): whether memory grows
   with the number of images does not depend on the model's size.

Prints a JSON summary; the figures go in docs/benchmarks.md (section "Scoring new images").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_inputs(out: Path, n: int, size: int, members: list[str], folds: int) -> tuple[Path, Path]:
    import torch

    from svdh.core.preprocess import PreprocessConfig
    from svdh.core.scoring import SeverityBins
    from svdh.inference.bundle import Member, save_bundle
    from svdh.models.net import build_model
    from svdh.synth import generate_cohort

    cohort = out / "cohort"
    if not (cohort / "landmarks.json").is_file():
        generate_cohort(cohort, n=(n + 1) // 2, size=512, seed=0, severity="cohort", workers=2)
    bundle = out / f"bench-{size}-{'-'.join(members)}-{folds}.svdh"
    if not bundle.is_file():
        torch.manual_seed(0)
        mems = []
        for name in members:
            sds, arch = [], None
            for _ in range(folds):
                net = build_model(name, "regression", extra_heads=True)
                net.set_target_stats([3.0, 2.0], [1.0, 1.0])
                sds.append(net.state_dict())
                arch = net.config
            mems.append(Member(name, arch, sds))
        bins = SeverityBins.hand()
        save_bundle(
            bundle,
            mems,
            task="regression",
            bins=bins,
            preprocess=PreprocessConfig(size=size).to_dict(),
            image_size=size,
            conformal={
                "alpha": 0.1,
                "level": 0.9,
                "method": "absolute",
                "q": 10.0,
                "n": 100,
                "strata": [],
                "bins": bins.to_dict(),
                "max_score": 140.0,
            },
        )
    return cohort, bundle


def bare_forward(predictor, x: np.ndarray, batch_size: int) -> float:
    """Seconds for the batched forward pass of every fold model over preprocessed images."""
    import torch

    models = [m for member in predictor.models for m in member]
    dev = predictor.device
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            t = torch.from_numpy(x[i : i + batch_size]).to(dev).unsqueeze(1).float().div_(255.0)
            for m in models:
                m(t).float().cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def throughput(args: argparse.Namespace, cohort: Path, bundle: Path) -> dict:
    from svdh.core.io import read_radiograph
    from svdh.core.preprocess import preprocess
    from svdh.inference.predictor import Predictor
    from svdh.inference.writers import predict_files

    files = sorted(cohort.glob("*.png"))[: args.n]
    predictor = Predictor(
        bundle, device=args.device, batch_size=args.batch_size, workers=args.workers
    )
    x = np.stack([preprocess(read_radiograph(f), predictor.preprocess_config) for f in files])
    bare_forward(predictor, x[: args.batch_size], args.batch_size)  # warm-up
    bare, pred = [], []
    for rep in range(args.reps):
        bare.append(bare_forward(predictor, x, args.batch_size))
        t0 = time.perf_counter()
        summary = predict_files(predictor, files, out=Path(args.out) / f"pred{rep}.csv")
        pred.append(time.perf_counter() - t0)
        assert summary["n_failed"] == 0
    n = len(files)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from svdh.cli.main import main; main()",
            "predict",
            "--model",
            str(bundle),
            str(cohort),
            "-o",
            str(Path(args.out) / "cli.csv"),
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    cli = time.perf_counter() - t0
    n_cli = len(sorted(cohort.glob("*.png")))
    return {
        "n_images": n,
        "bare_images_per_s": n / min(bare),
        "predict_images_per_s": n / min(pred),
        "ratio_predict_to_bare": min(bare) / min(pred),
        "ratio_of_medians": float(np.median(bare) / np.median(pred)),
        "all_runs_s": {"bare": [round(v, 2) for v in bare], "predict": [round(v, 2) for v in pred]},
        "cli_images": n_cli,
        "cli_wall_s": cli,
        "cli_images_per_s_incl_startup": n_cli / cli,
    }


def memory_child(args: argparse.Namespace, cohort: Path, bundle: Path, n: int) -> dict:
    """Run in a fresh process: score ``n`` images (the cohort's files repeated) and report peaks."""
    import tracemalloc

    from svdh.inference.predictor import Predictor
    from svdh.inference.writers import predict_files

    files = sorted(cohort.glob("*.png"))
    paths = (files * (n // len(files) + 1))[:n]
    predictor = Predictor(
        bundle, device=args.device, batch_size=args.batch_size, workers=args.workers
    )
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    summary = predict_files(predictor, paths, out=Path(args.out) / f"mem{n}.csv")
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "n_images": summary["n_images"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_loading_mb": rss_loaded / 1024,
        "peak_traced_python_mb": peak_py / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--members", default="resnet18,mobilenet_v2")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--reps", type=int, default=3, help="alternations of bare and predict (best of each kept)"
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="reader threads (default: svdh's choice)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    ap.add_argument("--out", default="/tmp/bench_predict")
    ap.add_argument(
        "--memory-members",
        default="mobilenet_v2_050",
        help="members of the bundle for the memory runs (memory flatness does not depend on them)",
    )
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.memory_child:
        cohort, bundle = make_inputs(out, args.n, args.size, args.memory_members.split(","), 1)
        print(json.dumps(memory_child(args, cohort, bundle, args.memory_child)))
        return
    cohort, bundle = make_inputs(out, args.n, args.size, args.members.split(","), args.folds)
    make_inputs(out, args.n, args.size, args.memory_members.split(","), 1)
    import torch

    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "workers": args.workers,
        "size": args.size,
        "members": args.members,
        "folds": args.folds,
        "batch_size": args.batch_size,
        "throughput": throughput(args, cohort, bundle),
    }
    if not args.skip_memory:
        result["memory"] = {"members": args.memory_members}
        for n in (100, 400):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-child", str(n)]
            r = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result["memory"][str(n)] = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
