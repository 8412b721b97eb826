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
