"""Grad-CAM heat maps for SvdH models: targets, the per-member and ensemble maps, overlays.

Heat maps come from `pytorch-grad-cam <https://github.com/jacobgil/pytorch-grad-cam>`_ (its
CAM classes' hooks, gradient pooling, ReLU and per-image normalisation); this module chooses the
method and target layers (:func:`parse_method`), the target (score or class head), averages the
maps of a flip-TTA model's two views (its score averages them), of the fold models of a member and
of the members of an ensemble, and draws and writes overlays. The default
(:data:`DEFAULT_CAM_METHOD`, ``gradcam+x-next``) is the product of the Grad-CAM map of the
deepest layer giving at least 12 x 12 cells and that of the next deeper layer: the fine layer's
cells, the deeper layer's sense of the task. Where the maps fall on a phantom's damaged joints is
measured in :mod:`svdh.inference.localisation`; the methods were compared in
docs/benchmarks.md (benchmarks/bench_cam_methods.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
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


def relative_target_layer(backbone: str, image_size: int | None, which: str) -> str:
    """Another Grad-CAM candidate of a backbone than :func:`default_target_layer`, as a module
    path inside ``SvdhNet``: ``deepest`` (e.g. ``backbone.layer4``), ``next`` (the candidate just
    deeper than the default, e.g. ``backbone.layer3``) or ``finer`` (just shallower,
    ``backbone.layer1``); the default itself where there is none such."""
    from svdh.models.backbones import get_backbone

    spec = get_backbone(backbone)
    paths = [p for p, _ in spec.family.cam_layers]  # deepest first
    i = paths.index(spec.cam_layer if image_size is None else spec.cam_layer_for(image_size))
    j = {"deepest": 0, "next": max(i - 1, 0), "finer": min(i + 1, len(paths) - 1)}[which]
    return f"backbone.{paths[j]}"


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


# --------------------------------------------------------------------------- CAM methods
@dataclass(frozen=True)
class CamMethod:
    """A heat-map method: a pytorch-grad-cam class at the backbone's default layer (``fine``:
    the next shallower candidate, twice the cells), optionally
    fused with a deeper layer's map (``deep``: ``deepest`` or ``next``; ``fuse``: ``mul``, the
    product of the two normalised maps, or ``mean``) and with the library's smoothing options."""

    cls: str
    fine: bool = False
    deep: str | None = None
    fuse: str = "mul"
    aug_smooth: bool = False
    eigen_smooth: bool = False


#: The pytorch-grad-cam class behind each base method name.
CAM_CLASSES: dict[str, str] = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "eigengradcam": "EigenGradCAM",
    "layercam": "LayerCAM",
    "ablationcam": "AblationCAM",
    "scorecam": "ScoreCAM",
    "random": "RandomCAM",
}
#: Options after a base name, joined by ``+`` (``gradcam+x-next+aug``).
CAM_OPTIONS: dict[str, dict[str, Any]] = {
    "x-next": {"deep": "next", "fuse": "mul"},
    "x-deepest": {"deep": "deepest", "fuse": "mul"},
    "mean-next": {"deep": "next", "fuse": "mean"},
    "mean-deepest": {"deep": "deepest", "fuse": "mean"},
    "fine": {"fine": True},
    "aug": {"aug_smooth": True},
    "eigen": {"eigen_smooth": True},
}
#: The heat-map method of ``svdh predict --cam``, ``svdh explain`` and the web page: of the
#: methods compared (benchmarks/bench_cam_methods.py, docs/benchmarks.md), the one with the most
#: mass on the damaged joints of both demo bundles (over twice a random map's).
DEFAULT_CAM_METHOD = "gradcam+x-next"


def parse_method(name: str) -> CamMethod:
    """The :class:`CamMethod` of a name: a :data:`CAM_CLASSES` base, then any
    :data:`CAM_OPTIONS` joined by ``+`` (e.g. ``gradcam+x-next``)."""
    bases = [b for b in CAM_CLASSES if name == b or name.startswith(b + "+")]
    base = max(bases, key=len, default="")  # gradcam++ before gradcam
    options = name[len(base) + 1 :].split("+") if len(name) > len(base) else []
    if not base or any(o not in CAM_OPTIONS for o in options):
        raise BadConfigError(
            f"unknown CAM method {name!r}: a base ({', '.join(CAM_CLASSES)}) "
            f"then options joined by '+' ({', '.join(CAM_OPTIONS)})"
        )
    kwargs: dict[str, Any] = {}
    for o in options:
        kwargs.update(CAM_OPTIONS[o])
    return CamMethod(CAM_CLASSES[base], **kwargs)


def cam_class(method: CamMethod) -> Any:
    """The pytorch-grad-cam class of ``method``; with ``deep``, a subclass that fuses the
    per-layer maps (each already in [0, 1] at the input size) by product or mean instead of the
    library's mean."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.image import scale_cam_image

    base = getattr(pytorch_grad_cam, method.cls)
    if method.deep is None or method.fuse == "mean":
        return base

    def aggregate_multi_layers(self: Any, cams: Sequence[np.ndarray]) -> np.ndarray:
        return scale_cam_image(np.prod(np.maximum(np.concatenate(cams, axis=1), 0), axis=1))

    return type(f"Fused{method.cls}", (base,), {"aggregate_multi_layers": aggregate_multi_layers})


def method_layers(method: CamMethod, backbone: str, image_size: int | None) -> list[str]:
    """The target layers of ``method`` on a backbone: the default (>= 12 x 12 cells) or the
    finer one, then the deeper one it is fused with, if any."""
    fine = method.fine and relative_target_layer(backbone, image_size, "finer")
    layers = [fine or default_target_layer(backbone, image_size)]
    if method.deep is not None:
        deep = relative_target_layer(backbone, image_size, method.deep)
        layers += [deep] if deep != layers[0] else []
    return layers


# --------------------------------------------------------------------------- Grad-CAM
def _flip_tta(net: Any) -> bool:
    """Whether ``net`` (an ``SvdhNet``, or any module) scores the mean of two mirror views."""
    return bool(getattr(net, "uses_flip_tta", lambda: False)())


def _one_view(net: Any) -> Any:
    """What Grad-CAM runs: ``net`` itself, or one view of a flip-TTA net (``OneView``)."""
    from svdh.models.net import OneView

    return OneView(net) if _flip_tta(net) else net


@dataclass
class CamResult:
    """Heat maps for one batch: ``members[m, b]`` (mean over member m's fold models) and
    ``ensemble[b]`` (weighted mean over members), float32 in [0, 1] at the model's input size."""

    members: np.ndarray
    ensemble: np.ndarray
    member_names: list[str]


@contextlib.contextmanager
def _hooked(cam: Any) -> Iterator[None]:
    """``cam``'s activation and gradient hooks on its target layers for one call, then off.

    pytorch-grad-cam hooks the layers when the CAM object is made and keeps them: every later
    forward pass of the shared model (each scored image) would append its activations to the
    CAM's lists until the next map, a leak in a long-running service."""
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    old = cam.activations_and_grads
    cam.activations_and_grads = ActivationsAndGradients(
        cam.model, cam.target_layers, cam.reshape_transform, old.detach
    )
    try:
        yield
    finally:
        cam.activations_and_grads.release()
        cam.activations_and_grads.activations, cam.activations_and_grads.gradients = [], []


class Explainer:
    """Grad-CAM for every fold model of every member, averaged per member and over the ensemble.

    ``models[m][k]`` are fold models of member ``m`` (as built by :meth:`Bundle.build_models`),
    ``archs[m]`` their architecture dicts (``backbone``, ``task``). ``method`` names a method
    (:func:`parse_method`; default :data:`DEFAULT_CAM_METHOD`), whose layers follow the backbone
    and ``image_size`` (:func:`method_layers`); ``target_layer`` (a dotted module path, same for
    all members) replaces them by that one layer. ``weights`` weigh members in the ensemble map
    (default equal). ``head`` is ``score`` or ``class``.
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
        method: str = DEFAULT_CAM_METHOD,
    ) -> None:
        if head not in ("score", "class"):
            raise BadConfigError(f"Grad-CAM head must be 'score' or 'class', got {head!r}")
        if len(models) != len(archs):
            raise BadConfigError("one architecture per member is needed")
        self.method, self.spec = method, parse_method(method)
        cam_cls = cam_class(self.spec)
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
        #: per member, per fold model: whether its score averages the image and its mirror
        self.two_views: list[list[bool]] = []
        #: each member's target layers, joined by " x " where maps of two layers are fused
        self.layers: list[str] = []
        for member, arch in zip(models, self.archs, strict=True):
            backbone = str(arch.get("backbone"))
            paths = (
                [target_layer] if target_layer else method_layers(self.spec, backbone, image_size)
            )
            self.layers.append(" x ".join(paths))
            cams = []
            for net in member:
                # Grad-CAM needs gradients at the target layer even for frozen or inference-only weights
                for p in net.parameters():
                    p.requires_grad_(True)
                layers = [resolve_layer(net, path) for path in paths]
                cam = cam_cls(model=_one_view(net), target_layers=layers)
                cam.activations_and_grads.release()  # hooked only while explaining: _hooked
                cams.append(cam)
            self.cams.append(cams)
            self.two_views.append([_flip_tta(net) for net in member])

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
            for cam, two in zip(cams, self.two_views[m], strict=True):
                targets = self._targets(task, b, classes)
                if any(t is None for t in targets):
                    net = getattr(cam.model, "net", cam.model)
                    with torch.no_grad():
                        out = net(x)  # the class the model predicts (mirror view included)
                    pred = self._predicted_class(task, out)
                    targets = [ClassTarget(task, int(c)) for c in pred]
                members[m] += self._model_map(cam, x, targets, two)
            members[m] /= max(len(cams), 1)
        ensemble = np.tensordot(self.weights.astype(np.float32), members, axes=1)
        return CamResult(
            members=members, ensemble=ensemble.astype(np.float32), member_names=self.names
        )

    def _model_map(self, cam: Any, x: Any, targets: list[Any], two_views: bool) -> np.ndarray:
        """One fold model's maps of ``x`` (B x S x S, each with maximum 1 or all 0). A model with
        flip TTA scores the mean of the image's and its mirror's outputs: its map is the mean of
        the two views' maps, the mirror's flipped back."""
        import torch

        maps = []
        for flip in (False, True) if two_views else (False,):
            view = torch.flip(x, dims=[-1]) if flip else x
            with torch.enable_grad(), _hooked(cam):
                mp = cam(
                    input_tensor=view,
                    targets=targets,
                    aug_smooth=self.spec.aug_smooth,
                    eigen_smooth=self.spec.eigen_smooth,
                )
            mp = np.nan_to_num(np.asarray(mp, dtype=np.float32))
            maps.append(mp[..., ::-1] if flip else mp)
        out = np.clip(np.mean(maps, axis=0), 0, None)
        peak = out.max(axis=(-2, -1), keepdims=True)
        return (out / np.where(peak > 0, peak, 1)).astype(np.float32)

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
