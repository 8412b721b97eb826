"""Benchmark of phantom generation: ``svdh synth`` of RA cohorts.

    .venv/bin/python benchmarks/bench_synth.py [--n 1000] [--size 512] [--workers 2] [--write-docs]

1. ``svdh synth --out TMP --n N --size SIZE --workers W`` timed as a user runs it (a subprocess:
   interpreter start, worker processes, labels and landmarks.json), N patients = 2 N hand images.
2. In this process, one worker's CPU time per image split into rendering and PNG encoding
   (40 images), so the figure can be read against the target of issue 8: 1,000 RA phantoms at
   512 x 512 in under 60 s with --workers 2.

Prints a Markdown section; ``--write-docs`` puts it into docs/benchmarks.md (replacing the
section "Phantom generation (svdh synth)" only).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVDH = (
    [str(ROOT / ".venv" / "bin" / "svdh")]
    if (ROOT / ".venv" / "bin" / "svdh").exists()
    else [sys.executable, "-c", "from svdh.cli.main import main; main()"]
)
HEADING = "## Phantom generation (svdh synth)"


def _cli(out: Path, n: int, size: int, workers: int, seed: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and its worker processes) of one run."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [
            *SVDH,
            "synth",
            "--out",
            str(out),
            "--n",
            str(n),
            "--size",
            str(size),
            "--workers",
            str(workers),
            "--seed",
            str(seed),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _split(size: int, images: int) -> tuple[float, float]:
    """CPU seconds per image: rendering, PNG encoding (one process, OpenCV single-threaded)."""
    import cv2
    from PIL import Image

    from svdh.synth import make_patient, quantize, render_patient
    from svdh.synth.cohort import PNG_COMPRESS_LEVEL

    cv2.setNumThreads(1)
    render_patient(make_patient(0, 10_000), size, "L")  # warm-up: texture tile, imports
    t_render = t_png = 0.0
    for i in range(images // 2):
        p = make_patient(0, i)
        for side in "LR":
            c0 = time.process_time()
            img = render_patient(p, size, side)
            c1 = time.process_time()
            buf = io.BytesIO()
            Image.fromarray(quantize(img.image)).save(
                buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL
            )
            c2 = time.process_time()
            t_render += c1 - c0
            t_png += c2 - c1
    n = 2 * (images // 2)
    return t_render / n, t_png / n


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=1000, help="patients (two hand images each)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-images", type=int, default=40)
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="svdh-bench-synth-") as tmp:
        wall, cpu = _cli(Path(tmp) / "ra", args.n, args.size, args.workers, args.seed)
        n_images = len(list((Path(tmp) / "ra").glob("*.png")))
        mb = sum(p.stat().st_size for p in (Path(tmp) / "ra").iterdir()) / 1e6
    load_after = os.getloadavg()[0]
    render, png = _split(args.size, args.split_images)
    cmd = (
        f".venv/bin/python benchmarks/bench_synth.py --n {args.n} --size {args.size} "
        f"--workers {args.workers}" + (" --write-docs" if args.write_docs else "")
    )
    per_image_ms = 1000 * wall / max(n_images, 1)
    lines = [
        HEADING,
        "",
        f"Command: `{cmd}` (it runs `svdh synth --out TMP --n {args.n} --size {args.size} "
        f"--workers {args.workers}` as a subprocess and times it end to end).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| RA patients / hand images at {args.size} x {args.size} | {args.n} / {n_images} ({mb:.0f} MB of PNG) |",
        f"| wall time, `--workers {args.workers}`, including start-up and landmarks.json | **{wall:.1f} s** "
        f"({per_image_ms:.1f} ms per image, {n_images / wall:.0f} images/s) |",
        f"| CPU time of the command and its workers (all processes) | {cpu:.1f} s: on {args.workers} free cores "
        f"about {cpu / args.workers:.0f} s of wall time |",
        f"| one worker, CPU per image: rendering | {1000 * render:.1f} ms |",
        f"| one worker, CPU per image: PNG encoding (Pillow, zlib level 1) | {1000 * png:.1f} ms |",
        f"| 1-minute load average before / after (other processes on the 2 cores) | {load_before:.1f} / {load_after:.1f} |",
        "",
        f"Target (issue 8): 1,000 RA phantoms at 512 x 512 in under 60 s with `--workers 2`. Measured on "
        f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPU cores shared with other "
        "engineers' jobs (see the load average), so the wall time is an upper bound; the CPU time, which the "
        "other jobs change much less, divided by the number of workers is about what the run takes on free cores.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write_docs:
        path = ROOT / "docs" / "benchmarks.md"
        text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
        pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
        text = (
            pattern.sub(section + "\n", text)
            if pattern.search(text)
            else text.rstrip("\n") + "\n\n" + section
        )
        path.write_text(text, encoding="utf-8")
        print(f"updated {path}")


if __name__ == "__main__":
    main()
