"""Score new radiographs with a model bundle: :class:`Predictor` -> :class:`Prediction`.

One image in, one :class:`~svdh.inference.prediction.Prediction` out: the SvdH score, erosion
and JSN where the model has those heads, a split-conformal interval, the severity class (with
probabilities where the model has a class head), the spread between ensemble members, quality
warnings, the model's name and version, and optionally Grad-CAM maps.

The pipeline streams: inputs are read and preprocessed a few batches ahead in a small thread
pool (decoding and OpenCV release the GIL, so this overlaps the forward pass), scored in batches,
and yielded one prediction at a time, so memory stays flat however many images there are. A
file that cannot be read yields a prediction with ``error`` set and the scores ``None``; the rest
are scored. Inputs, writers, heat maps and their localisation live beside this module
(:mod:`~svdh.inference.inputs`, :mod:`~svdh.inference.writers`, :mod:`~svdh.inference.gradcam`,
:mod:`~svdh.inference.localisation`).

How members combine (the same arithmetic as the training and ensemble stages, by calling them):
each member's fold models are averaged with :func:`svdh.models.net.average_raw` (scores; class
probabilities; CORAL cumulative probabilities) and decoded with
:func:`svdh.models.net.predict_outputs`, which is what a run's ``test.csv`` holds; members are
then combined by the ensemble's meta-learner (:func:`svdh.evaluate.ensemble.apply_meta`) or their mean.
Intervals come from :class:`svdh.evaluate.metrics.ConformalModel`.

Every film first goes through :func:`svdh.core.canonical.canonicalise`: turned fingers-up PA,
shown as a left hand, split where it holds both hands (one prediction per hand), refused where it
is a foot or an inverted film (an error row with the reason). Patient ids come from a
``--patients`` CSV, DICOM (PatientID) or RA2-DREAM-style file names (``<patient>-LH.png``,
``-RH``, ``-BH``); sides from the same sources, then the hand's place on a both-hands film, then
the thumb side, a conflict being a warning. Totals are made by
:class:`svdh.core.hands.PatientTotals`; wrist-only views never enter one.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadBundleError, BadConfigError, SvdhError
from svdh.core.hands import side_or_none
from svdh.core.preprocess import display_image, hand_mask
from svdh.core.scoring import SeverityBins
from svdh.inference.bundle import Bundle, file_sha256, load_bundle
from svdh.inference.changes import visit_of
from svdh.inference.inputs import PatientInfo, lookup_patient, patient_from_name
from svdh.inference.prediction import BONEAGE, SVDH, Prediction
from svdh.inference.sex import norm_sex, resolve_sex, sex_code


# --------------------------------------------------------------------------- quality checks
def quality_warnings(rad: Any, x: np.ndarray) -> list[str]:
    """Heuristic warnings that an image may not be a usable PA hand radiograph.

    ``rad``: the decoded :class:`~svdh.core.io.Radiograph`; ``x``: the preprocessed uint8 model input.
    These are cheap image statistics, not a classifier: they flag inputs unlike the training data
    (tiny or extreme-aspect images, almost no contrast, a bright region far too small or filling
    the crop), not every wrong body part: a foot or an inverted film can pass unflagged.
    """
    w: list[str] = []
    h0, w0 = rad.pixels.shape[:2]
    size = x.shape[0]
    if min(h0, w0) < size:
        w.append(f"low resolution: {w0}x{h0} px is smaller than the model input ({size} px)")
    aspect = max(h0, w0) / max(1, min(h0, w0))
    if aspect > 2.5:
        w.append(f"unusual aspect ratio {aspect:.1f}:1 for a hand radiograph")
    px = rad.pixels
    step = max(1, int(np.sqrt(px.size / 65_000)))  # a strided sample is plenty for two percentiles
    p1, p99 = np.percentile(px[::step, ::step], [1, 99])
    if p99 - p1 < 0.05:
        w.append("almost no contrast: the image is nearly uniform")
    # On hand radiographs (real and phantom) the tissue covers ~15-40% of the crop, the rest is
    # dark background; a crop without background is an inverted image or another subject.
    frac = float(
        hand_mask(x[:: max(1, size // 64), :: max(1, size // 64)]).mean()
    )  # ~64 px is enough
    if frac < 0.08:
        w.append(
            f"does not look like a hand radiograph: the anatomy covers only {frac:.0%} of the crop"
        )
    elif frac > 0.6:
        w.append(
            f"does not look like a hand radiograph: bright region covers {frac:.0%} of the crop "
            "(inverted greyscale, or no background around the anatomy)"
        )
    return w


# --------------------------------------------------------------------------- the predictor
@dataclass
class Prepared:
    """One image ready for the models: the uint8 input ``x``, the display image (when heat maps
    are wanted), the preprocessing transform, patient and side; or the ``error`` that stopped it."""

    name: str
    rad: Any = None
    x: np.ndarray | None = None
    display: np.ndarray | None = None
    transform: Any = None
    error: str | None = None
    patient_id: str | None = None
    side: str | None = None
    visit: str | None = None
    warnings: list[str] = field(default_factory=list)
    sex: str | None = None  # M or F (bone age)
    sex_from: str | None = None
    decision: Any = None  # svdh.core.canonical.FilmDecision
    #: the svdh.core.canonical.ModelInput: ``film_to_input`` / ``input_to_film`` map points
    #: between the film as given and ``x`` (heat maps on the film, landmarks onto ``x``)
    hand: Any = None


class Predictor:
    """Scores radiographs with a bundle into :class:`Prediction` objects (see the module docstring).

    ``bundle``: a :class:`Bundle` or a path to one. ``device``: ``cpu``, ``cuda``, ``auto``.
    ``backend``: ``torch`` or ``onnx`` (onnxruntime on the graph written by
    ``svdh export --onnx``; Grad-CAM always uses torch). ``folds``: use only these fold models of
    each member (default all). ``target_layer``/``cam_head``/``cam_method``: Grad-CAM options
    (``cam_method``: see :func:`svdh.inference.gradcam.parse_method`). ``workers``:
    threads reading files ahead (default: none on a CPU, up to 4 beside a GPU). ``sex``: M or
    F for every image (bone-age bundles; else from the patients CSV or DICOM PatientSex).
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        *,
        device: str = "cpu",
        backend: str = "torch",
        batch_size: int = 16,
        folds: Sequence[int] | None = None,
        target_layer: str | None = None,
        cam_head: str = "score",
        cam_method: str | None = None,
        workers: int | None = None,
        sex: str | None = None,
    ) -> None:
        from svdh.core.preprocess import PreprocessConfig

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if batch_size < 1:
            raise BadConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if backend not in ("torch", "onnx"):
            raise BadConfigError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.batch_size, self.backend = int(batch_size), backend
        self.preprocess_config = PreprocessConfig.from_dict(self.bundle.preprocess)
        self.bins: SeverityBins | None = self.bundle.bins  # None: a bone-age bundle (months)
        self.family = BONEAGE if self.bundle.task == "boneage" else SVDH
        if self.family == SVDH and self.bins is None:
            raise BadBundleError(f"{self.bundle.path}: an SvdH bundle without severity bins")
        self.sex = norm_sex(sex, "--sex") if sex else None
        if self.sex and self.family != BONEAGE:
            raise BadConfigError("--sex is for bone-age models; this bundle scores SvdH")
        self.device = _device(device)
        if workers is None:
            # On a CPU the forward pass already uses every core: reader threads would only
            # oversubscribe them (measured slower in benchmarks/bench_predict.py), so files are
            # read between batches. A GPU leaves the cores free to decode the next batches.
            workers = 0 if self.device.type == "cpu" else min(4, os.cpu_count() or 1)
        self.workers = max(0, int(workers))
        members = self.bundle.members
        n_models = [int(m["n_models"]) for m in members]
        if folds is not None:
            bad = [k for k in folds if not all(0 <= k < n for n in n_models)]
            if bad:
                raise BadConfigError(
                    f"fold model(s) {bad} not in the bundle (members have {n_models} fold models)"
                )
        self.folds = [list(folds) if folds is not None else list(range(n)) for n in n_models]
        self.archs = [dict(m["arch"]) for m in members]
        self.tasks = [str(a.get("task", "regression")) for a in self.archs]
        #: the bone-age members take the child's sex as an input
        self.uses_sex = any(bool(a.get("use_sex")) for a in self.archs)
        self.names = [str(m.get("name", f"member{i}")) for i, m in enumerate(members)]
        #: written with every prediction: the bundle's name and version (its checksum's first 12 hex)
        path = self.bundle.path
        self.model_name = str(self.bundle.card.get("name") or (path.stem if path else "svdh model"))
        self.model_version = str(self.bundle.sha256)[:12] if self.bundle.sha256 else None
        self.target_layer, self.cam_head, self.cam_method = target_layer, cam_head, cam_method
        if cam_method:  # a bad name fails now, not after every image is scored
            from svdh.inference.gradcam import parse_method

            parse_method(cam_method)
        self._models: list[list[Any]] | None = None
        self._session: Any = None
        self._explainer: Any = None
        self._cam_lock = threading.Lock()
        self._conformal = None
        if self.bundle.conformal:
            from svdh.evaluate.metrics import ConformalModel

            self._conformal = ConformalModel.from_dict(self.bundle.conformal)
        if backend == "onnx":
            self._session = _onnx_session(self.bundle, self.device)
        else:
            self._load_torch()

    # ---------------------------------------------------------------- models
    def _load_torch(self) -> list[list[Any]]:
        if self._models is None:
            all_models = self.bundle.build_models(device=self.device)
            self._models = [
                [ms[k] for k in ks] for ms, ks in zip(all_models, self.folds, strict=True)
            ]
        return self._models

    @property
    def models(self) -> list[list[Any]]:
        """The torch fold models in use: ``models[member][j]`` for fold ``self.folds[member][j]``."""
        return self._load_torch()

    @property
    def image_size(self) -> int:
        return self.preprocess_config.size

    def forward_raw(self, x: np.ndarray, sex: np.ndarray | None = None) -> list[list[np.ndarray]]:
        """Raw outputs of every fold model in use for a uint8 batch ``B x S x S``:
        ``raw[member][j]`` (B x D float32). ``sex``: B codes (+1 male, -1 female, 0 unknown)
        for bone-age models that take it."""
        if self.backend == "onnx":
            inp = (np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0))[:, None]
            outs = self._session.run(None, {"image": inp})
            names = [o.name for o in self._session.get_outputs()]
            by = dict(zip(names, outs, strict=True))
            return [
                [np.asarray(by[f"m{i}_f{k}"], np.float32) for k in ks]
                for i, ks in enumerate(self.folds)
            ]
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
        t = t.unsqueeze(1).float().div_(255.0)
        s = None
        if sex is not None and self.uses_sex:
            s = torch.as_tensor(np.asarray(sex, np.float32), device=self.device)
        raws: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for member in self.models:
                raws.append([net(t, s).float().cpu().numpy() for net in member])
        return raws

    # ---------------------------------------------------------------- combining
    def _member_outputs(self, raws: list[list[np.ndarray]]) -> dict[str, Any]:
        """Each member's fold-averaged decoded outputs (scores B x m, probs, classes, sub-scores)."""
        from svdh.models.net import average_raw, predict_outputs

        bins = self.bins
        scores, probs, classes, ero, jsn, fold_scores = [], [], [], [], [], []
        for task, member in zip(self.tasks, raws, strict=True):
            avg = predict_outputs(task, average_raw(task, member), bins)
            scores.append(avg["score"])
            probs.append(avg["probs"] if task in ("classification", "ordinal") else None)
            classes.append(avg["severity_class"])
            if "erosion" in avg:
                ero.append(avg["erosion"])
                jsn.append(avg["jsn"])
            fold_scores.append(
                np.stack([predict_outputs(task, r, bins)["score"] for r in member], axis=1)
            )
        all_class = all(p is not None for p in probs)
        return {
            "S": np.stack(scores, axis=1),  # B x m
            "P": np.stack([p for p in probs if p is not None], axis=1) if all_class else None,
            "classes": classes,
            "erosion": ero,
            "jsn": jsn,
            "fold_scores": fold_scores,
        }

    def combine(self, raws: list[list[np.ndarray]]) -> list[dict[str, Any]]:
        """Per-image predictions (numbers only: :class:`Prediction` fields) from the raw outputs
        of :meth:`forward_raw`."""
        bins = self.bins
        mo = self._member_outputs(raws)
        if bins is None:
            return self._combine_months(mo)
        S, P, ero, jsn = mo["S"], mo["P"], mo["erosion"], mo["jsn"]
        meta = self.bundle.combine.get("meta_learner")
        if meta:
            from svdh.evaluate.ensemble import apply_meta

            score, probs = apply_meta(meta, S, P)
        else:
            score = np.clip(S.mean(axis=1), 0, bins.max_score)
            probs = P.mean(axis=1) if P is not None else None
        if len(self.tasks) == 1 and P is not None:
            cls = np.asarray(mo["classes"][0])  # the member's own rule (CORAL: thresholds passed)
        elif probs is not None:
            cls = probs.argmax(axis=1)
        else:
            cls = np.asarray(bins.to_class(score)).reshape(-1)
        # one member: the spread of its fold models
        spread = S.std(axis=1) if S.shape[1] > 1 else mo["fold_scores"][0].std(axis=1)
        lo: np.ndarray | None = None
        hi: np.ndarray | None = None
        if self._conformal is not None:
            lo, hi = self._conformal.interval(score)
        return [
            {
                "score": float(score[i]),
                "interval": [float(lo[i]), float(hi[i])]
                if lo is not None and hi is not None
                else None,
                "severity_class": int(cls[i]),
                "severity_label": bins.labels[int(cls[i])],
                "probs": [float(p) for p in probs[i]] if probs is not None else None,
                "erosion": float(np.mean([e[i] for e in ero])) if ero else None,
                "jsn": float(np.mean([j[i] for j in jsn])) if jsn else None,
                "member_spread": float(spread[i]),
                "member_scores": {n: float(S[i, j]) for j, n in enumerate(self.names)},
            }
            for i in range(S.shape[0])
        ]

    def _combine_months(self, mo: dict[str, Any]) -> list[dict[str, Any]]:
        """Bone age: the mean of the members' months (each the mean of its fold models), the
        conformal interval in months, the spread between members or fold models."""
        S = mo["S"]
        months = np.clip(S.mean(axis=1), 0, None)
        spread = S.std(axis=1) if S.shape[1] > 1 else mo["fold_scores"][0].std(axis=1)
        lo, hi = self._conformal.interval(months) if self._conformal is not None else (None, None)
        return [
            {
                "bone_age_months": float(months[i]),
                "interval": [float(max(0.0, lo[i])), float(hi[i])]
                if lo is not None and hi is not None
                else None,
                "member_spread": float(spread[i]),
                "member_scores": {n: float(S[i, j]) for j, n in enumerate(self.names)},
            }
            for i in range(S.shape[0])
        ]

    # ---------------------------------------------------------------- Grad-CAM
    @property
    def explainer(self) -> Any:
        if self._explainer is None:
            from svdh.inference.gradcam import DEFAULT_CAM_METHOD, Explainer

            models = self._load_torch()
            meta = self.bundle.combine.get("meta_learner") or {}
            coef = (meta.get("score") or {}).get("coef")
            self._explainer = Explainer(
                models,
                self.archs,
                names=self.names,
                weights=coef,
                target_layer=self.target_layer,
                image_size=self.image_size,
                head=self.cam_head,
                representative_scores=self.bins.representative_scores if self.bins else None,
                method=self.cam_method or DEFAULT_CAM_METHOD,
            )
        return self._explainer

    def cam(self, x: np.ndarray) -> Any:
        """Grad-CAM maps (:class:`svdh.inference.gradcam.CamResult`) for a uint8 batch ``B x S x S``."""
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).unsqueeze(1).float() / 255.0
        # Grad-CAM keeps activations and gradients on hooks of the shared models: one batch at a
        # time (the web service scores uploads in several threads)
        with self._cam_lock:
            return self.explainer.explain(t)

    # ---------------------------------------------------------------- one batch
    def prepare(
        self, name: str, rad: Any, info: PatientInfo | None = None, display: bool = False
    ) -> Prepared:
        """The first hand of :meth:`prepare_hands` (one Prepared per image, for callers that
        score single-hand films)."""
        return self.prepare_hands(name, rad, info, display)[0]

    def prepare_hands(
        self, name: str, rad: Any, info: PatientInfo | None = None, display: bool = False
    ) -> list[Prepared]:
        """One :class:`Prepared` per canonical hand of a decoded radiograph.

        :func:`svdh.core.canonical.model_inputs` splits a both-hands film into its hands (turned
        fingers-up and shown as left hands where the bundle was trained so) or refuses it (a
        foot, an inverted film: an error item naming the reason); with ``display`` each hand's
        display image is made too. The side is reconciled from ``info`` (``--patients``), the DICOM
        laterality, the file name, the hand's place on a both-hands film and the thumb side,
        in that order; a conflict is a warning."""
        from svdh.core.canonical import SideHints, model_inputs

        meta = getattr(rad, "meta", {}) or {}
        named = patient_from_name(name)
        pid = (info.patient_id if info else None) or meta.get("patient_id") or None
        pid = pid or (named.patient_id if named else None)
        by_name = meta.get("patient_id") or (named.patient_id if named else None)
        visit = named.visit if named is not None and named.patient_id == by_name else None
        visit = (info.visit if info else None) or visit
        visit = visit_of(meta, visit) or None  # --patients, name, else DICOM StudyDate
        hints = SideHints(
            patients=info.side if info else None,
            dicom=side_or_none(meta.get("laterality")),
            filename=named.side if named else None,
        )
        try:
            hands = model_inputs(rad, self.preprocess_config, hints)
        except SvdhError as exc:
            return [Prepared(name=name, error=str(exc), patient_id=pid, visit=visit)]
        except MemoryError:  # one huge image must not abort the batch: it gets its error row
            error = f"{name}: not enough memory to preprocess this image; lower SVDH_MAX_PIXELS"
            return [Prepared(name=name, error=error, patient_id=pid, visit=visit)]
        sex, sex_from, sex_warning = self._sex(info, meta)
        out = []
        for hand in hands:
            d = hand.decision
            item = Prepared(name=name, decision=d, patient_id=str(pid) if pid else None)
            item.side, item.visit = d.side, visit
            item.sex, item.sex_from = sex, sex_from
            if d.refused or hand.x is None:
                item.error = f"{name}: refused: {d.reason}"
                out.append(item)
                continue
            item.x, item.transform, item.hand = hand.x, hand.transform, hand
            item.warnings = [*d.warnings, *quality_warnings(rad, item.x), *sex_warning]
            if display:
                item.display = display_image(hand.pixels, self.preprocess_config)
            out.append(item)
        return out

    def _sex(self, info: PatientInfo | None, meta: dict[str, Any]) -> tuple[Any, Any, list[str]]:
        """Bone age: the child's sex (``--sex``, ``--patients``, DICOM PatientSex, in that
        order), where it came from, and a warning where the model needs it and none is known."""
        if self.family != BONEAGE:
            return None, None, []
        try:
            sex, sex_from = resolve_sex(
                self.sex, info.sex if info else None, meta.get("patient_sex")
            )
        except SvdhError:  # an odd DICOM PatientSex: unknown, said in the warnings
            sex, sex_from = None, None
        if sex is None and self.uses_sex:
            warning = "sex unknown: the model assumed neither (give --sex M|F or a sex column in --patients)"
            return None, None, [warning]
        return sex, sex_from, []

    def score(self, items: Sequence[Prepared], cam: bool = False) -> Iterator[Prediction]:
        """One :class:`Prediction` per prepared item, in order (one forward pass for the batch)."""
        ok = [it for it in items if it.error is None and it.x is not None]
        results: dict[int, Prediction] = {}
        if ok:
            x = np.stack([it.x for it in ok if it.x is not None])
            sex = np.array([sex_code(it.sex) for it in ok], np.float32)
            numbers = self.combine(self.forward_raw(x, sex))
            cams = self.cam(x) if cam else None
            for j, (it, nums) in enumerate(zip(ok, numbers, strict=True)):
                pred = Prediction(**self._known(it), warnings=list(it.warnings), **nums)
                iv = pred.interval
                spread = pred.member_spread or 0.0
                if iv is not None and spread > 0.5 * (iv[1] - iv[0]):
                    pred.warnings.append(
                        f"models disagree: spread {spread:.1f} exceeds half the interval width"
                    )
                if cams is not None:
                    pred.cam, pred.cam_members = cams.ensemble[j], cams.members[:, j]
                    pred.cam_member_names = cams.member_names
                    pred.preprocessed = it.x
                    pred.display = it.display if it.display is not None else it.x
                    pred.model_input = it.hand
                results[id(it)] = pred
        for it in items:
            yield results.get(id(it)) or Prediction.failed(
                error=it.error or "not scored", **self._known(it)
            )

    def _known(self, it: Prepared) -> dict[str, Any]:
        """What every prediction of ``it`` carries, scored or not."""
        d = it.decision
        film = {}
        if d is not None:
            film = {
                "side_source": d.side_source,
                "hand": f"{d.hand_index + 1}/{d.n_hands}" if d.split else None,
                "view": d.view,
                "canonical": None if d.refused else d.summary(),
                "in_totals": d.in_totals,
            }
        known = {
            "image": it.name,
            "patient_id": it.patient_id,
            "side": it.side,
            "visit": it.visit,
            **film,
            "model": self.model_name,
            "model_version": self.model_version,
            "family": self.family,
        }
        if self.family == BONEAGE:
            known.update(sex=it.sex, sex_from=it.sex_from)
        return known

    # ---------------------------------------------------------------- streaming
    def predict_images(
        self, items: Iterable[tuple[str, Any]], cam: bool = False
    ) -> Iterator[Prediction]:
        """The contract (docs/architecture.md): ``(name, Radiograph)`` pairs in, one
        :class:`Prediction` per image out, in order. An item whose radiograph is an exception
        (or None) yields an error prediction."""

        def prepared() -> Iterator[Prepared]:
            for name, rad in items:
                if rad is None or isinstance(rad, BaseException):
                    error = str(rad) if rad is not None else "could not be read"
                    yield Prepared(name=name, error=error)
                else:
                    yield from self.prepare_hands(name, rad, display=cam)

        # a batch is full with batch_size images to score (error items ride along)
        yield from self._in_batches(prepared(), cam, count_errors=False)

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        *,
        patients: Mapping[str, PatientInfo] | None = None,
        cam: bool = False,
        max_pixels: int | None = None,
    ) -> Iterator[Prediction]:
        """Read, preprocess and score files, streaming: a bounded number of files is read
        ahead in worker threads while the previous batch runs through the models."""
        from svdh.core.io import read_radiograph

        def load(p: Path) -> list[Prepared]:
            name = str(p)
            try:
                rad = read_radiograph(p, max_pixels=max_pixels)
            except SvdhError as exc:
                return [Prepared(name=name, error=str(exc))]
            except Exception as exc:  # a decoder bug must not stop the other images
                return [
                    Prepared(
                        name=name, error=f"{name}: cannot be read ({type(exc).__name__}: {exc})"
                    )
                ]
            items = self.prepare_hands(name, rad, lookup_patient(patients, p), display=cam)
            for item in items:
                item.rad = None  # keep only the small model input: memory stays flat
            return items

        hands = (it for items in self._read_ahead(load, paths) for it in items)
        yield from self._in_batches(hands, cam)

    def _in_batches(
        self, items: Iterable[Prepared], cam: bool, count_errors: bool = True
    ) -> Iterator[Prediction]:
        """Score ``items`` lazily in batches of :attr:`batch_size` (counting only the items
        to score unless ``count_errors``), yielding predictions in order."""
        batch: list[Prepared] = []
        for item in items:
            batch.append(item)
            n = len(batch) if count_errors else sum(1 for it in batch if it.error is None)
            if n >= self.batch_size:
                yield from self.score(batch, cam)
                batch = []
        if batch:
            yield from self.score(batch, cam)

    def _read_ahead(self, load: Any, paths: Iterable[str | Path]) -> Iterator[Any]:
        """``load(path)`` over ``paths`` in order: inline without workers, else in a thread pool
        at most two batches ahead of the consumer."""
        if self.workers == 0:
            for p in paths:
                yield load(Path(p))
            return
        ahead = 2 * self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="svdh-read") as pool:
            queue: deque[Future[Any]] = deque()
            for p in paths:
                queue.append(pool.submit(load, Path(p)))
                if len(queue) >= ahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()


def _device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise BadConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise BadConfigError(
            "--device cuda asked for but no CUDA GPU is available; use --device cpu"
        )
    return d


def _onnx_session(bundle: Bundle, device: Any) -> Any:
    """An onnxruntime session on the bundle's ONNX companion file, verified against its hash."""
    import onnxruntime as ort

    info = bundle.manifest.get("onnx")
    if not info or bundle.path is None:
        raise BadBundleError(
            f"{bundle.path}: this bundle has no ONNX graph; re-export it with `svdh export ... --onnx`"
        )
    path = bundle.path.with_name(str(info["file"]))
    if not path.is_file():
        raise BadBundleError(
            f"{path}: the ONNX graph of {bundle.path.name} is missing; keep it beside the bundle"
        )
    if file_sha256(path) != info.get("sha256"):
        raise BadBundleError(
            f"{path}: checksum differs from the one in {bundle.path.name}; re-export with --onnx"
        )
    providers = ["CPUExecutionProvider"]
    if (
        getattr(device, "type", "cpu") == "cuda"
        and "CUDAExecutionProvider" in ort.get_available_providers()
    ):
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
