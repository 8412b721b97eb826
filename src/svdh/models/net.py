"""``SvdhNet``: greyscale stem + torchvision backbone + task head; initialisation; outputs.

The contract (``docs/architecture.md``): input ``B x 1 x S x S`` floats in [0, 1];
``forward`` returns one tensor on the user's scale (scores, months, logits). Greyscale is
mapped to the backbone's three ImageNet-normalised channels here and nowhere else.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from svdh.core.errors import BadConfigError, BadRunError, WeightsUnavailableError
from svdh.core.scoring import MAX_EROSION_HAND, MAX_HAND, MAX_JSN_HAND, SeverityBins
from svdh.models.backbones import BackboneSpec, get_backbone
from svdh.models.heads import TRANSFORMS, Head, check_task, check_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Seconds to wait on the network when ImageNet weights must be downloaded.
DOWNLOAD_TIMEOUT_S = 15.0


def _get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part) if not part.isdigit() else mod[int(part)]  # type: ignore[index]
    return mod


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = _get_module(root, parent_path) if parent_path else root
    if last.isdigit():
        parent[int(last)] = new  # type: ignore[index]
    else:
        setattr(parent, last, new)


def _in_features(mod: nn.Module) -> int:
    if isinstance(mod, nn.Linear):
        return mod.in_features
    linears = [m for m in mod.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RuntimeError(f"cannot find the classifier's input width in {mod}")
    return linears[0].in_features


def make_backbone(spec: BackboneSpec, imagenet: bool = False) -> tuple[nn.Module, int]:
    """A torchvision model without its ImageNet classifier, and its feature width.

    With ``imagenet`` the weights file is first made present in the torch cache (see
    ``ensure_imagenet_weights``); torchvision then loads it from there (it also remaps old
    key names, as for DenseNet) without touching the network.
    """
    from torchvision import models as tvm

    if imagenet:
        path = ensure_imagenet_weights(spec)
        try:
            net = tvm.get_model(spec.builder, weights=spec.weights, **spec.kwargs)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"ImageNet weights file {path} is unreadable ({type(exc).__name__}: {exc}); "
                f"delete it and {_how(spec)}"
            ) from None
    else:
        net = tvm.get_model(spec.builder, weights=None, **spec.kwargs)
    n_features = _in_features(_get_module(net, spec.family.classifier))
    _set_module(net, spec.family.classifier, nn.Identity())
    return net, n_features


# --------------------------------------------------------------------------- ImageNet weights


def imagenet_cache_path(spec: BackboneSpec) -> tuple[str, Path]:
    """(URL, path in the torch hub cache) of a backbone's ImageNet weights."""
    from torchvision.models import get_weight

    if spec.weights is None:
        raise WeightsUnavailableError(
            f"backbone {spec.name!r} has no ImageNet weights in torchvision; use --init scratch "
            "or --init checkpoint:PATH"
        )
    url = get_weight(spec.weights).url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _how(spec: BackboneSpec) -> str:
    url, path = imagenet_cache_path(spec)
    return (
        f"download {url} on a machine with internet access and copy it to {path} "
        "(torch.hub.get_dir()/checkpoints; set TORCH_HOME to move that folder), "
        "or use --init scratch"
    )


def ensure_imagenet_weights(spec: BackboneSpec) -> Path:
    """Path of ``spec``'s ImageNet weights in the torch cache, downloading them if allowed.

    Never hangs: the cache is checked first; a download uses a short socket timeout; with
    ``SVDH_OFFLINE=1`` nothing is downloaded. Failure raises ``WeightsUnavailableError``
    saying where to put the file.
    """
    url, path = imagenet_cache_path(spec)
    if path.exists():
        return path
    if os.environ.get("SVDH_OFFLINE", "") not in ("", "0"):
        raise WeightsUnavailableError(
            f"ImageNet weights of {spec.name} are not in the torch cache and SVDH_OFFLINE "
            f"forbids downloading; {_how(spec)}"
        )
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as exc:  # URLError, timeout, HTTP errors: all mean "not available"
        path.unlink(missing_ok=True)
        raise WeightsUnavailableError(
            f"ImageNet weights of {spec.name} could not be downloaded ({type(exc).__name__}: "
            f"{exc}); {_how(spec)}"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return path


# --------------------------------------------------------------------------- the network


class SvdhNet(nn.Module):
    """Greyscale stem, backbone, head; ``forward`` returns values on the user's scale."""

    def __init__(
        self,
        backbone: str,
        task: str,
        n_classes: int = 7,
        extra_heads: bool = False,
        target_transform: str = "none",
        use_sex: bool = False,
        max_score: float | None = None,
        dropout: float = 0.0,
        imagenet: bool = False,
        tta_flip: bool = True,
    ) -> None:
        super().__init__()
        self.spec = get_backbone(backbone)
        self.task = check_task(task)
        if extra_heads and task != "regression":
            raise BadConfigError("erosion and JSN heads (--extra-heads) need --task regression")
        if use_sex and task != "boneage":
            raise BadConfigError("sex as an input is for --task boneage only")
        if target_transform != "none" and task not in ("regression", "boneage"):
            raise BadConfigError("a target transform applies to regression and boneage tasks only")
        self.config: dict[str, Any] = {
            "backbone": backbone,
            "task": task,
            "n_classes": int(n_classes),
            "extra_heads": bool(extra_heads),
            "target_transform": check_transform(target_transform),
            "use_sex": bool(use_sex),
            "max_score": None if max_score is None else float(max_score),
            "dropout": float(dropout),
            "tta_flip": bool(tta_flip),
        }
        self._fwd, self._inv = TRANSFORMS[target_transform]
        self.register_buffer(
            "pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        self.backbone, self.n_features = make_backbone(self.spec, imagenet)
        self.head = Head(self.n_features, task, n_classes, extra_heads, use_sex, dropout)
        n_reg = 2 if extra_heads else 1
        # Standardisation of the (transformed) regression target, set from the training fold
        # by the trainer and saved with the weights, so outputs need no outside constants.
        self.register_buffer("out_shift", torch.zeros(n_reg))
        self.register_buffer("out_scale", torch.ones(n_reg))

    # -- pieces -------------------------------------------------------------------------
    @property
    def is_regression(self) -> bool:
        return self.task in ("regression", "boneage")

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """B x 1 x S x S in [0, 1] -> B x 3 x S x S, ImageNet-normalised (the one place)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.pixel_mean) / self.pixel_std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.stem(x))

    def forward_raw(self, x: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """Head output: standardised transformed targets (regression) or logits (classes)."""
        return self.head(self.features(x), sex)

    def set_target_stats(self, shift: Sequence[float], scale: Sequence[float]) -> None:
        self.out_shift.copy_(torch.as_tensor(shift, dtype=torch.float32))
        self.out_scale.copy_(torch.as_tensor(scale, dtype=torch.float32).clamp_min(1e-6))

    def encode_target(self, y: torch.Tensor) -> torch.Tensor:
        """Score-scale targets (B x n) -> the standardised space the head learns in."""
        return (self._fwd(y.clamp_min(0)) - self.out_shift) / self.out_scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised head output -> score scale; adds the total when there are sub-scores.

        Each output is capped by its own maximum: the total by ``max_score`` (140 per hand,
        280 per patient); with sub-score heads, erosion by 80/140 and JSN by 60/140 of it
        (80 and 60 per hand, 160 and 120 per patient), and the total is then exactly
        erosion + JSN.
        """
        v = self._inv(z.float() * self.out_scale + self.out_shift).clamp_min(0)
        hi = self.config["max_score"]
        if self.config["extra_heads"]:
            if hi is not None:
                caps = torch.tensor(
                    [hi * MAX_EROSION_HAND / MAX_HAND, hi * MAX_JSN_HAND / MAX_HAND],
                    device=v.device,
                    dtype=v.dtype,
                )
                v = torch.minimum(v, caps)
            return torch.cat([v.sum(dim=1, keepdim=True), v], dim=1)
        return v.clamp_max(hi) if hi is not None else v

    def forward_raw_tta(self, x: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """``forward_raw`` averaged over the image and its left-right mirror (``tta_flip``).

        A mirrored left hand looks like a right hand and carries the same score; averaging
        the two views raised the held-out PCC of the learning test from 0.73 to 0.82
        (ResNet-18) and 0.58 to 0.60 (MobileNetV2) (docs/benchmarks.md).
        """
        raw = self.forward_raw(x, sex)
        if not self.config.get("tta_flip"):
            return raw
        return 0.5 * (raw + self.forward_raw(torch.flip(x, dims=[-1]), sex))

    def forward(self, x: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (or logits); in eval mode with ``tta_flip`` averaged over the mirror view."""
        raw = self.forward_raw(x, sex) if self.training else self.forward_raw_tta(x, sex)
        return self.decode(raw) if self.is_regression else raw

    def uses_flip_tta(self) -> bool:
        """Whether :meth:`forward` scores the mean over the image and its mirror (eval mode)."""
        return not self.training and bool(self.config.get("tta_flip"))

    def cam_target_layer(self, name: str | None = None, image_size: int | None = None) -> nn.Module:
        """The Grad-CAM target layer: ``name`` (a module path) or the backbone's default for
        ``image_size`` (the registry's ``cam_layer_for``; the demo size when not given)."""
        layer = self.spec.cam_layer_for(image_size) if image_size else self.spec.cam_layer
        path = name or f"backbone.{layer}"
        try:
            return _get_module(self, path)
        except (AttributeError, IndexError, TypeError):
            raise BadConfigError(f"model has no layer {path!r} for Grad-CAM") from None


class OneView(nn.Module):
    """``net``'s eval forward on the image as given, without the mirror view of flip TTA: what
    Grad-CAM explains one view at a time (its hooks must see only that view's activations;
    :class:`svdh.inference.gradcam.Explainer` averages the views' maps as the score averages
    their outputs). The parameters are ``net``'s own."""

    def __init__(self, net: SvdhNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, sex: torch.Tensor | None = None) -> torch.Tensor:
        raw = self.net.forward_raw(x, sex)
        return self.net.decode(raw) if self.net.is_regression else raw


# --------------------------------------------------------------------------- BatchNorm statistics


def _trainable_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that train (those of frozen stages keep their pretrained statistics)."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            ps = list(m.parameters(recurse=False))
            if not ps or any(p.requires_grad for p in ps):
                out.append(m)
    return out


@torch.no_grad()
def recalibrate_batchnorm(
    model: SvdhNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]
) -> int:
    """Precise BatchNorm: set the running statistics of the trainable BatchNorm layers to
    their plain average over ``batches`` of (images, sex) at the current weights.

    The running averages that BatchNorm keeps during training (momentum 0.1) start at
    mean 0, variance 1 and need about 50 steps to forget that start. A backbone trained
    from scratch for a few hundred steps keeps a running variance far above the true one
    in layers whose outputs are small: MobileNetV2's depthwise convolutions, initialised
    with torchvision's fan-out rule, have a variance near 1e-3, so in eval mode the signal
    shrank ~10x per block and every image got the same prediction (phantom learning test:
    PCC 0.04 in eval mode, 0.79 with these statistics, on the training hands). Returns the
    number of layers recalibrated (0, statistics untouched, without a batch of 2+). Other layers (dropout) stay in eval mode.
    """
    bns = _trainable_batchnorms(model)
    if not bns:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches given
    model.eval()
    for m in bns:
        m.train()
    seen = 0
    try:
        for x, sex in batches:
            if len(x) > 1:
                model.forward_raw(x, sex)
                seen += 1
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        model.train(was_training)
    if not seen:  # nothing to average over: keep the statistics as they were
        for m, (mean, var) in zip(bns, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        return 0
    return len(bns)


# --------------------------------------------------------------------------- building


def read_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and svdh model config (may be empty) of a .safetensors or .ckpt file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except Exception as exc:
            raise BadRunError(f"{path}: not a readable safetensors file ({exc})") from None
        cfg = json.loads(meta["svdh_model"]) if "svdh_model" in meta else {}
        return state, cfg
    if path.suffix == ".ckpt":
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BadRunError(f"{path}: not a readable Lightning checkpoint ({exc})") from None
        state = {
            k.removeprefix("model."): v
            for k, v in ckpt.get("state_dict", {}).items()
            if k.startswith("model.")
        }
        cfg = dict(ckpt.get("hyper_parameters", {}).get("model", {}) or {})
        return state, cfg
    raise BadConfigError(f"{path}: expected a run directory, a .safetensors or a .ckpt file")


def resolve_checkpoint(path: str | Path) -> Path:
    """A weights file from ``checkpoint:PATH``: a file, or a run directory (fold 0's best)."""
    p = Path(path).expanduser()
    if p.is_dir():
        from svdh.runs.layout import RunDir

        cands = [f.weights for f in RunDir(p).weight_folds()]
        if not cands:
            raise BadRunError(
                f"{p}: no fold_*/best.safetensors in this directory; is it a finished "
                "`svdh train`/`svdh pretrain` run?"
            )
        return cands[0]
    if not p.exists():
        raise BadConfigError(f"checkpoint {p} does not exist")
    return p


def transfer_weights(
    model: SvdhNet,
    state: Mapping[str, torch.Tensor],
    src_cfg: Mapping[str, Any],
    where: str = "checkpoint",
) -> dict[str, Any]:
    """Copy backbone weights of a checkpoint into ``model``; the head only when it fits.

    The head (and the target standardisation) is copied when the checkpoint's task and
    output shapes equal the model's; otherwise it keeps its fresh initialisation, as when a
    bone-age model seeds an SvdH regression.
    """
    src_backbone = src_cfg.get("backbone")
    if src_backbone and src_backbone != model.config["backbone"]:
        raise BadConfigError(
            f"{where} holds a {src_backbone} but --backbone is {model.config['backbone']}; "
            f"use --backbone {src_backbone}"
        )
    own = model.state_dict()
    bb = {k: v for k, v in state.items() if k.startswith("backbone.") and k in own}
    fits = {k: v for k, v in bb.items() if tuple(v.shape) == tuple(own[k].shape)}
    n_bb = sum(1 for k in own if k.startswith("backbone."))
    if len(fits) < n_bb:
        raise BadConfigError(
            f"{where} does not fit backbone {model.config['backbone']}: "
            f"{len(fits)} of {n_bb} backbone tensors match"
        )
    same_task = src_cfg.get("task") in (None, model.task) and all(
        src_cfg.get(k, model.config[k]) == model.config[k]
        for k in ("n_classes", "extra_heads", "target_transform", "use_sex")
    )
    head = {k: v for k, v in state.items() if not k.startswith("backbone.") and k in own}
    head_ok = (
        bool(head)
        and same_task
        and all(tuple(v.shape) == tuple(own[k].shape) for k, v in head.items())
        and set(head) == {k for k in own if not k.startswith("backbone.")}
    )
    new = dict(own)
    new.update(fits)
    if head_ok:
        new.update(head)
    model.load_state_dict(new)
    return {"backbone_tensors": len(fits), "head_transferred": head_ok}


def build_model(
    backbone: str,
    task: str,
    init: str = "scratch",
    n_classes: int = 7,
    extra_heads: bool = False,
    **kwargs: Any,
) -> SvdhNet:
    """Build an ``SvdhNet`` (see the module contract) initialised from ``init``.

    ``init``: ``scratch``, ``imagenet`` (torchvision weights from the torch cache) or
    ``checkpoint:PATH`` (a run directory, ``.safetensors`` or ``.ckpt``; backbone weights are
    transferred, the head when it fits). ``kwargs``: ``target_transform``, ``use_sex``,
    ``max_score``, ``dropout``.
    """
    get_backbone(backbone)  # unknown names fail before anything is built
    init = init or "scratch"
    if init == "scratch":
        return SvdhNet(backbone, task, n_classes, extra_heads, **kwargs)
    if init == "imagenet":
        return SvdhNet(backbone, task, n_classes, extra_heads, imagenet=True, **kwargs)
    if init.startswith("checkpoint:"):
        path = resolve_checkpoint(init.split(":", 1)[1])
        state, cfg = read_weights_file(path)
        model = SvdhNet(backbone, task, n_classes, extra_heads, **kwargs)
        model.init_report = transfer_weights(model, state, cfg, where=str(path))  # type: ignore[attr-defined]
        return model
    raise BadConfigError(f"unknown --init {init!r}; use scratch, imagenet or checkpoint:PATH")


def model_from_config(cfg: Mapping[str, Any]) -> SvdhNet:
    """A fresh (scratch) model with the architecture described by ``SvdhNet.config``."""
    keys = (
        "n_classes",
        "extra_heads",
        "target_transform",
        "use_sex",
        "max_score",
        "dropout",
        "tta_flip",
    )
    kwargs = {k: cfg[k] for k in keys if k in cfg}
    # an architecture saved before flip TTA existed was trained, calibrated and validated
    # without it: rebuild it the same way (new runs record tta_flip explicitly)
    kwargs.setdefault("tta_flip", False)
    return SvdhNet(cfg["backbone"], cfg["task"], **kwargs)


# --------------------------------------------------------------------------- outputs


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def ordinal_probs(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class probabilities from CORAL logits: P(y=k) = P(y>k-1) - P(y>k).

    CORAL's shared weights make P(y>k) non-increasing in k for ordered biases; a running
    minimum enforces it exactly, so every probability is >= 0.
    """
    z = np.clip(_np(logits).astype(np.float64), -60, 60)
    cum = np.minimum.accumulate(1.0 / (1.0 + np.exp(-z)), axis=1)
    ones = np.ones((cum.shape[0], 1))
    zeros = np.zeros((cum.shape[0], 1))
    upper = np.concatenate([ones, cum], axis=1)
    lower = np.concatenate([cum, zeros], axis=1)
    return upper - lower


def softmax_np(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    z = _np(logits).astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_outputs(task: str, raw: torch.Tensor | np.ndarray, bins: SeverityBins | None) -> dict:
    """Turn ``forward`` outputs into ``score``, ``probs`` (B x K), ``severity_class``.

    Regression: the score, with a one-hot ``probs`` of its binned class (and ``erosion``,
    ``jsn`` when the model has those heads). Classification/ordinal: class probabilities,
    the most likely class (CORAL: the number of P(y>k) above 0.5) and the expected score.
    Bone age: ``score`` in months, no classes.
    """
    check_task(task)
    out: dict[str, Any] = {}
    r = _np(raw)
    if r.ndim == 1:
        r = r[:, None]
    if task == "boneage":
        out.update(score=r[:, 0].astype(np.float64), probs=None, severity_class=None)
        return out
    if bins is None:
        raise BadConfigError(f"task {task} needs severity class bins")
    k = bins.n_classes
    if task == "regression":
        score = r[:, 0].astype(np.float64)
        cls = np.atleast_1d(bins.to_class(score))
        probs = np.eye(k)[cls]
        if r.shape[1] >= 3:
            out.update(erosion=r[:, 1].astype(np.float64), jsn=r[:, 2].astype(np.float64))
    elif task == "classification":
        probs = softmax_np(r)
        cls = probs.argmax(axis=1)
        score = bins.expected_score(probs)
    else:  # ordinal
        probs = ordinal_probs(r)
        cum = np.minimum.accumulate(1.0 / (1.0 + np.exp(-np.clip(r, -60, 60))), axis=1)
        cls = (cum > 0.5).sum(axis=1)
        score = bins.expected_score(probs)
    out.update(
        score=np.asarray(score, np.float64), probs=probs, severity_class=np.asarray(cls, np.int64)
    )
    return out


def average_raw(task: str, raws: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Average the ``forward`` outputs of several models (e.g. fold models) of one task.

    Values are averaged on the meaningful scale (scores; class probabilities; CORAL
    cumulative probabilities) and returned as an equivalent raw array, so
    ``predict_outputs`` applies unchanged.
    """
    arrs = [_np(r).astype(np.float64) for r in raws]
    if task in ("regression", "boneage"):
        return np.mean(arrs, axis=0)
    eps = 1e-7
    if task == "classification":
        p = np.mean([softmax_np(a) for a in arrs], axis=0)
        return np.log(np.clip(p, eps, 1.0))
    cum = np.mean([1.0 / (1.0 + np.exp(-np.clip(a, -60, 60))) for a in arrs], axis=0)
    cum = np.clip(cum, eps, 1 - eps)
    return np.log(cum / (1 - cum))
