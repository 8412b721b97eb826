"""Grad-CAM heat maps for SvdH models: targets, the per-member and ensemble maps, overlays.

Heat maps come from `pytorch-grad-cam <https://github.com/jacobgil/pytorch-grad-cam>`_ (its
:class:`GradCAM` hooks, gradient pooling, ReLU and per-image normalisation); this module only
chooses the target layer and the target (score or class head), averages maps over the fold models
of a member and over the members of an ensemble, and draws and writes overlays. Where the maps
fall on a phantom's damaged joints is measured in :mod:`svdh.inference.localisation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError


# --------------------------------------------------------------------------- target layers
def default_target_layer(backbone: str, image_size: int | None = None) -> str:
    """The default Grad-CAM layer of a backbone as a module path inside ``SvdhNet``
    (``backbone.`` + the registry's layer for ``image_size``: the deepest one giving a map of
    at least 12 x 12 cells, e.g. ``backbone.layer2`` at 96 px)."""
    from svdh.models.backbones import get_backbone

    spec = get_backbone(backbone)
    return f"backbone.{spec.cam_layer if image_size is None else spec.cam_layer_for(image_size)}"


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
        self,
        task: str,
        representative_scores: Sequence[float] | np.ndarray | None = None,
        output: int = 0,
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
    backbone's default for ``image_size`` (a dotted module path, same for all members). ``weights`` weigh members in
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
        image_size: int | None = None,
        head: str = "score",
        representative_scores: Sequence[float] | np.ndarray | None = None,
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
            layer = target_layer or default_target_layer(str(arch.get("backbone")), image_size)
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
        cv2.applyColorMap((255 * cam).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1].astype(
            np.float32
        )
        / 255
    )
    a = (alpha * np.sqrt(cam))[..., None]
    rgb = img[..., None] * (1 - a) + heat * a
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def label(tile: np.ndarray, text: str) -> np.ndarray:
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
        label(base, title or "input"),
        label(overlay(image, result.ensemble[index]), "ensemble"),
    ]
    if len(result.member_names) > 1:
        for m, name in enumerate(result.member_names):
            tiles.append(label(overlay(image, result.members[m, index]), name))
    return np.concatenate(tiles, axis=1)


# --------------------------------------------------------------------------- heat maps on the film
#: Longest side (px) of the whole-film view on the web page and in ``--cam`` files.
FILM_VIEW_SIZE = 768


def film_scale(film_shape: Sequence[int], max_side: int | None = None) -> tuple[int, int]:
    """The (height, width) of a film shown at most ``max_side`` px on its longest side (never
    enlarged)."""
    h, w = int(film_shape[0]), int(film_shape[1])
    f = 1.0 if not max_side else min(1.0, max_side / max(h, w, 1))
    return max(1, round(h * f)), max(1, round(w * f))


def film_to_input_affine(hand: Any, film_shape: Sequence[int], out_shape: Sequence[int]) -> Any:
    """The 2 x 3 affine from (x, y) of the film shown at ``out_shape`` (a resized copy of a
    ``film_shape`` film) to (x, y) of the hand's model input: the hand's own
    :meth:`~svdh.core.canonical.ModelInput.film_to_input` (cut, turn, mirror, crop), read off
    at three points. Pixel centres throughout, as OpenCV's resize and warps take them."""
    sy, sx = out_shape[0] / film_shape[0], out_shape[1] / film_shape[1]
    shown = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    film = (shown + 0.5) / np.array([sx, sy]) - 0.5
    q = np.asarray(hand.film_to_input(film), dtype=np.float64)
    return np.column_stack([q[1] - q[0], q[2] - q[0], q[0]])


def cam_on_film(
    hand: Any, cam: np.ndarray, film_shape: Sequence[int], out_shape: Sequence[int] | None = None
) -> np.ndarray:
    """One hand's heat map (model-input space, any square size) warped onto the film as given
    (shown at ``out_shape``, default the film's size), zero wherever the hand's input did not
    come from the film: outside the region its ``pixels`` were cut from (the other hand of a
    both-hands film, the crop's padding)."""
    import cv2

    out_shape = tuple(out_shape or film_shape[:2])
    cam = np.asarray(cam, dtype=np.float32)
    size = hand.x.shape[0] if getattr(hand, "x", None) is not None else cam.shape[0]
    # model input (x, y) -> heat-map (x, y) where the map is not at the input's size
    f = cam.shape[0] / size
    a = film_to_input_affine(hand, film_shape[:2], out_shape)
    a = np.vstack([a * f, [0.0, 0.0, 1.0]])
    a[:2, 2] += 0.5 * f - 0.5
    dsize = (int(out_shape[1]), int(out_shape[0]))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    heat = cv2.warpAffine(cam, a[:2], dsize, flags=flags, borderValue=0.0)
    # where the hand's pixels came from: film -> pixels is hand.matrix
    m = np.asarray(hand.matrix, dtype=np.float64)
    sy, sx = out_shape[0] / film_shape[0], out_shape[1] / film_shape[1]
    shown_to_film = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
    to_pixels = np.vstack([m, [0, 0, 1]]) @ shown_to_film
    ones = np.ones(np.asarray(hand.pixels).shape[:2], np.float32)
    inside = cv2.warpAffine(ones, to_pixels[:2], dsize, flags=flags, borderValue=0.0)
    return np.clip(heat * (inside > 0.5), 0, 1)


def cams_on_film(
    film_shape: Sequence[int],
    hands: Sequence[Any],
    cams: Sequence[np.ndarray | None],
    out_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Every hand's heat map on the film as given, as one film-sized map in [0, 1].

    ``hands``: the film's :class:`~svdh.core.canonical.ModelInput` (one per hand, as
    :func:`~svdh.core.canonical.model_inputs` gives them), ``cams[i]`` hand i's map (None for a
    refused hand). Where two hands' regions meet, the hotter one is kept."""
    out_shape = tuple(out_shape or film_shape[:2])
    heat = np.zeros((int(out_shape[0]), int(out_shape[1])), np.float32)
    for hand, cam in zip(hands, cams, strict=True):
        if cam is not None and getattr(hand, "x", None) is not None:
            heat = np.maximum(heat, cam_on_film(hand, cam, film_shape, out_shape))
    return heat


def film_display(film: Any, out_shape: Sequence[int]) -> np.ndarray:
    """The film as given, resized to ``out_shape`` (area averaging) and its grey levels
    stretched between the 0.5 and 99.5 percentiles, float32 in [0, 1] (for display only)."""
    import cv2

    from svdh.core.preprocess import as_float_image

    img = as_float_image(film)
    small = cv2.resize(img, (int(out_shape[1]), int(out_shape[0])), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(small, [0.5, 99.5])
    return np.clip((small - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)


def film_overlay(
    film: Any,
    hands: Sequence[Any],
    cams: Sequence[np.ndarray | None],
    max_side: int = FILM_VIEW_SIZE,
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The whole film (at most ``max_side`` px) plain and with every hand's heat map projected
    back onto it: two RGB uint8 images of one size, drawn as :func:`overlay` draws a hand.
    With ``labels`` (one per hand), each hand's box on the film is outlined and labelled."""
    shape = np.asarray(getattr(film, "pixels", film)).shape[:2]
    out_shape = film_scale(shape, max_side)
    base = film_display(film, out_shape)
    heat = cams_on_film(shape, hands, cams, out_shape)
    plain, hot = overlay(base, np.zeros_like(heat), alpha=0.0), overlay(base, heat)
    if labels is not None:  # (a small film is enlarged by overlay, as a hand is)
        f = plain.shape[0] / shape[0]
        boxes = [tuple(round(v * f) for v in h.decision.box) for h in hands]
        plain, hot = (mark_boxes(im, boxes, labels) for im in (plain, hot))
    return plain, hot


def hand_label(hand: str | None, side: str | None) -> str:
    """A hand's label on the film view: its number on a both-hands film ('1/2' -> '1') and its
    side in words, e.g. ``1 right``."""
    number = hand.split("/")[0] if hand else ""
    return " ".join(x for x in (number, {"L": "left", "R": "right"}.get(side or "", "")) if x)


def mark_boxes(
    rgb: np.ndarray, boxes: Sequence[Sequence[int]], labels: Sequence[str]
) -> np.ndarray:
    """``rgb`` with each box (x0, y0, x1, y1) outlined and its label written at its top left."""
    import cv2

    out = rgb.copy()
    h = max(16, max(out.shape[:2]) // 32)
    for (x0, y0, x1, y1), text in zip(boxes, labels, strict=True):
        cv2.rectangle(
            out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), max(1, h // 12), cv2.LINE_AA
        )
        if text:
            (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, h / 30, 1)
            cv2.rectangle(out, (x0, y0), (x0 + tw + 8, y0 + h + 6), (0, 0, 0), -1)
            cv2.putText(
                out,
                text,
                (x0 + 4, y0 + h),
                cv2.FONT_HERSHEY_SIMPLEX,
                h / 30,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
    return out


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
