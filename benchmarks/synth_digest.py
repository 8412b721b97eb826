"""SHA-256 digests of the phantom's output, to prove that a refactor of ``svdh.synth`` changes
no byte: cohort files (images, CSV labels, ``landmarks.json``) and in-memory renders.

    .venv/bin/python benchmarks/synth_digest.py [--src src] [--out /tmp/synth_digest] > new.json
    .venv/bin/python benchmarks/synth_digest.py --src /tmp/old/src > old.json   # git archive REV
    diff old.json new.json && echo identical

``--src`` picks the ``svdh`` to import (any checkout's ``src`` folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

# (name, generate_cohort keyword arguments): both modes, both formats, 8/16 bits, dual hands.
COHORTS = [
    ("ra_png_s0", dict(n=3, mode="ra", size=160, seed=0)),
    ("ra_png_s7_severe", dict(n=2, mode="ra", size=200, seed=7, severity="severe")),
    (
        "ra_dicom16_dual_s3",
        dict(n=2, mode="ra", size=160, seed=3, fmt="dicom", bits=16, dual_hand=True),
    ),
    ("ra_png_s9_uniform", dict(n=8, mode="ra", size=128, seed=9, severity="uniform")),
    ("child_png_s1", dict(n=3, mode="child", size=160, seed=1)),
    ("child_dicom_s5", dict(n=2, mode="child", size=128, seed=5, fmt="dicom")),
    ("child_png_s8_many", dict(n=16, mode="child", size=96, seed=8)),
]
# (seed, index, side, size, mode, severity): float renders, landmarks and scores.
RENDERS = [
    (0, 0, "L", 256, "ra", "cohort"),
    (2, 1, "R", 256, "ra", "balanced"),
    (4, 0, "B", 192, "ra", "severe"),
    (6, 2, None, 256, "child", "cohort"),
    (11, 3, "L", 384, "ra", "cohort"),
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cohort_digests(out: Path) -> dict[str, dict[str, str]]:
    from svdh.synth import generate_cohort

    res: dict[str, dict[str, str]] = {}
    for name, kw in COHORTS:
        d = out / name
        generate_cohort(d, **kw)
        res[name] = {
            str(p.relative_to(d)): sha(p.read_bytes()) for p in sorted(d.rglob("*")) if p.is_file()
        }
    return res


def render_digests() -> dict[str, dict[str, str]]:
    import numpy as np

    from svdh.synth import render_hand

    res: dict[str, dict[str, str]] = {}
    for seed, index, side, size, mode, severity in RENDERS:
        r = render_hand(seed, index, side, size=size, mode=mode, severity=severity)
        key = f"{mode}_s{seed}_i{index}_{side}_{size}_{severity}"
        res[key] = {
            name: sha(np.ascontiguousarray(value).tobytes())
            if isinstance(value, np.ndarray)
            else sha(json.dumps(value, sort_keys=True, default=repr).encode())
            for name, value in sorted(vars(r).items())
        }
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    ap.add_argument("--out", type=Path, default=None, help="where cohorts go (default: a temp dir)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.src.resolve()))
    import svdh

    assert Path(svdh.__file__).resolve().is_relative_to(args.src.resolve()), svdh.__file__
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        doc = {"cohorts": cohort_digests(out), "renders": render_digests()}
    print(json.dumps(doc, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
