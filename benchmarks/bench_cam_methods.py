"""Where each heat-map method puts its mass on a phantom cohort's damaged joints (issue 12).

    OMP_NUM_THREADS=1 python benchmarks/bench_cam_methods.py --bundle /tmp/exp/demo_q4/model.svdh \\
        --cohort /tmp/held --max-images 60 [--methods gradcam hirescam ...] [--json out.json]

The hands are read, preprocessed and mapped to their landmarks once, as ``svdh explain`` does
(:mod:`svdh.inference.localisation`); then every
method named (:func:`svdh.inference.gradcam.parse_method`: a base such as ``gradcam``, options
such as ``+x-next`` or ``+aug``) is run through the predictor's own
:class:`~svdh.inference.gradcam.Explainer` (fold maps averaged, members weighted by the stacking
coefficients) and scored with the same measure: mass on the damaged-joint discs, its ratio to
a random map (the discs' share of the image, and of the hand), and the pointing game. Seconds
per hand are the wall time of the maps alone (all members), on however many threads torch has.
Use a cohort the bundle was not trained on (``svdh synth`` with a fresh seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.preprocess import hand_mask
from svdh.inference.gradcam import CAM_CLASSES, DEFAULT_CAM_METHOD
from svdh.inference.localisation import (
    DEFAULT_RADIUS_FRAC,
    _prepare_chunk,
    cohort_hands,
    damage_region,
    score_map,
    summarise,
)
from svdh.inference.predictor import Predictor


def prepare(predictor: Predictor, cohort: Path, max_images: int, radius: float) -> dict[str, Any]:
    """The model inputs of the cohort's hands with at least one damaged joint, their
    damaged-joint regions and hand masks."""
    per_image = cohort_hands(cohort / "landmarks.json")
    names = sorted(n for n in per_image if (cohort / n).is_file())[:max_images]
    counts = {"no_damage": 0, "refused": 0}
    items, marks = _prepare_chunk(predictor, cohort, names, per_image, set(), counts)
    xs, regions, hands = [], [], []
    for item, lms in zip(items, marks, strict=True):
        region = damage_region(item.x.shape, lms, radius)
        if region.any():
            xs.append(item.x)
            regions.append(region)
            hands.append(hand_mask(item.x))
        else:
            counts["no_damage"] += 1
    return {"x": np.stack(xs), "regions": regions, "hands": hands, "counts": counts}


def measure(predictor: Predictor, data: dict[str, Any], method: str) -> dict[str, Any]:
    """One method's localisation figures over the prepared hands, with seconds per hand."""
    predictor.cam_method, predictor._explainer = method, None
    x, bs = data["x"], predictor.batch_size
    predictor.cam(x[:1])  # build the explainer outside the timing
    t0 = time.perf_counter()
    results = [predictor.cam(x[i : i + bs]) for i in range(0, len(x), bs)]
    seconds = time.perf_counter() - t0
    ens = np.concatenate([r.ensemble for r in results])
    mem = np.concatenate([r.members for r in results], axis=1)
    zipped = list(zip(data["regions"], data["hands"], strict=True))
    row = summarise([score_map(c, r, h) for c, (r, h) in zip(ens, zipped, strict=True)])
    row["by_member"] = {
        name: summarise([score_map(c, r, h) for c, (r, h) in zip(mem[m], zipped, strict=True)])
        for m, name in enumerate(predictor.names)
    }
    row.update(method=method, seconds_per_hand=seconds / len(x), map_min=float(ens.min()))
    row.update(map_max=float(ens.max()), finite=bool(np.isfinite(ens).all()))
    row["layers"] = dict(zip(predictor.names, predictor.explainer.layers, strict=True))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--cohort", required=True, type=Path)
    ap.add_argument("--max-images", type=int, default=60)
    ap.add_argument("--radius", type=float, default=DEFAULT_RADIUS_FRAC)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--methods",
        nargs="+",
        default=[DEFAULT_CAM_METHOD, *CAM_CLASSES],
        help="method names (svdh.inference.gradcam.parse_method), e.g. gradcam gradcam+x-next+aug",
    )
    ap.add_argument("--json", type=Path, help="write every row (with per-member figures) here")
    args = ap.parse_args()
    predictor = Predictor(args.bundle, batch_size=args.batch_size)
    data = prepare(predictor, args.cohort, args.max_images, args.radius)
    print(f"# {args.bundle}: {len(data['x'])} hands with damage, {data['counts']}", flush=True)
    print("method\tn\tmass\tratio_vs_random\tratio_vs_hand\tpointing\ts_per_hand\tby_member")
    rows = []
    for method in args.methods:
        r = measure(predictor, data, method)
        rows.append(r)
        members = " ".join(
            f"{k}={v['mass_ratio_vs_random']:.2f}/{v['pointing_game']:.2f}"
            for k, v in r["by_member"].items()
        )
        print(
            f"{method}\t{r['n_images']}\t{r['mass_on_damaged']:.3f}\t{r['mass_ratio_vs_random']:.2f}"
            f"\t{r['mass_ratio_vs_random_hand']:.2f}\t{r['pointing_game']:.3f}"
            f"\t{r['seconds_per_hand']:.3f}\t{members}",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
