"""Score new radiographs with a model bundle: :class:`Predictor`.

One image in, one row out: the SvdH score, erosion and JSN where the model has those heads, a
split-conformal interval, the severity class (with probabilities where the model has a class
head), the spread between ensemble members, quality warnings, and optionally Grad-CAM maps.

The pipeline streams: inputs are read and preprocessed a few batches ahead in a small thread
pool (decoding and OpenCV release the GIL, so this overlaps the forward pass), scored in batches,
and yielded one row at a time, so memory stays flat however many images there are. A file that
cannot be read yields a row with ``error`` set and everything else ``None``; the rest are scored.

How members combine (the same arithmetic as the training and ensemble stages, by calling them):
each member's fold models are averaged with :func:`svdh.models.net.average_raw` (scores; class
probabilities; CORAL cumulative probabilities) and decoded with
:func:`svdh.models.net.predict_outputs`, which is what a run's ``test.csv`` holds; members are
then combined by the ensemble's meta-learner (:func:`svdh.evaluate.ensemble.apply_meta`) or their mean.
Intervals come from :class:`svdh.evaluate.metrics.ConformalModel`.

Per-patient totals (:class:`PatientTotals`): a model that scores one hand per image gives a
hands-and-wrists total where a patient has exactly one left and one right hand image. Patient
ids and sides come from a ``--patients`` CSV, from DICOM (PatientID, ImageLaterality), or from
RA2-DREAM-style file names (``<patient>-LH.png`` / ``-RH``), in that order of precedence.
"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from svdh.core.errors import BadBundleError, BadConfigError, BadDatasetError, SvdhError
from svdh.core.scoring import MAX_HAND, SeverityBins
from svdh.inference.bundle import Bundle, file_sha256, load_bundle

#: File name endings read from folders (an explicitly named file is read whatever its name).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
#: Side of the image that heat-map overlays are drawn on (the model input is often 64-256 px).
DISPLAY_SIZE = 512
_SIDE_NAME = re.compile(r"^(?P<pid>.+?)[-_](?P<side>[LR])H?$", re.IGNORECASE)


# --------------------------------------------------------------------------- inputs
def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (recursive: image suffixes, plus extension-less DICOM files) and globs,
    in a stable order without duplicates. A path that matches nothing is a clear error."""
    import glob

    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in inputs:
        s = str(raw)
        p = Path(s).expanduser()
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if q.is_file() and not q.name.startswith(".") and _folder_image(q):
                    add(q)
        elif p.is_file():
            add(p)
        elif any(ch in s for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise BadConfigError(f"{s}: the pattern matches no file")
            for m in files:
                add(m)
        else:
            raise BadConfigError(f"{s}: no such file or folder")
    return out


def _folder_image(p: Path) -> bool:
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if p.suffix == "" and p.name.upper() != "DICOMDIR":
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
            return head[128:132] == b"DICM"
        except OSError:
            return False
    return False


@dataclass(frozen=True)
class PatientInfo:
    patient_id: str | None
    side: str | None


def read_patients_csv(path: str | Path) -> dict[str, PatientInfo]:
    """A CSV map ``image, patient_id[, side]``; ``image`` is matched against a file's path,
    name or stem (in that order). Side is L or R (``left``/``right``/``LH``/``RH`` accepted)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise BadDatasetError(f"{p}: patients CSV not found")
    try:
        df = pd.read_csv(p, dtype=str).fillna("")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadDatasetError(f"{p}: not a readable CSV ({exc})") from None
    missing = [c for c in ("image", "patient_id") if c not in df.columns]
    if missing:
        raise BadDatasetError(
            f"{p}: missing column(s) {', '.join(missing)}; expected image,patient_id[,side]"
        )
    out: dict[str, PatientInfo] = {}
    for i, row in enumerate(df.itertuples(index=False), start=2):
        img, pid = str(row.image).strip(), str(row.patient_id).strip()
        if not img or not pid:
            raise BadDatasetError(f"{p}: row {i}: image and patient_id must not be empty")
        side = _norm_side(getattr(row, "side", "") or "", f"{p}: row {i}")
        if img in out:
            raise BadDatasetError(f"{p}: row {i}: image {img!r} is listed twice")
        out[img] = PatientInfo(pid, side)
    return out


def _norm_side(s: str, where: str = "") -> str | None:
    t = str(s).strip().upper()
    if not t:
        return None
    if t in ("L", "LH", "LEFT"):
        return "L"
    if t in ("R", "RH", "RIGHT"):
        return "R"
    if t in ("B", "BOTH"):
        return "both"
    raise BadDatasetError(f"{where}: side {s!r} is not L or R")


def _lookup(mapping: Mapping[str, PatientInfo] | None, path: Path | str) -> PatientInfo | None:
    if not mapping:
        return None
    p = Path(str(path))
    for key in (str(p), str(p.resolve()) if p.exists() else None, p.name, p.stem):
        if key and key in mapping:
            return mapping[key]
    return None


# --------------------------------------------------------------------------- quality checks
def quality_warnings(rad: Any, x: np.ndarray) -> list[str]:
    """Heuristic warnings that an image may not be a usable PA hand radiograph.

    ``rad``: the decoded :class:`~svdh.core.io.Radiograph`; ``x``: the preprocessed uint8 model input.
    These are cheap image statistics, not a classifier: they flag inputs unlike the training data
    (tiny or extreme-aspect images, almost no contrast, a bright region far too small or filling
    the crop), not every wrong body part: a foot or an inverted film can pass unflagged.
    """
    from svdh.inference.gradcam import hand_mask

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
class _Item:
    name: str
    rad: Any = None
    x: np.ndarray | None = None
    display: np.ndarray | None = None
    error: str | None = None
    patient_id: str | None = None
    side: str | None = None
    warnings: list[str] = field(default_factory=list)


class Predictor:
    """Scores radiographs with a bundle (see the module docstring).

    ``bundle``: a :class:`Bundle` or a path to one. ``device``: ``cpu``, ``cuda``, ``auto``.
    ``backend``: ``torch`` or ``onnx`` (onnxruntime on the graph written by
    ``svdh export --onnx``; Grad-CAM always uses torch). ``folds``: use only these fold models of
    each member (default all). ``target_layer``/``cam_head``: Grad-CAM options. ``workers``:
    threads reading files ahead (default: none on a CPU, up to 4 beside a GPU).
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
        workers: int | None = None,
    ) -> None:
        from svdh.core.preprocess import PreprocessConfig

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if batch_size < 1:
            raise BadConfigError(f"--batch-size must be >= 1, got {batch_size}")
        if backend not in ("torch", "onnx"):
            raise BadConfigError(f"backend must be 'torch' or 'onnx', got {backend!r}")
        self.batch_size, self.backend = int(batch_size), backend
        self.preprocess_config = PreprocessConfig.from_dict(self.bundle.preprocess)
        self.bins: SeverityBins = self.bundle.bins
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
        self.names = [str(m.get("name", f"member{i}")) for i, m in enumerate(members)]
        self.target_layer, self.cam_head = target_layer, cam_head
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

    def forward_raw(self, x: np.ndarray) -> list[list[np.ndarray]]:
        """Raw outputs of every fold model in use for a uint8 batch ``B x S x S``:
        ``raw[member][j]`` (B x D float32)."""
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
        raws: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for member in self.models:
                raws.append([net(t).float().cpu().numpy() for net in member])
        return raws

    # ---------------------------------------------------------------- combining
    def combine(self, raws: list[list[np.ndarray]]) -> list[dict[str, Any]]:
        """Per-image predictions (numbers only) from the raw outputs of :meth:`forward_raw`."""
        from svdh.models.net import average_raw, predict_outputs

        bins = self.bins
        b = raws[0][0].shape[0]
        member_scores, member_probs, fold_scores = [], [], []
        ero, jsn = [], []
        member_cls = []
        for task, member in zip(self.tasks, raws, strict=True):
            avg = predict_outputs(task, average_raw(task, member), bins)
            member_scores.append(avg["score"])
            member_probs.append(avg["probs"] if task in ("classification", "ordinal") else None)
            member_cls.append(avg["severity_class"])
            if "erosion" in avg:
                ero.append(avg["erosion"])
                jsn.append(avg["jsn"])
            fold_scores.append(
                np.stack([predict_outputs(task, r, bins)["score"] for r in member], axis=1)
            )
        S = np.stack(member_scores, axis=1)  # B x m
        all_class = all(p is not None for p in member_probs)
        P = np.stack(member_probs, axis=1) if all_class else None  # B x m x K
        combine = self.bundle.combine
        meta = combine.get("meta_learner")
        if meta:
            from svdh.evaluate.ensemble import apply_meta

            score, probs = apply_meta(meta, S, P)
        else:
            score = np.clip(S.mean(axis=1), 0, bins.max_score)
            probs = P.mean(axis=1) if P is not None else None
        if len(self.tasks) == 1 and P is not None:
            cls = np.asarray(member_cls[0])  # the member's own rule (CORAL: thresholds passed)
        elif probs is not None:
            cls = probs.argmax(axis=1)
        else:
            cls = np.asarray(bins.to_class(score)).reshape(-1)
        if S.shape[1] > 1:
            spread = S.std(axis=1)
        else:
            spread = fold_scores[0].std(axis=1)  # one member: the spread of its fold models
        if self._conformal is not None:
            lo, hi = self._conformal.interval(score)
        else:
            lo = hi = None
        rows = []
        for i in range(b):
            row: dict[str, Any] = {
                "score": float(score[i]),
                "interval": [float(lo[i]), float(hi[i])] if lo is not None else None,
                "severity_class": int(cls[i]),
                "severity_label": bins.labels[int(cls[i])],
                "probs": [float(p) for p in probs[i]] if probs is not None else None,
                "erosion": float(np.mean([e[i] for e in ero])) if ero else None,
                "jsn": float(np.mean([j[i] for j in jsn])) if jsn else None,
                "member_spread": float(spread[i]),
                "member_scores": {n: float(S[i, j]) for j, n in enumerate(self.names)},
            }
            rows.append(row)
        return rows

    # ---------------------------------------------------------------- Grad-CAM
    @property
    def explainer(self) -> Any:
        if self._explainer is None:
            from svdh.inference.gradcam import Explainer

            models = self._load_torch()
            meta = self.bundle.combine.get("meta_learner") or {}
            coef = (meta.get("score") or {}).get("coef")
            self._explainer = Explainer(
                models,
                self.archs,
                names=self.names,
                weights=coef,
                target_layer=self.target_layer,
                head=self.cam_head,
                representative_scores=self.bins.representative_scores,
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

    # ---------------------------------------------------------------- streaming
    def _prepare(
        self, name: str, rad: Any, info: PatientInfo | None = None, display: bool = False
    ) -> _Item:
        from dataclasses import replace

        from svdh.core.preprocess import preprocess

        item = _Item(name=name, rad=rad)
        try:
            item.x = preprocess(rad, self.preprocess_config)
            item.warnings = quality_warnings(rad, item.x)
            if display:
                # the same crop at display resolution (the window does not depend on the size),
                # so heat maps line up with a sharp image instead of the small model input
                size = max(DISPLAY_SIZE, self.image_size)
                item.display = preprocess(rad, replace(self.preprocess_config, size=size))
        except SvdhError as exc:
            item.error = str(exc)
            return item
        meta = getattr(rad, "meta", {}) or {}
        pid = meta.get("patient_id") or None
        side = _norm_side_soft(meta.get("laterality"))
        m = _SIDE_NAME.match(Path(name).stem)
        if m:
            pid = pid or m.group("pid")
            side = side or m.group("side").upper()
        if info is not None:
            pid = info.patient_id or pid
            side = info.side or side
        item.patient_id, item.side = (str(pid) if pid else None), side
        return item

    def _score_batch(self, items: list[_Item], cam: bool) -> Iterator[dict[str, Any]]:
        ok = [it for it in items if it.error is None and it.x is not None]
        results: dict[int, dict[str, Any]] = {}
        if ok:
            x = np.stack([it.x for it in ok])
            rows = self.combine(self.forward_raw(x))
            cams = self.cam(x) if cam else None
            for j, (it, row) in enumerate(zip(ok, rows, strict=True)):
                if row["interval"] is not None and row["member_spread"] > 0.5 * (
                    row["interval"][1] - row["interval"][0]
                ):
                    it.warnings.append(
                        f"models disagree: spread {row['member_spread']:.1f} exceeds half the interval width"
                    )
                if cams is not None:
                    row["cam"] = cams.ensemble[j]
                    row["cam_members"] = cams.members[:, j]
                    row["cam_member_names"] = cams.member_names
                    row["preprocessed"] = it.x
                    row["display"] = it.display if it.display is not None else it.x
                results[id(it)] = row
        for it in items:
            base: dict[str, Any] = {"image": it.name, "patient_id": it.patient_id, "side": it.side}
            row = results.get(id(it))
            if row is None:
                base.update(_empty_row(it.error or "not scored"))
            else:
                base.update(row)
                base["warnings"] = list(it.warnings)
                base["error"] = None
            yield base

    def predict_images(
        self, items: Iterable[tuple[str, Any]], cam: bool = False
    ) -> Iterator[dict[str, Any]]:
        """The contract (docs/architecture.md): ``(name, Radiograph)`` pairs in, one dict per
        image out, in order. An item whose radiograph is an exception (or None) yields an error row."""
        batch: list[_Item] = []
        for name, rad in items:
            if rad is None or isinstance(rad, BaseException):
                batch.append(
                    _Item(name=name, error=str(rad) if rad is not None else "could not be read")
                )
            else:
                batch.append(self._prepare(name, rad, display=cam))
            if sum(1 for it in batch if it.error is None) >= self.batch_size:
                yield from self._score_batch(batch, cam)
                batch = []
        if batch:
            yield from self._score_batch(batch, cam)

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        *,
        patients: Mapping[str, PatientInfo] | None = None,
        cam: bool = False,
        max_pixels: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Read, preprocess and score files, streaming: a bounded number of files is read
        ahead in worker threads while the previous batch runs through the models."""
        from svdh.core.io import read_radiograph

        def load(p: Path) -> _Item:
            name = str(p)
            try:
                rad = read_radiograph(p, max_pixels=max_pixels)
            except SvdhError as exc:
                return _Item(name=name, error=str(exc))
            except Exception as exc:  # a decoder bug must not stop the other images
                return _Item(
                    name=name, error=f"{name}: cannot be read ({type(exc).__name__}: {exc})"
                )
            item = self._prepare(name, rad, _lookup(patients, p), display=cam)
            item.rad = None  # keep only the small model input: memory stays flat
            return item

        ahead = 2 * self.batch_size
        batch: list[_Item] = []
        it = iter(paths)
        if self.workers == 0:
            futures_iter: Iterator[_Item] = (load(Path(p)) for p in it)
            for item in futures_iter:
                batch.append(item)
                if len(batch) >= self.batch_size:
                    yield from self._score_batch(batch, cam)
                    batch = []
        else:
            from collections import deque

            with ThreadPoolExecutor(self.workers, thread_name_prefix="svdh-read") as pool:
                queue: deque[Future[_Item]] = deque()
                for p in it:
                    queue.append(pool.submit(load, Path(p)))
                    if len(queue) >= ahead:
                        batch.append(queue.popleft().result())
                        if len(batch) >= self.batch_size:
                            yield from self._score_batch(batch, cam)
                            batch = []
                while queue:
                    batch.append(queue.popleft().result())
                    if len(batch) >= self.batch_size:
                        yield from self._score_batch(batch, cam)
                        batch = []
        if batch:
            yield from self._score_batch(batch, cam)


def _norm_side_soft(s: Any) -> str | None:
    try:
        return _norm_side(str(s)) if s else None
    except BadDatasetError:
        return None


def _empty_row(error: str) -> dict[str, Any]:
    return {
        "score": None,
        "interval": None,
        "severity_class": None,
        "severity_label": None,
        "probs": None,
        "erosion": None,
        "jsn": None,
        "member_spread": None,
        "member_scores": None,
        "warnings": [],
        "error": error,
    }


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


# --------------------------------------------------------------------------- patients
class _Hand(NamedTuple):
    image: str
    side: str | None
    score: float
    lo: float | None
    hi: float | None
    erosion: float | None
    jsn: float | None


class PatientTotals:
    """Collects per-hand scores and gives hands-and-wrists totals per patient.

    Only a small tuple per image with a patient id is kept (~0.3 KB), not the rows. A total
    needs exactly one left and one right hand image of a patient and a model that scores one
    hand per image; its interval is the sum of the two bounds (each hand's interval holds with
    probability >= level, so both hold together with >= 1 - 2(1 - level), 80% for 90% intervals,
    and usually close to level since the two hands' errors are positively correlated).
    """

    def __init__(self, hand_bins: SeverityBins, score_scope: str = "hand") -> None:
        self.scope = score_scope
        if hand_bins.max_score <= MAX_HAND:
            self.bins = SeverityBins.patient([2 * e for e in hand_bins.edges])
        else:
            self.bins = hand_bins
        self._rows: dict[str, list[_Hand]] = {}

    def add(self, row: Mapping[str, Any]) -> None:
        pid = row.get("patient_id")
        if not pid or row.get("error") or row.get("score") is None:
            return
        iv = row.get("interval") or (None, None)
        ero, jsn = row.get("erosion"), row.get("jsn")
        hand = _Hand(
            str(row.get("image")),
            row.get("side"),
            float(row["score"]),
            None if iv[0] is None else float(iv[0]),
            None if iv[1] is None else float(iv[1]),
            None if ero is None else float(ero),
            None if jsn is None else float(jsn),
        )
        self._rows.setdefault(str(pid), []).append(hand)

    def totals(self) -> list[dict[str, Any]]:
        out = []
        for pid, rows in self._rows.items():
            entry: dict[str, Any] = {
                "patient_id": pid,
                "images": [r.image for r in rows],
                "total": None,
                "interval": None,
                "severity_class": None,
                "severity_label": None,
                "erosion": None,
                "jsn": None,
                "note": "",
            }
            sides = [r.side for r in rows]
            if self.scope != "hand":
                entry["note"] = "the model scores both hands per image; see the image rows"
            elif sorted(s or "?" for s in sides) != ["L", "R"]:
                entry["note"] = (
                    f"{len(rows)} image(s) with sides {', '.join(s or '?' for s in sides)}; "
                    "a total needs one left and one right hand"
                )
            else:
                total = sum(r.score for r in rows)
                entry["total"] = float(total)
                if all(r.lo is not None and r.hi is not None for r in rows):
                    entry["interval"] = [
                        float(sum(r.lo for r in rows)),  # type: ignore[misc]
                        float(min(self.bins.max_score, sum(r.hi for r in rows))),
                    ]  # type: ignore[misc]
                k = int(self.bins.to_class(total))
                entry["severity_class"], entry["severity_label"] = k, self.bins.labels[k]
                if all(r.erosion is not None and r.jsn is not None for r in rows):
                    entry["erosion"] = float(sum(r.erosion for r in rows))  # type: ignore[misc]
                    entry["jsn"] = float(sum(r.jsn for r in rows))  # type: ignore[misc]
            out.append(entry)
        return out


# --------------------------------------------------------------------------- writing results
def flat_row(row: Mapping[str, Any], n_classes: int, member_names: Sequence[str]) -> dict[str, Any]:
    """One CSV row (plain columns) of a prediction."""
    iv = row.get("interval") or [None, None]
    probs = row.get("probs") or [None] * n_classes
    ms = row.get("member_scores") or {}
    out: dict[str, Any] = {
        "image": row.get("image"),
        "patient_id": row.get("patient_id") or "",
        "side": row.get("side") or "",
        "score": _r(row.get("score")),
        "interval_lo": _r(iv[0]),
        "interval_hi": _r(iv[1]),
        "severity_class": "" if row.get("severity_class") is None else row["severity_class"],
        "severity_label": row.get("severity_label") or "",
    }
    for k in range(n_classes):
        out[f"p_{k}"] = _r(probs[k], 4)
    out.update(
        {
            "erosion": _r(row.get("erosion")),
            "jsn": _r(row.get("jsn")),
            "member_spread": _r(row.get("member_spread")),
        }
    )
    for n in member_names:
        out[f"member_{n}"] = _r(ms.get(n))
    out["cam"] = row.get("cam_path") or ""
    out["warnings"] = "; ".join(row.get("warnings") or [])
    out["error"] = row.get("error") or ""
    return out


def json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-safe fields of a prediction (arrays such as heat maps left out)."""
    skip = {"cam", "cam_members", "cam_member_names", "preprocessed", "display"}
    return {k: v for k, v in row.items() if k not in skip}


def _r(v: Any, nd: int = 3) -> Any:
    if v is None:
        return ""
    return round(float(v), nd)


class ResultWriter:
    """Streams rows to ``out.csv`` (plus ``out_patients.csv``) or ``out.json`` as they come."""

    def __init__(
        self,
        path: str | Path,
        n_classes: int,
        member_names: Sequence[str],
        header: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.kind = "json" if self.path.suffix.lower() == ".json" else "csv"
        if self.path.suffix.lower() not in (".csv", ".json"):
            raise BadConfigError(f"-o {self.path}: write .csv or .json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.n_classes, self.member_names = n_classes, list(member_names)
        self._fh = open(self.path, "w", newline="")
        self._first = True
        if self.kind == "json":
            self._fh.write("{\n" + f'"model": {json.dumps(dict(header or {}))},\n"images": [\n')
            self._csv = None
        else:
            cols = list(flat_row({}, n_classes, member_names))
            self._csv = csv.DictWriter(self._fh, fieldnames=cols)
            self._csv.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow(flat_row(row, self.n_classes, self.member_names))
        else:
            self._fh.write(
                ("" if self._first else ",\n") + json.dumps(json_row(row), allow_nan=False)
            )
        self._first = False

    def close(self, patients: list[dict[str, Any]], summary: Mapping[str, Any]) -> list[Path]:
        written = [self.path]
        if self._csv is not None:
            self._fh.close()
            if patients:
                ppath = self.path.with_name(self.path.stem + "_patients.csv")
                with open(ppath, "w", newline="") as fh:
                    cols = [
                        "patient_id",
                        "total",
                        "interval_lo",
                        "interval_hi",
                        "severity_class",
                        "severity_label",
                        "erosion",
                        "jsn",
                        "images",
                        "note",
                    ]
                    wr = csv.DictWriter(fh, fieldnames=cols)
                    wr.writeheader()
                    for p in patients:
                        iv = p.get("interval") or [None, None]
                        wr.writerow(
                            {
                                "patient_id": p["patient_id"],
                                "total": _r(p["total"]),
                                "interval_lo": _r(iv[0]),
                                "interval_hi": _r(iv[1]),
                                "severity_class": ""
                                if p["severity_class"] is None
                                else p["severity_class"],
                                "severity_label": p["severity_label"] or "",
                                "erosion": _r(p["erosion"]),
                                "jsn": _r(p["jsn"]),
                                "images": " ".join(p["images"]),
                                "note": p["note"],
                            }
                        )
                written.append(ppath)
        else:
            self._fh.write(
                "\n],\n"
                + f'"patients": {json.dumps(patients, allow_nan=False)},\n'
                + f'"summary": {json.dumps(dict(summary), allow_nan=False)}\n'
                + "}\n"
            )
            self._fh.close()
        return written


def run_prediction(
    predictor: Predictor,
    paths: Sequence[Path],
    *,
    out: str | Path | None = None,
    cam_dir: str | Path | None = None,
    patients: Mapping[str, PatientInfo] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score ``paths`` streaming into ``out`` (and Grad-CAM files into ``cam_dir``); returns a
    summary: ``n_images``, ``n_scored``, ``n_failed``, ``n_warned``, ``patients``, ``outputs``."""
    from svdh.inference.gradcam import write_cam

    bins = predictor.bins
    writer = (
        ResultWriter(out, bins.n_classes, predictor.names, predictor.bundle.summary())
        if out
        else None
    )
    totals = PatientTotals(bins, predictor.bundle.score_scope)
    n = n_failed = n_warned = 0
    stems: dict[str, int] = {}
    try:
        for row in predictor.predict_paths(paths, patients=patients, cam=cam_dir is not None):
            n += 1
            if row.get("error"):
                n_failed += 1
            elif row.get("warnings"):
                n_warned += 1
            if cam_dir is not None and row.get("cam") is not None:
                stem = Path(row["image"]).stem
                stems[stem] = stems.get(stem, 0) + 1
                if stems[stem] > 1:  # two files of one name in different folders
                    stem = f"{stem}_{stems[stem]}"
                title = f"{Path(row['image']).name}: {row['score']:.1f}"
                paths_written = write_cam(
                    cam_dir, stem, row["display"], _as_cam_result(row), 0, title
                )
                row["cam_path"] = paths_written["overlay"]
            totals.add(row)
            if writer is not None:
                writer.write(row)
            if on_row is not None:
                on_row(row)
        patient_rows = totals.totals()
        summary = {
            "n_images": n,
            "n_scored": n - n_failed,
            "n_failed": n_failed,
            "n_warned": n_warned,
            "n_patients_with_total": sum(p["total"] is not None for p in patient_rows),
        }
        outputs = writer.close(patient_rows, summary) if writer is not None else []
        writer = None
    finally:
        if writer is not None:
            writer.close([], {"n_images": n, "interrupted": True})
    summary["patients"] = patient_rows
    summary["outputs"] = [str(p) for p in outputs]
    return summary


def _as_cam_result(row: Mapping[str, Any]) -> Any:
    from svdh.inference.gradcam import CamResult

    return CamResult(
        members=np.asarray(row["cam_members"])[:, None],
        ensemble=np.asarray(row["cam"])[None],
        member_names=list(row["cam_member_names"]),
    )
