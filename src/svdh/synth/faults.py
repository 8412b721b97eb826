"""Film faults for phantoms, with their ground truth: what clinics send besides clean PA hands.

:func:`apply_faults` takes a :class:`~svdh.synth.phantom.RenderedImage` (fingers up, as drawn)
and returns a new one with some of :data:`FAULTS` applied, its landmarks moved with the
pixels, and ``extra["faults"]`` saying what was done and what a reader should answer:

* ``rotate``: a quarter turn ``np.rot90(k)``, k uniform in 0-3 (so one film in four stays);
* ``mirror``: the film flipped left-right (half the films): a laterality question;
* ``plate``: the film laid, tilted 3-15 degrees, as a grey plate on a grey scanner bed;
* ``frame``: a collimator frame brighter than bone along two to four edges;
* ``marker``: a saturated lead marker and a lead ring on the background (brighter than bone);
* ``wrist``: a wrist-only view (cut across the metacarpals) and ``cut``: the fingers cut off
  across the proximal phalanges (no PIP joint visible); at most one of the two per film.

Faults other than rotate and mirror are applied with probability ``rate``. The truth
(``extra["faults"]``): ``applied`` (the list), ``rotation_k`` (quarter turns counter-clockwise
that bring the fingers up again), ``mirrored`` (the film shows the hand flipped), ``view``
('hand' or 'wrist_only'), ``sides`` (hands left to right on the written film),
``plate_tilt_deg``. Every random choice comes from ``rng``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError

FAULTS = ("rotate", "mirror", "plate", "frame", "marker", "wrist", "cut")


def parse_faults(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"rotate,mirror"`` (or a list) to a checked tuple in :data:`FAULTS` order."""
    if not text:
        return ()
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    if "all" in items:
        return FAULTS
    bad = [t for t in items if t not in FAULTS]
    if bad:
        raise BadConfigError(
            f"unknown film fault(s) {', '.join(bad)}; use some of {', '.join(FAULTS)} (or all)"
        )
    return tuple(f for f in FAULTS if f in items)


def _move(points: dict[str, dict[str, tuple[float, float]]], mat: np.ndarray) -> dict:
    """Apply a 2 x 3 affine to every landmark."""
    out = {}
    for side, pts in points.items():
        out[side] = {
            k: (
                float(mat[0, 0] * x + mat[0, 1] * y + mat[0, 2]),
                float(mat[1, 0] * x + mat[1, 1] * y + mat[1, 2]),
            )
            for k, (x, y) in pts.items()
        }
    return out


def _view_cut(img: np.ndarray, pts: dict, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Keep the film below a line across the metacarpals (``wrist``) or the proximal
    phalanges (``cut``), as a collimated wrist view; the hand is still fingers-up here."""
    h, w = img.shape
    ys = {name: [p[name][1] for p in pts.values()] for name in ("mcp3", "pip3", "cmc3")}
    mcp, pip, cmc = (float(np.mean(v)) for v in (ys["mcp3"], ys["pip3"], ys["cmc3"]))
    y_cut = 0.5 * (mcp + cmc) if kind == "wrist" else mcp + 0.45 * (pip - mcp)
    y0 = int(np.clip(round(y_cut), 0, h - 8))
    # collimated around the wrist: the columns of the hand's joints and a margin
    xs = [x for p in pts.values() for x, _ in p.values()]
    span = max(xs) - min(xs)
    x0 = int(np.clip(round(min(xs) - 0.3 * span), 0, w - 8))
    x1 = int(np.clip(round(max(xs) + 0.3 * span), x0 + 8, w))
    return img[y0:, x0:x1].copy(), np.array([[1.0, 0, -x0], [0, 1.0, -y0]])


def _plate(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """The film as a grey plate, tilted, on a grey scanner bed a little darker or lighter."""
    import cv2

    h, w = img.shape
    tilt = float(rng.uniform(3.0, 15.0) * rng.choice([-1.0, 1.0]))
    lift = float(rng.uniform(0.18, 0.35))
    plate = lift + (1.0 - lift) * img
    bed = float(np.clip(lift + rng.uniform(-0.1, 0.08), 0.05, 0.6))
    big = int(round(1.3 * max(h, w)))
    rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), tilt, 1.0)
    rot[0, 2] += (big - w) / 2
    rot[1, 2] += (big - h) / 2
    inside = cv2.warpAffine(np.ones_like(plate), rot, (big, big), flags=cv2.INTER_LINEAR)
    moved = cv2.warpAffine(plate, rot, (big, big), flags=cv2.INTER_LINEAR)
    out = moved + (1.0 - inside) * bed
    out += rng.normal(0.0, 0.01, out.shape).astype(np.float32)
    return np.clip(out, 0, 1).astype(np.float32), rot, tilt


def _frame(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bright collimator bands (unexposed film, brighter than bone) along 2-4 edges."""
    out = img.copy()
    h, w = img.shape
    level = float(rng.uniform(0.93, 1.0))
    edges = rng.permutation(4)[: int(rng.integers(2, 5))]
    for e in edges:
        d = int(round(rng.uniform(0.03, 0.08) * (h if e in (0, 2) else w)))
        region = (np.s_[:d, :], np.s_[:, w - d :], np.s_[h - d :, :], np.s_[:, :d])[int(e)]
        out[region] = level + rng.normal(0.0, 0.01, out[region].shape)
    return np.clip(out, 0, 1).astype(np.float32)


def _marker(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A saturated 'L'-shaped lead marker and a lead ring in the darkest free corners."""
    import cv2

    out = img.copy()
    h, w = img.shape
    s = max(6, int(0.07 * min(h, w)))
    corners = [(4, 4), (w - s - 4, 4), (4, h - s - 4), (w - s - 4, h - s - 4)]
    means = [float(img[y : y + s, x : x + s].mean()) for x, y in corners]
    order = np.argsort(means)
    x, y = corners[int(order[0])]
    out[y : y + s, x : x + max(2, s // 4)] = 1.0  # the stem of an "L"
    out[y + s - max(2, s // 4) : y + s, x : x + s] = 1.0
    x, y = corners[int(order[1])]
    cv2.circle(out, (x + s // 2, y + s // 2), max(3, s // 2 - 1), 1.0, max(1, s // 6))
    return np.clip(out + rng.normal(0.0, 0.005, out.shape), 0, 1).astype(np.float32)


def apply_faults(
    rendered: Any, faults: Sequence[str], rng: np.random.Generator, rate: float = 0.5
) -> Any:
    """A copy of ``rendered`` with faults applied (see the module docstring for the truth)."""
    faults = parse_faults(faults)
    img = np.asarray(rendered.image, dtype=np.float32)
    pts = {s: dict(p) for s, p in rendered.landmarks.items()}
    applied: list[str] = []
    view = "hand"
    plate_tilt = 0.0
    cut = [f for f in ("wrist", "cut") if f in faults]
    if cut and rng.random() < rate:
        kind = cut[int(rng.integers(len(cut)))]
        img, mat = _view_cut(img, pts, kind)
        pts = _move(pts, mat)
        applied.append(kind)
        view = "wrist_only"
    if "frame" in faults and rng.random() < rate:
        img = _frame(img, rng)
        applied.append("frame")
    if "marker" in faults and rng.random() < rate:
        img = _marker(img, rng)
        applied.append("marker")
    if "plate" in faults and rng.random() < rate:
        img, mat, plate_tilt = _plate(img, rng)
        pts = _move(pts, mat)
        applied.append("plate")
    k = int(rng.integers(4)) if "rotate" in faults else 0
    mirrored = bool("mirror" in faults and rng.random() < 0.5)
    sides = list(rendered.sides)
    if k:
        h, w = img.shape
        img = np.rot90(img, k)
        m = np.eye(3)
        for _ in range(k):  # one counter-clockwise quarter turn of a w-wide image
            m = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0, 0, 1]]) @ m
            w, h = h, w
        pts = _move(pts, m[:2])
        applied.append(f"rotate{90 * k}")
    if mirrored:
        w = img.shape[1]
        img = img[:, ::-1]
        pts = _move(pts, np.array([[-1.0, 0, w - 1.0], [0, 1.0, 0]]))
        sides = sides[::-1]
        applied.append("mirror")
    # the quarter turns that bring the fingers up again: fliplr(rot90(X, k)) = rot90(fliplr(X), -k)
    undo = k % 4 if mirrored else (-k) % 4
    truth = {
        "applied": applied,
        "rotation_k": int(undo),
        "mirrored": mirrored,
        "view": view,
        "sides": sides,
        "plate_tilt_deg": round(plate_tilt, 2),
    }
    extra = {**rendered.extra, "faults": truth}
    return dataclasses.replace(
        rendered, image=np.ascontiguousarray(img, dtype=np.float32), landmarks=pts, extra=extra
    )


def fault_rng(seed: int, index: int, side: str) -> np.random.Generator:
    """The faults' own random stream of one image (the pose, film and noise keep theirs)."""
    code = {"L": 1, "R": 2, "B": 3}.get(side, 0)
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), code, 7)))
