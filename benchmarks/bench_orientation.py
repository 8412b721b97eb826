"""Any film in, one canonical hand out: how often the canonical stage gets it right, and its cost.

For the real samples in ``../shared/data`` (the 26 hands and 6 feet of RA2-DREAM and RSNA Bone
Age, each in its 8 rotations/mirrors) and for phantom cohorts with film faults
(``svdh synth --faults``; RA single hands, RA both-hands films, child hands), prints:

* orientation accuracy: real films, the quarter turn found equals the one that undoes the
  transform; phantoms, once canonical the hand's radius-to-MCP3 line points up within 45
  degrees and the thumb (MCP1) lies right of MCP5 (the left-hand PA view);
* laterality accuracy: the side the thumb gives (``side_anatomy``) against the truth (a
  mirrored film shows the other side);
* view accuracy (hand / wrist-only / foot), and the warning and refusal rates, also by kind;
* ms per film of :func:`svdh.core.canonical.canonicalise` (one thread);
* the spread of the model inputs, and with ``--bundle`` of the predictions, within the 8
  transforms of each real hand (max - min per film; share of films within 1 point);
* with ``--boneage`` (a bone-age bundle), the spread of its predictions (months) within the 8
  transforms of each of the 20 RSNA sample films, after the canonical stage and, for
  comparison, without it (the film as turned, cropped as older models saw it); the child's sex
  from the sample's ``boneage.csv``; share within 2 months, and the MAE of the upright copies
  (after the canonical stage and as given).

Usage (figures in docs/benchmarks.md)::

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bench_orientation.py \\
        [--data ../shared/data] [--phantoms 40] [--bundle model.svdh] [--boneage ba.svdh]
        [--out /tmp/bench_orient]
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core import canonical as C
from svdh.core.io import read_radiograph
from svdh.core.preprocess import PreprocessConfig, as_float_image, preprocess


def _transforms(img: np.ndarray) -> list[tuple[int, bool, np.ndarray]]:
    out = []
    for j in range(4):
        for flip in (False, True):
            t = np.rot90(img, j)
            out.append((j, flip, np.ascontiguousarray(t[:, ::-1] if flip else t)))
    return out


class Scorer:
    """Total score of canonical hands with a bundle's first member (None without a bundle)."""

    def __init__(self, bundle: str | None) -> None:
        self.predictor = None
        if bundle:
            from svdh.inference.predictor import Predictor

            self.predictor = Predictor(bundle)

    @property
    def cfg(self) -> PreprocessConfig:
        if self.predictor is None:
            return PreprocessConfig(size=128)
        return self.predictor.preprocess_config

    def scores(self, xs: list[np.ndarray]) -> list[float] | None:
        if self.predictor is None:
            return None
        rows = self.predictor.combine(self.predictor.forward_raw(np.stack(xs)))
        return [float(r["score"]) for r in rows]


def bench_real(root: Path, scorer: Scorer) -> dict[str, Any]:
    files = sorted(glob.glob(str(root / "ra2-dream-sample" / "*.jpg")))
    files += sorted(glob.glob(str(root / "rsna-boneage-sample" / "*.png")))
    n = dict(films=0, hands=0, orient=0, side=0, view=0, warned=0, refused=0)
    times: list[float] = []
    input_spread, score_spread = [], []
    kinds: Counter[str] = Counter()
    for f in files:
        foot = f.endswith("F.jpg")
        truth = "R" if "-RH" in f else "L"  # RSNA: all 20 are left hands (looked at)
        img = as_float_image(read_radiograph(f))
        xs = []
        for j, flip, t in _transforms(img):
            t0 = time.perf_counter()
            hands = C.canonicalise(t)
            times.append(time.perf_counter() - t0)
            d = hands[0].decision
            n["films"] += 1
            n["warned"] += bool(d.warnings) and not d.refused
            n["refused"] += d.refused
            kinds.update({_kind(w) for w in d.warnings})
            if foot:
                n["view"] += d.view == "foot"
                continue
            n["hands"] += 1
            n["view"] += d.view == "hand" and len(hands) == 1
            n["orient"] += d.rotation_k == (j if flip else (-j) % 4)
            n["side"] += d.side_anatomy == (({"L": "R", "R": "L"}[truth]) if flip else truth)
            xs.append(preprocess(hands[0].pixels, scorer.cfg))
        if xs:
            a = np.stack(xs).astype(np.float32)
            input_spread.append(float(np.abs(a - a[0]).mean(axis=(1, 2)).max()))
            s = scorer.scores(xs)
            if s is not None:
                score_spread.append(max(s) - min(s))
    return {
        **n,
        "ms_per_film": 1000 * float(np.mean(times)),
        "input_spread_grey_levels_max": max(input_spread),
        "input_spread_grey_levels_mean": float(np.mean(input_spread)),
        "score_spread": score_spread,
        "kinds": dict(kinds),
    }


def bench_boneage(root: Path, bundle: str) -> dict[str, Any]:
    """Bone-age spread (months) within the 8 transforms of each RSNA sample film."""
    import pandas as pd

    from svdh.inference.predictor import Predictor
    from svdh.inference.sex import sex_code

    predictor = Predictor(bundle)
    cfg = predictor.preprocess_config
    labels = pd.read_csv(root / "rsna-boneage-sample" / "boneage.csv")
    out: dict[str, list[float]] = {"canonical": [], "plain": [], "error": [], "error_canonical": []}
    for row in labels.itertuples():
        img = as_float_image(read_radiograph(root / "rsna-boneage-sample" / f"{row.id}.png"))
        canon, plain = [], []
        for _j, _flip, t in _transforms(img):
            canon.append(preprocess(C.canonicalise(t)[0].pixels, cfg))
            plain.append(preprocess(t, cfg))
        sex = np.full(8, sex_code("M" if str(row.male) == "True" else "F"), np.float32)
        for key, xs in (("canonical", canon), ("plain", plain)):
            rows = predictor.combine(predictor.forward_raw(np.stack(xs), sex))
            months = [float(r["bone_age_months"]) for r in rows]
            out[key].append(max(months) - min(months))
            # copy 0 is the film as given (upright): its error as given and once canonical
            out["error" if key == "plain" else "error_canonical"].append(
                months[0] - float(row.boneage)
            )
    return out


def _phantom_truth(entry: dict[str, Any]) -> dict[str, Any]:
    default_sides = ["R", "L"] if entry["side"] == "both" else [entry["side"][0].upper()]
    return entry.get(
        "faults",
        {"rotation_k": 0, "mirrored": False, "view": "hand", "applied": [], "sides": default_sides},
    )


def bench_phantoms(cohort: Path) -> dict[str, Any]:
    doc = json.loads((cohort / "landmarks.json").read_text())
    n: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    times = []
    for name, entry in doc["images"].items():
        t = _phantom_truth(entry)
        img = read_radiograph(cohort / name)
        t0 = time.perf_counter()
        hands = C.canonicalise(img)
        times.append(time.perf_counter() - t0)
        got = [h.decision for h in hands]
        sides = t["sides"]
        n["films"] += 1
        n["warned"] += any(d.warnings for d in got if not d.refused)
        n["refused"] += any(d.refused for d in got)
        kinds.update({_kind(w) for d in got for w in d.warnings})
        ok_view = len(got) == len(sides) and all(d.view == t["view"] for d in got)
        if t["view"] != "hand":
            n["wrist_films"] += 1
            n["wrist_ok"] += ok_view
            continue
        n["hand_films"] += 1
        n["view"] += ok_view
        n["orient"] += ok_view and all(
            _upright(h, entry, sd, len(sides) > 1) for h, sd in zip(hands, sides, strict=False)
        )
        anat = [({"L": "R", "R": "L"}[s] if t["mirrored"] else s) for s in sides]
        n["side"] += [d.side_anatomy for d in got] == anat
    return {**n, "ms_per_film": 1000 * float(np.mean(times)), "kinds": dict(kinds)}


def _kind(warning: str) -> str:
    """A warning or refusal reason without its particulars (each film counted once per kind)."""
    return warning.split(";")[0].split(" (")[0][:70]


def _upright(hand: C.CanonicalHand, entry: dict[str, Any], side: str, both: bool) -> bool:
    key = f"{side}:" if both else ""
    lm = entry["landmarks"]

    def p(name: str) -> np.ndarray:
        return hand.map_points([lm[key + name]["x"], lm[key + name]["y"]])

    v = p("mcp3") - p("radius")
    angle = float(np.degrees(np.arctan2(v[0], -v[1])))
    return abs(angle) <= 45 and bool(p("mcp1")[0] > p("mcp5")[0])


def make_cohorts(out: Path, n: int, seed: int = 11) -> dict[str, Path]:
    """The three phantom cohorts (seeds ``seed``, ``seed + 1``, ``seed + 2``), kept in ``out``."""
    from svdh.synth import generate_cohort

    specs = {
        "ra_single_all_faults": dict(mode="ra", faults="all", seed=seed),
        "ra_both_hands_rot_mirror_plate_frame_marker": dict(
            mode="ra", dual_hand=True, faults="rotate,mirror,plate,frame,marker", seed=seed + 1
        ),
        "child_all_faults": dict(mode="child", faults="all", seed=seed + 2),
    }
    paths = {}
    for key, kw in specs.items():
        d = out / key
        if not (d / "landmarks.json").is_file():
            generate_cohort(d, n=n, size=384, **kw)  # type: ignore[arg-type]
        paths[key] = d
    return paths


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100.0 * a / max(1, b):.1f}%)"


def _print_boneage(b: dict[str, list[float]], bundle: str) -> None:
    print(f"bone age with {bundle}: 20 RSNA sample films x 8 rotations/mirrors")
    for key, words in (("canonical", "after the canonical stage"), ("plain", "without it")):
        s = np.asarray(b[key])
        print(
            f"  spread (max - min of the 8, months) {words}: median {np.median(s):.2f},"
            f" max {s.max():.2f}, within 2 months {_pct(int((s <= 2).sum()), len(s))}"
        )
    e, c = (np.abs(np.asarray(b[k])) for k in ("error", "error_canonical"))
    print(
        f"  MAE of the upright films {c.mean():.1f} months after the canonical stage,"
        f" {e.mean():.1f} as given (how good the model is; a model trained on canonical hands"
        " is meant to see the first)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", help="the shared real samples")
    ap.add_argument(
        "--phantoms", type=int, default=40, help="patients per phantom cohort (0: none)"
    )
    ap.add_argument("--bundle", default=None, help="a .svdh bundle: spread of its predictions")
    ap.add_argument("--boneage", default=None, help="a bone-age .svdh bundle: spread in months")
    ap.add_argument("--seed", type=int, default=11, help="phantom seeds: SEED, SEED+1, SEED+2")
    ap.add_argument("--out", default=None, help="folder for the phantom cohorts (kept)")
    args = ap.parse_args()
    scorer = Scorer(args.bundle)
    root = Path(args.data)
    if root.is_dir():
        r = bench_real(root, scorer)
        print(f"real samples ({r['films']} films = 32 films x 8 transforms)")
        print(f"  orientation (quarter turn) {_pct(r['orient'], r['hands'])}")
        print(f"  laterality (thumb side)    {_pct(r['side'], r['hands'])}")
        print(f"  view (hand / foot)         {_pct(r['view'], r['films'])}")
        print(f"  warned {_pct(r['warned'], r['films'])}, refused {_pct(r['refused'], r['films'])}")
        print(f"  warnings and refusals by kind (films): {r['kinds']}")
        print(f"  ms per film {r['ms_per_film']:.0f}")
        print(
            f"  model input spread within the 8 transforms (mean |diff| to copy 0, grey levels"
            f" of 255): max {r['input_spread_grey_levels_max']:.2f}, mean"
            f" {r['input_spread_grey_levels_mean']:.2f}"
        )
        if r["score_spread"]:
            s = np.asarray(r["score_spread"])
            print(
                f"  prediction spread (max - min of the 8) with {args.bundle}: median"
                f" {np.median(s):.2f}, max {s.max():.2f}, within 1 point {_pct(int((s <= 1).sum()), len(s))}"
            )
        if args.boneage:
            _print_boneage(bench_boneage(root, args.boneage), args.boneage)
    else:
        print(f"{root}: not found; real samples skipped")
    if args.phantoms <= 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        for key, d in make_cohorts(out, args.phantoms, args.seed).items():
            p = bench_phantoms(d)
            print(f"phantoms {key} ({p['films']} films)")
            print(f"  whole-hand films: view {_pct(p['view'], p['hand_films'])}", end="")
            print(f", orientation {_pct(p['orient'], p['hand_films'])}", end="")
            print(f", laterality {_pct(p['side'], p['hand_films'])}")
            if p.get("wrist_films"):
                print(f"  wrist-only / cut-off films: {_pct(p['wrist_ok'], p['wrist_films'])}")
            print(
                f"  warned {_pct(p['warned'], p['films'])}, refused {_pct(p['refused'], p['films'])}"
            )
            print(f"  warnings and refusals by kind (films): {p['kinds']}")
            print(f"  ms per film {p['ms_per_film']:.0f}")


if __name__ == "__main__":
    main()
