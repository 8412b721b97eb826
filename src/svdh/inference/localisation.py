"""Where Grad-CAM maps fall on a phantom's damaged joints: ``svdh explain``.

The paper judged its maps by eye; we measure them. On a phantom cohort whose ``landmarks.json``
(``svdh synth``, read by :func:`svdh.core.landmarks.load_landmarks`) gives every scored joint's
position and scores, for each image with at least one damaged joint:

* **mass on damaged joints**: the fraction of the map's total mass inside discs of radius
  ``radius_frac x hand size`` around the damaged joints' landmarks (hand size = the diagonal of
  the landmarks' bounding box, so the disc scales with the hand, not with the pixel grid);
* **pointing game** (Zhang et al. 2016): a hit when the map's maximum lies inside such a disc.

Both are compared with a random-map baseline. For a map of independent, identically distributed
pixel values, both the expected mass and the hit probability equal the discs' share of the image
area exactly (by exchangeability of pixels), so the baseline is computed, not sampled:
``random_mass``/``random_pointing``. Because a map that merely lights up the hand already beats
that, a harder baseline restricts the random map to the hand (``random_hand_*``: the discs' share
of the hand's area).

Images are read, preprocessed, scored and explained by the predictor
(:meth:`svdh.inference.predictor.Predictor.prepare` and :meth:`~svdh.inference.predictor.Predictor.score`),
exactly as ``svdh predict --cam`` does: every hand of a film (a both-hands film gives two) is
turned fingers-up where the bundle was trained so (:func:`svdh.core.canonical.model_inputs`).
This module only maps each hand's landmarks from the film onto its model input, through the
hand's own cut, turn, mirror and crop (:meth:`svdh.core.canonical.ModelInput.film_to_input`),
and scores the maps.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError, BadDatasetError
from svdh.core.landmarks import load_landmarks
from svdh.core.preprocess import hand_mask
from svdh.inference.gradcam import label, overlay
from svdh.runs.layout import RunDir

#: Fraction of the hand size (diagonal of the landmarks' bounding box) used as the radius of the
#: disc around a damaged joint. 0.06 of a ~150 mm diagonal is ~9 mm: one joint and its bone ends.
DEFAULT_RADIUS_FRAC = 0.06


# --------------------------------------------------------------------------- the measure
def disc_mask(shape: tuple[int, int], points: np.ndarray, radius: float) -> np.ndarray:
    """Boolean H x W mask of the union of discs of ``radius`` (pixels) around ``points`` (N x 2, x y)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros(shape, dtype=bool)
    for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        mask |= (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= radius**2
    return mask


def hand_size(points: np.ndarray) -> float:
    """Hand size in pixels: the diagonal of the bounding box of all of a hand's landmarks."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not len(p):
        return 0.0
    return float(np.hypot(*(p.max(0) - p.min(0))))


@dataclass
class LocalisationScore:
    mass: float
    hit: bool
    random_mass: float
    random_hand_mass: float


@dataclass
class HandLandmarks:
    """One hand in one image: every landmark (model-input pixels) and the damaged ones' names."""

    points: dict[str, tuple[float, float]]
    damaged: set[str]

    def damaged_points(self) -> np.ndarray:
        return np.array([self.points[k] for k in sorted(self.damaged) if k in self.points]).reshape(
            -1, 2
        )


def damage_region(
    shape: tuple[int, int], hands: Sequence[HandLandmarks], radius_frac: float
) -> np.ndarray:
    """Union of discs around every damaged joint; each hand's radius scales with that hand."""
    region = np.zeros(shape, dtype=bool)
    for h in hands:
        pts = h.damaged_points()
        if len(pts):
            region |= disc_mask(
                shape, pts, radius_frac * hand_size(np.array(list(h.points.values())))
            )
    return region


def score_map(
    cam: np.ndarray, region: np.ndarray, hand: np.ndarray | None = None
) -> LocalisationScore:
    """Localisation of one heat map against one image's damaged-joint region (same shape)."""
    cam = np.clip(np.asarray(cam, dtype=np.float64), 0, None)
    if cam.shape != region.shape:
        raise BadConfigError(f"heat map {cam.shape} and region {region.shape} differ in shape")
    total = cam.sum()
    mass = float(cam[region].sum() / total) if total > 0 else float(region.mean())
    # pointing game: the map's maximum (ties: the first maximum in row-major order)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    hit = bool(region[peak]) if total > 0 else False
    area = float(region.mean())
    hand_area = (
        float((region & hand).sum() / hand.sum()) if hand is not None and hand.any() else area
    )
    return LocalisationScore(mass=mass, hit=hit, random_mass=area, random_hand_mass=hand_area)


def summarise(
    scores: Sequence[LocalisationScore], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The figures of ``localisation.json``: means over images with at least one damaged joint.

    ``random_pointing`` equals ``random_mass`` for i.i.d. random maps (see the module docstring).
    """
    n = len(scores)

    def mean(vals: Iterable[float]) -> float | None:
        v = list(vals)
        return float(np.mean(v)) if v else None

    out: dict[str, Any] = {
        "n_images": n,
        "mass_on_damaged": mean(s.mass for s in scores),
        "pointing_game": mean(float(s.hit) for s in scores),
        "random_mass": mean(s.random_mass for s in scores),
        "random_pointing": mean(s.random_mass for s in scores),
        "random_hand_mass": mean(s.random_hand_mass for s in scores),
        "random_hand_pointing": mean(s.random_hand_mass for s in scores),
    }
    if n:
        out["mass_ratio_vs_random"] = float(out["mass_on_damaged"] / max(out["random_mass"], 1e-12))
        out["mass_ratio_vs_random_hand"] = float(
            out["mass_on_damaged"] / max(out["random_hand_mass"], 1e-12)
        )
    out.update(dict(extra or {}))
    return out


def write_localisation(path: str | Path, summary: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(summary), indent=2, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------- phantom cohorts
def cohort_hands(
    landmarks_json: str | Path,
) -> dict[str, list[tuple[dict[str, tuple[float, float]], set[str]]]]:
    """From a phantom ``landmarks.json`` (``svdh synth``, schema in docs/synth.md; format checked
    by :func:`svdh.core.landmarks.load_landmarks`): per image file, per hand, the landmarks in original
    pixels and the names of the damaged ones (erosion or JSN score > 0). On a dual-hand film the
    keys carry the side (``R:mcp2``) and each side is a hand of its own."""
    doc = load_landmarks(landmarks_json)
    out: dict[str, list[tuple[dict[str, tuple[float, float]], set[str]]]] = {}
    for name, entry in (doc.get("images") or {}).items():
        flat = entry.get("landmarks")
        if isinstance(flat, dict):
            groups: dict[str, dict[str, Any]] = {}
            for key, v in flat.items():
                side, _, joint = key.rpartition(":")
                groups.setdefault(side, {})[joint] = v
        else:  # an earlier layout: landmarks under each hand
            groups = {sd: h.get("landmarks") or {} for sd, h in (entry.get("hands") or {}).items()}
        hands = []
        for lms in groups.values():
            if not lms:
                continue
            pts = {k: (float(v["x"]), float(v["y"])) for k, v in lms.items()}
            bad = {
                k for k, v in lms.items() if (v.get("erosion") or 0) > 0 or (v.get("jsn") or 0) > 0
            }
            hands.append((pts, bad))
        out[str(name)] = hands
    return out


# --------------------------------------------------------------------------- film -> model input
FilmHand = tuple[dict[str, tuple[float, float]], set[str]]


def assign_to_hands(
    boxes: Sequence[tuple[int, int, int, int]], groups: Sequence[FilmHand]
) -> list[int]:
    """Which hand of a film (``boxes``: each hand's box on the film, x0 y0 x1 y1) each landmark
    group belongs to: the hand whose box holds the group's centre, else the nearest box centre
    (a film the canonical stage did not split gives every group to its one hand)."""
    out = []
    for pts, _ in groups:
        c = np.mean(np.array(list(pts.values()), dtype=np.float64).reshape(-1, 2), axis=0)

        def rank(b: tuple[int, int, int, int], c: np.ndarray = c) -> tuple[bool, float]:
            inside = b[0] <= c[0] < b[2] and b[1] <= c[1] < b[3]
            return (not inside, float(np.hypot(c[0] - (b[0] + b[2]) / 2, c[1] - (b[1] + b[3]) / 2)))

        out.append(min(range(len(boxes)), key=lambda j: rank(boxes[j])) if boxes else -1)
    return out


def input_landmarks(items: Sequence[Any], groups: Sequence[FilmHand]) -> list[list[HandLandmarks]]:
    """Each scored hand's landmarks on its model input: per item of one film (each a
    :class:`svdh.inference.predictor.Prepared` with its ``hand``, the ModelInput), the landmark
    groups that belong to that hand, mapped by ``item.hand.film_to_input`` (the cut of a
    both-hands film, the quarter turns, tilt and mirroring, then the crop)."""
    owner = assign_to_hands([it.hand.decision.box for it in items], groups)
    out: list[list[HandLandmarks]] = [[] for _ in items]
    for (pts, bad), j in zip(groups, owner, strict=True):
        if j < 0:
            continue
        names = list(pts)
        mapped = items[j].hand.film_to_input(np.array([pts[k] for k in names], dtype=np.float64))
        out[j].append(
            HandLandmarks(
                {k: (float(x), float(y)) for k, (x, y) in zip(names, mapped, strict=True)}, bad
            )
        )
    return out


def _gallery_image(
    display: np.ndarray,
    cam: np.ndarray,
    hands: Sequence[HandLandmarks],
    scale: float,
    radius_frac: float,
    title: str,
) -> np.ndarray:
    """Overlay on the display image with the damaged joints' discs ringed and other joints dotted."""
    import cv2

    rgb = overlay(display, cam)
    f = scale * rgb.shape[0] / display.shape[0]

    def at(x: float, y: float) -> tuple[int, int]:
        return round((x + 0.5) * f), round((y + 0.5) * f)

    for h in hands:
        r = max(2, round(radius_frac * hand_size(np.array(list(h.points.values()))) * f))
        for k, (x, y) in h.points.items():
            if k in h.damaged:
                cv2.circle(rgb, at(x, y), r, (255, 255, 255), 1, cv2.LINE_AA)
            else:
                cv2.circle(rgb, at(x, y), 2, (190, 190, 190), -1, cv2.LINE_AA)
    return label(rgb, title)


def explain_cohort(
    predictor: Any,
    cohort: str | Path,
    out_dir: str | Path,
    *,
    landmarks: str | Path | None = None,
    radius_frac: float = DEFAULT_RADIUS_FRAC,
    gallery: int = 12,
    max_images: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure where the model's Grad-CAM maps fall on a phantom cohort; write
    ``out_dir/localisation.json`` and ``out_dir/cam_gallery/*.png`` (the most damaged hands,
    damaged joints ringed). ``predictor`` is a :class:`svdh.inference.predictor.Predictor`.

    ``out_dir`` is usually the run or ensemble directory the bundle came from, so that
    ``svdh evaluate`` and ``svdh report`` show the figures beside the run's metrics.
    """
    if not 0 < radius_frac < 1:
        raise BadConfigError(
            f"--radius must lie in (0, 1) (a fraction of the hand size), got {radius_frac}"
        )
    cohort, out_dir = Path(cohort), Path(out_dir)
    per_image = cohort_hands(landmarks or cohort / "landmarks.json")
    names = sorted(n for n in per_image if (cohort / n).is_file())
    if not names:
        raise BadDatasetError(f"{cohort}: none of the images in landmarks.json is in the folder")
    if max_images:
        names = names[:max_images]
    n_damaged = {n: sum(len(b) for _, b in per_image[n]) for n in names}
    chosen = set(sorted(names, key=lambda n: (-n_damaged[n], n))[:gallery])
    gdir = RunDir(out_dir).cam_gallery
    if chosen:
        gdir.mkdir(parents=True, exist_ok=True)
    ens_scores: list[LocalisationScore] = []
    member_scores: list[list[LocalisationScore]] = [[] for _ in predictor.names]
    counts = {"no_damage": 0, "refused": 0}
    for start in range(0, len(names), predictor.batch_size):
        chunk = names[start : start + predictor.batch_size]
        items, marks = _prepare_chunk(predictor, cohort, chunk, per_image, chosen, counts)
        for item, hands, pred in zip(items, marks, predictor.score(items, cam=True), strict=True):
            region = damage_region(pred.preprocessed.shape, hands, radius_frac)
            if region.any():
                hm = hand_mask(pred.preprocessed)
                ens_scores.append(score_map(pred.cam, region, hm))
                for m, scores in enumerate(member_scores):
                    scores.append(score_map(pred.cam_members[m], region, hm))
            else:
                counts["no_damage"] += 1
            if item.name in chosen:
                n_bad = sum(len(h.damaged) for h in hands)
                _write_gallery_image(gdir, pred, item, hands, n_bad, radius_frac)
        if progress is not None:
            progress(len(chunk))
    n_no_damage = counts["no_damage"]
    summary = _summary(predictor, cohort, ens_scores, member_scores, n_no_damage, radius_frac)
    summary["n_hands_refused"] = counts["refused"]
    write_localisation(RunDir(out_dir).localisation, summary)
    return summary


def _prepare_chunk(
    predictor: Any,
    cohort: Path,
    chunk: Sequence[str],
    per_image: Mapping[str, Sequence[FilmHand]],
    chosen: set[str],
    counts: dict[str, int],
) -> tuple[list[Any], list[list[HandLandmarks]]]:
    """Every hand of the chunk's films, prepared as ``svdh predict --cam`` prepares it, with
    its landmarks on its model input; refused hands are counted and left out."""
    from svdh.core.io import read_radiograph

    items: list[Any] = []
    marks: list[list[HandLandmarks]] = []
    for name in chunk:
        hands = predictor.prepare_hands(
            name, read_radiograph(cohort / name), display=name in chosen
        )
        ok = [it for it in hands if it.error is None and it.hand is not None]
        counts["refused"] += len(hands) - len(ok)
        items += ok
        marks += input_landmarks(ok, per_image[name])
    return items, marks


def _write_gallery_image(
    gdir: Path,
    pred: Any,
    item: Any,
    hands: Sequence[HandLandmarks],
    n_damaged: int,
    radius_frac: float,
) -> None:
    from PIL import Image

    d = item.decision
    stem = Path(pred.image).stem + (f"-{d.side or d.hand_index + 1}" if d.split else "")
    title = f"{stem}: {n_damaged} damaged joints, score {pred.score:.1f}"
    scale = pred.display.shape[0] / pred.preprocessed.shape[0]
    img = _gallery_image(pred.display, pred.cam, hands, scale, radius_frac, title)
    Image.fromarray(img).save(gdir / f"{stem}.png")


def _summary(
    predictor: Any,
    cohort: Path,
    ens_scores: list[LocalisationScore],
    member_scores: list[list[LocalisationScore]],
    n_no_damage: int,
    radius_frac: float,
) -> dict[str, Any]:
    summary = summarise(
        ens_scores,
        {
            "n_images_without_damage": n_no_damage,
            "radius_frac": radius_frac,
            "radius_definition": "radius_frac x diagonal of the hand's landmark bounding box",
            "damaged_definition": "joints with an erosion or JSN score > 0 in landmarks.json",
            "method": predictor.explainer.method,
            "method_definition": "svdh.inference.gradcam.parse_method (pytorch-grad-cam); flip-TTA "
            "models: mean of the image's and its mirror's maps; mean over fold models, weighted "
            "over members",
            "head": predictor.cam_head,
            "target_layers": dict(zip(predictor.names, predictor.explainer.layers, strict=True)),
            "image_size": predictor.image_size,
            "cohort": str(cohort.resolve()),
            "model": str(predictor.bundle.path) if predictor.bundle.path else None,
            "baseline": "random_*: i.i.d. random map over the image (expected value = area share of the "
            "damaged-joint discs); random_hand_*: random map restricted to the hand",
        },
    )
    if len(predictor.names) > 1:
        summary["by_member"] = {
            name: {
                k: v for k, v in summarise(s).items() if k in ("mass_on_damaged", "pointing_game")
            }
            for name, s in zip(predictor.names, member_scores, strict=True)
        }
    return summary
