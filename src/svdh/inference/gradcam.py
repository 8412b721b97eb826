"""Grad-CAM heat maps for SvdH models, and a measurement of where they point.

Heat maps come from `pytorch-grad-cam <https://github.com/jacobgil/pytorch-grad-cam>`_ (its
:class:`GradCAM` hooks, gradient pooling, ReLU and per-image normalisation); this module only
chooses the target layer and the target (score or class head), averages maps over the fold models
of a member and over the members of an ensemble, writes overlays, and measures localisation.

Localisation (the paper judged its maps by eye; we measure them). On a phantom cohort whose
``landmarks.json`` (``svdh synth``) gives every scored joint's position and scores, for each
image with at least one damaged joint:

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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError, BadDatasetError

#: Fraction of the hand size (diagonal of the landmarks' bounding box) used as the radius of the
#: disc around a damaged joint. 0.06 of a ~150 mm diagonal is ~9 mm: one joint and its bone ends.
DEFAULT_RADIUS_FRAC = 0.06


# --------------------------------------------------------------------------- target layers
def default_target_layer(backbone: str) -> str:
    """The default Grad-CAM layer of a backbone as a module path inside ``SvdhNet``
    (``backbone.`` + the registry's ``cam_layer``, e.g. ``backbone.layer4``)."""
    from svdh.models.backbones import get_backbone

    return f"backbone.{get_backbone(backbone).cam_layer}"


def resolve_layer(model: Any, path: str) -> Any:
    """The sub-module of ``model`` at dotted ``path`` (e.g. ``backbone.layer4``); a clear error if absent."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n and n.count(".") <= 1]
        raise BadConfigError(
            f"target layer {path!r} not found in the model; choose one of: {', '.join(names[:40])}"
        ) from None


# --------------------------------------------------------------------------- targets
class ScoreTarget:
    """Grad-CAM target for the score head: what makes the predicted SvdH score go up.

    * regression: output 0 (the total; erosion and JSN heads are outputs 1 and 2);
    * classification: the expected score under the softmax (differentiable in every class);
    * ordinal (CORAL): the expected class, the sum of P(y > k).
    """

    def __init__(
        self, task: str, representative_scores: Sequence[float] | None = None, output: int = 0
    ):
        self.task, self.output = task, output
        self.reps = (
            None if representative_scores is None else np.asarray(representative_scores, np.float32)
        )

    def __call__(self, out: Any) -> Any:
        import torch

        if self.task in ("regression", "boneage"):
            return out[..., self.output]
        if self.task == "classification":
            if self.reps is None:
                raise BadConfigError("a classification score target needs the class bins")
            reps = torch.as_tensor(self.reps, device=out.device, dtype=out.dtype)
            return (torch.softmax(out, dim=-1) * reps).sum(-1)
        if self.task == "ordinal":
            return torch.sigmoid(out).sum(-1)
        raise BadConfigError(f"no Grad-CAM score target for task {self.task!r}")


class ClassTarget:
    """Grad-CAM target for the class head: evidence for severity class ``k``.

    classification: the logit of class ``k``; ordinal (CORAL): the logit of P(y >= k) (for
    ``k = 0`` the negative first logit, evidence for "no damage").
    """

    def __init__(self, task: str, k: int):
        self.task, self.k = task, int(k)

    def __call__(self, out: Any) -> Any:
        if self.task == "classification":
            return out[..., self.k]
        if self.task == "ordinal":
            return out[..., self.k - 1] if self.k > 0 else -out[..., 0]
        raise BadConfigError(f"task {self.task!r} has no class head; use head='score'")


# --------------------------------------------------------------------------- Grad-CAM
@dataclass
class CamResult:
    """Heat maps for one batch: ``members[m, b]`` (mean over member m's fold models) and
    ``ensemble[b]`` (weighted mean over members), float32 in [0, 1] at the model's input size."""

    members: np.ndarray
    ensemble: np.ndarray
    member_names: list[str]


class Explainer:
    """Grad-CAM for every fold model of every member, averaged per member and over the ensemble.

    ``models[m][k]`` are fold models of member ``m`` (as built by :meth:`Bundle.build_models`),
    ``archs[m]`` their architecture dicts (``backbone``, ``task``). ``target_layer`` overrides the
    backbone's default (a dotted module path, same for all members). ``weights`` weigh members in
    the ensemble map (default equal). ``head`` is ``score`` or ``class``.
    """

    def __init__(
        self,
        models: Sequence[Sequence[Any]],
        archs: Sequence[Mapping[str, Any]],
        *,
        names: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        target_layer: str | None = None,
        head: str = "score",
        representative_scores: Sequence[float] | None = None,
        method: str = "gradcam",
    ) -> None:
        from pytorch_grad_cam import GradCAM, RandomCAM

        if head not in ("score", "class"):
            raise BadConfigError(f"Grad-CAM head must be 'score' or 'class', got {head!r}")
        if len(models) != len(archs):
            raise BadConfigError("one architecture per member is needed")
        cam_cls = {"gradcam": GradCAM, "random": RandomCAM}.get(method)
        if cam_cls is None:
            raise BadConfigError(f"unknown CAM method {method!r} (gradcam or random)")
        self.archs = [dict(a) for a in archs]
        self.names = (
            list(names)
            if names is not None
            else [str(a.get("backbone", i)) for i, a in enumerate(archs)]
        )
        w = (
            np.ones(len(models))
            if weights is None
            else np.abs(np.asarray(weights, dtype=np.float64))
        )
        self.weights = w / w.sum() if w.sum() > 0 else np.full(len(models), 1.0 / len(models))
        self.head = head
        self.reps = representative_scores
        self.cams: list[list[Any]] = []
        self.layers: list[str] = []
        for member, arch in zip(models, self.archs, strict=True):
            layer = target_layer or default_target_layer(str(arch.get("backbone")))
            self.layers.append(layer)
            cams = []
            for net in member:
                # Grad-CAM needs gradients at the target layer even for frozen or inference-only weights
                for p in net.parameters():
                    p.requires_grad_(True)
                cams.append(cam_cls(model=net, target_layers=[resolve_layer(net, layer)]))
            self.cams.append(cams)

    def _targets(self, task: str, n: int, classes: Sequence[int] | None) -> list[Any]:
        if self.head == "class" and task in ("classification", "ordinal"):
            if classes is None:
                return [None] * n  # resolved per model below (its own predicted class)
            return [ClassTarget(task, int(c)) for c in classes]
        return [ScoreTarget(task, self.reps) for _ in range(n)]

    def explain(self, x: Any, classes: Sequence[int] | None = None) -> CamResult:
        """Heat maps for a batch ``x`` (B x 1 x S x S float in [0, 1]).

        For the class head, ``classes`` are the classes to explain (default: each model's own
        predicted class).
        """
        import torch

        b = int(x.shape[0])
        members = np.zeros((len(self.cams), b, x.shape[-2], x.shape[-1]), dtype=np.float32)
        for m, cams in enumerate(self.cams):
            task = str(self.archs[m].get("task", "regression"))
            for cam in cams:
                targets = self._targets(task, b, classes)
                if any(t is None for t in targets):
                    with torch.no_grad():
                        out = cam.model(x)
                    pred = self._predicted_class(task, out)
                    targets = [ClassTarget(task, int(c)) for c in pred]
                with torch.enable_grad():
                    maps = cam(input_tensor=x, targets=targets)
                members[m] += np.nan_to_num(maps.astype(np.float32))
            members[m] /= max(len(cams), 1)
        ensemble = np.tensordot(self.weights.astype(np.float32), members, axes=1)
        return CamResult(
            members=members, ensemble=ensemble.astype(np.float32), member_names=self.names
        )

    @staticmethod
    def _predicted_class(task: str, out: Any) -> np.ndarray:
        o = out.detach().cpu().numpy()
        if task == "classification":
            return o.argmax(-1)
        return (o > 0).sum(-1)  # CORAL: number of thresholds passed


# --------------------------------------------------------------------------- overlays
def overlay(
    image: np.ndarray, cam: np.ndarray, alpha: float = 0.55, min_size: int = 384
) -> np.ndarray:
    """RGB uint8 overlay of a heat map on a greyscale image (both H x W; cam in [0, 1]).

    Hand-written blending (pytorch-grad-cam's ``show_cam_on_image`` washes the whole radiograph
    with blue): opacity grows with the heat, so cold regions keep the plain radiograph readable.
    Small model inputs are upscaled to ``min_size`` so a reader can see the joints.
    """
    import cv2

    img = np.asarray(image, dtype=np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    if cam.shape != img.shape:
        cam = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    scale = max(1.0, min_size / max(img.shape))
    if scale > 1.0:
        size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
        img = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC).clip(0, 1)
        cam = cv2.resize(cam, size, interpolation=cv2.INTER_LINEAR).clip(0, 1)
    heat = (
        cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET)[..., ::-1].astype(np.float32) / 255
    )
    a = (alpha * np.sqrt(cam))[..., None]
    rgb = img[..., None] * (1 - a) + heat * a
    return np.uint8(np.clip(rgb, 0, 1) * 255 + 0.5)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = tile.copy()
    h = max(18, tile.shape[0] // 20)
    cv2.rectangle(out, (0, 0), (tile.shape[1], h + 6), (0, 0, 0), -1)
    cv2.putText(
        out, text, (4, h), cv2.FONT_HERSHEY_SIMPLEX, h / 30, (255, 255, 255), 1, cv2.LINE_AA
    )
    return out


def panel(image: np.ndarray, result: CamResult, index: int, title: str = "") -> np.ndarray:
    """One row: the model input, the ensemble overlay, and each member's overlay, labelled."""
    base = overlay(image, np.zeros_like(result.ensemble[index]), alpha=0.0)
    tiles = [
        _label(base, title or "input"),
        _label(overlay(image, result.ensemble[index]), "ensemble"),
    ]
    if len(result.member_names) > 1:
        for m, name in enumerate(result.member_names):
            tiles.append(_label(overlay(image, result.members[m, index]), name))
    return np.concatenate(tiles, axis=1)


def write_cam(
    out_dir: str | Path,
    stem: str,
    image: np.ndarray,
    result: CamResult,
    index: int,
    title: str = "",
) -> dict[str, str]:
    """Write ``{stem}.cam.png`` (ensemble overlay), ``{stem}.cam_panel.png`` (input, ensemble and
    members side by side) and ``{stem}.cam.npy`` (raw maps, float32: row 0 the ensemble, then one
    row per member) and return their paths."""
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "overlay": out_dir / f"{stem}.cam.png",
        "panel": out_dir / f"{stem}.cam_panel.png",
        "array": out_dir / f"{stem}.cam.npy",
    }
    Image.fromarray(overlay(image, result.ensemble[index])).save(paths["overlay"])
    Image.fromarray(panel(image, result, index, title)).save(paths["panel"])
    np.save(
        paths["array"], np.concatenate([result.ensemble[index][None], result.members[:, index]])
    )
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------- localisation
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


def hand_mask(image: np.ndarray) -> np.ndarray:
    """The hand's pixels in a preprocessed radiograph: Otsu threshold, holes filled."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    img = np.asarray(image, dtype=np.float32)
    if float(img.max()) == float(img.min()):
        return np.ones(img.shape, dtype=bool)
    mask = img > threshold_otsu(img)
    mask = ndimage.binary_closing(mask, iterations=2)
    return ndimage.binary_fill_holes(mask)


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
    by :func:`svdh.synth.load_landmarks`): per image file, per hand, the landmarks in original
    pixels and the names of the damaged ones (erosion or JSN score > 0). On a dual-hand film the
    keys carry the side (``R:mcp2``) and each side is a hand of its own."""
    from svdh.synth import load_landmarks

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
    return _label(rgb, title)


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
    from dataclasses import replace

    from PIL import Image

    from svdh.core.io import read_radiograph
    from svdh.core.preprocess import preprocess
    from svdh.inference.predictor import DISPLAY_SIZE

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
    gdir = out_dir / "cam_gallery"
    if chosen:
        gdir.mkdir(parents=True, exist_ok=True)
    cfg = predictor.preprocess_config
    display_cfg = replace(cfg, size=max(DISPLAY_SIZE, cfg.size))
    ens_scores: list[LocalisationScore] = []
    member_scores: list[list[LocalisationScore]] = [[] for _ in predictor.names]
    n_no_damage = 0
    for start in range(0, len(names), predictor.batch_size):
        chunk = names[start : start + predictor.batch_size]
        xs, hands_list = [], []
        for n in chunk:
            rad = read_radiograph(cohort / n)
            x, tf = preprocess(rad, cfg, return_transform=True)
            hands = [
                HandLandmarks({k: tuple(tf.map_points(v)) for k, v in pts.items()}, bad)
                for pts, bad in per_image[n]
            ]
            xs.append(x)
            hands_list.append(hands)
        x = np.stack(xs)
        preds = predictor.combine(predictor.forward_raw(x))
        cams = predictor.cam(x)
        for j, (n, hands) in enumerate(zip(chunk, hands_list, strict=True)):
            region = damage_region(x[j].shape, hands, radius_frac)
            if region.any():
                hm = hand_mask(x[j])
                ens_scores.append(score_map(cams.ensemble[j], region, hm))
                for m, scores in enumerate(member_scores):
                    scores.append(score_map(cams.members[m, j], region, hm))
            else:
                n_no_damage += 1
            if n in chosen:
                display = preprocess(read_radiograph(cohort / n), display_cfg)
                title = (
                    f"{Path(n).stem}: {n_damaged[n]} damaged joints, score {preds[j]['score']:.1f}"
                )
                img = _gallery_image(
                    display,
                    cams.ensemble[j],
                    hands,
                    display_cfg.size / cfg.size,
                    radius_frac,
                    title,
                )
                Image.fromarray(img).save(gdir / f"{Path(n).stem}.png")
        if progress is not None:
            progress(len(chunk))
    summary = summarise(
        ens_scores,
        {
            "n_images_without_damage": n_no_damage,
            "radius_frac": radius_frac,
            "radius_definition": "radius_frac x diagonal of the hand's landmark bounding box",
            "damaged_definition": "joints with an erosion or JSN score > 0 in landmarks.json",
            "method": "Grad-CAM (pytorch-grad-cam), mean over fold models, weighted over members",
            "head": predictor.cam_head,
            "target_layers": dict(zip(predictor.names, predictor.explainer.layers, strict=True)),
            "image_size": cfg.size,
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
    write_localisation(out_dir / "localisation.json", summary)
    return summary
