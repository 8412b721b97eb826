"""Benchmark of the data stage: ``svdh prepare`` and reading shuffled batches from a cache.

    .venv/bin/python benchmarks/bench_prepare.py [--data ../shared/data/rsna-boneage-100px]
        [--workers 2] [--size 128] [--read-size 256] [--batches 400]

1. ``svdh prepare rsna-boneage:DATA --size 128 --workers 2`` into a fresh folder, timed as a
   user runs it (a subprocess: interpreter start, manifest, worker processes, progress bar off),
   then run again to show that an up-to-date cache costs nothing.
2. A cache of the same images at 256 x 256, then shuffled batches of 64 read from it
   (``Cache.batch``: a uint8 B x 256 x 256 array), and the same batches turned into the float
   tensor a model takes (``/ 255``), in images per second.

Prints a Markdown section for docs/benchmarks.md. Targets (issue 2): prepare 11,392 images at
128 px in < 60 s on 2 cores; >= 2,000 images/s for batches of 64 at 256 px.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SVDH = (
    [str(ROOT / ".venv" / "bin" / "svdh")]
    if (ROOT / ".venv" / "bin" / "svdh").exists()
    else [sys.executable, "-c", "from svdh.cli.main import main; main()"]
)


def _prepare(source: str, out: Path, size: int, workers: int) -> float:
    """Wall-clock seconds of ``svdh prepare`` as a user runs it."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            *SVDH,
            "prepare",
            source,
            "--size",
            str(size),
            "--out",
            str(out),
            "--workers",
            str(workers),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def _serial_cpu(source: str, out: Path, size: int) -> float:
    """CPU seconds of the whole build in this one process (workers=1): the work to share out.

    Worker processes are reaped by the forkserver, so their CPU time never reaches this
    process's accounting; a serial build measures the same work where it can be counted.
    """
    from svdh.core.preprocess import PreprocessConfig
    from svdh.data.cache import prepare

    c0 = time.process_time()
    prepare(source, out, PreprocessConfig(size=size), workers=1, progress=False)
    return time.process_time() - c0


def _read_rate(cache_dir: Path, batches: int, batch_size: int, seed: int, to_float: bool) -> float:
    import torch

    from svdh.data.cache import open_cache

    cache = open_cache(cache_dir)
    n = len(cache.manifest)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    t0 = time.perf_counter()
    seen = 0
    for b in range(batches):
        start = (b * batch_size) % max(1, n - batch_size)
        x = cache.batch(order[start : start + batch_size])
        if to_float:
            t = torch.from_numpy(x).unsqueeze(1).float().div_(255.0)
            assert t.shape[0] == len(x)
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rsna-boneage-100px"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--read-size", type=int, default=256)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument(
        "--keep", default="", help="keep the caches in this folder (default: a temporary one)"
    )
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"no data at {args.data}")
    source = f"rsna-boneage:{args.data}"
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="svdh-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    from svdh.data import load_source

    n = len(load_source(source))
    load = os.getloadavg()[0]
    first = _prepare(source, base / f"c{args.size}", args.size, args.workers)
    again = _prepare(source, base / f"c{args.size}", args.size, args.workers)
    build256 = _prepare(source, base / f"c{args.read_size}", args.read_size, args.workers)
    load_end = os.getloadavg()[0]
    cpu = _serial_cpu(source, base / f"serial{args.size}", args.size)
    cold = _read_rate(base / f"c{args.read_size}", args.batches, 64, 0, to_float=False)
    warm = _read_rate(base / f"c{args.read_size}", args.batches, 64, 1, to_float=False)
    tensor = _read_rate(base / f"c{args.read_size}", args.batches, 64, 2, to_float=True)

    cmd = "`.venv/bin/python benchmarks/bench_prepare.py`"
    print(f"""## Data: `svdh prepare` and cache reads

Measured with {cmd} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores,
load average {load:.1f} at the start and {load_end:.1f} after the builds: the machine is shared,
so wall-clock times depend on who else runs; the CPU seconds of the same build run serially in
one process do not, and CPU / {args.workers} is about what it needs on {args.workers} otherwise idle cores).

| what | figure | target |
|---|---|---|
| `svdh prepare {source.replace(str(ROOT.parent), "..")} --size {args.size} --workers {args.workers}` ({n:,} images, fresh folder, wall clock incl. start-up) | {first:.1f} s | < 60 s |
| CPU of the same build, serial, in one process | {cpu:.1f} s ({1000 * cpu / n:.2f} ms per image; / {args.workers} = {cpu / args.workers:.1f} s) | - |
| the same command again (cache up to date) | {again:.1f} s | - |
| building the {args.read_size} px cache of the same images | {build256:.1f} s | - |
| shuffled batches of 64 at {args.read_size} x {args.read_size} from the cache (`Cache.batch`), first pass | {cold:,.0f} images/s | >= 2,000 |
| the same, another shuffle | {warm:,.0f} images/s | >= 2,000 |
| the same, as float tensors B x 1 x {args.read_size} x {args.read_size} in [0, 1] | {tensor:,.0f} images/s | - |
""")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
