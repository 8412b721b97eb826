"""One-file model bundles (``.svdh``): every member's weights plus everything needed to score.

A bundle is a plain `safetensors <https://huggingface.co/docs/safetensors>`_ file. Its tensors are
the state dicts of every model of every ensemble member, named ``m{i}.f{k}.{parameter}`` (member
``i``, fold model ``k``). Its string metadata holds:

``format``          ``"svdh-bundle"``
``format_version``  an integer; this code reads versions up to :data:`FORMAT_VERSION`
``manifest``        JSON: members' architectures, preprocessing, task, class bins, the way members
                    are combined (meta-learner), conformal quantiles, model card (see
                    :func:`save_bundle`)
``sha256``          SHA-256 over the manifest and every tensor's name, dtype, shape and bytes

Loading parses JSON and raw tensor bytes only, so it never executes code from the file (no
pickle anywhere). Any byte flipped, a truncated file, or a manifest from a newer format raises
:class:`~svdh.core.errors.BadBundleError` with a message saying what is wrong and what to do.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from svdh import __version__
from svdh.core.errors import BadBundleError, BadConfigError
from svdh.core.files import atomic_path, atomic_write_with, plain
from svdh.core.preprocess import PreprocessConfig
from svdh.core.scoring import SeverityBins
from svdh.core.tasks import Task
from svdh.inference import signing
from svdh.inference.bundle_schema import validate_header, validate_manifest
from svdh.runs.layout import RunDir

FORMAT = "svdh-bundle"
#: Bump when a reader of the previous version could misread a new bundle.
FORMAT_VERSION = 1
SUFFIX = ".svdh"


@dataclass
class Member:
    """One ensemble member (one training run): its architecture and its fold models' weights.

    ``arch`` holds the keyword arguments that rebuild the network with
    :func:`svdh.models.build_model` (``backbone``, ``task``, ``n_classes``, ``extra_heads``...).
    ``state_dicts`` has one state dict per fold model; a member's prediction is the mean over them.
    """

    name: str
    arch: dict[str, Any]
    state_dicts: Sequence[Mapping[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return str(self.arch.get("task", "regression"))


@dataclass
class Bundle:
    """A loaded bundle: the manifest (plain JSON data) and the tensors of every fold model."""

    manifest: dict[str, Any]
    tensors: dict[str, Any]
    path: Path | None = None
    sha256: str = ""
    #: one line: unsigned, signed but not verified, or verified by a trusted key
    signature_status: str = ""

    # ---------------------------------------------------------------- manifest views
    @property
    def members(self) -> list[dict[str, Any]]:
        return list(self.manifest["members"])

    @property
    def task(self) -> str:
        """What the bundle predicts: ``regression`` (a score), ``classification``, ``ordinal``
        or ``boneage`` (months)."""
        return str(self.manifest["task"])

    @property
    def bins(self) -> SeverityBins | None:
        """The severity classes of an SvdH bundle; None for a bone-age bundle (months)."""
        b = self.manifest.get("bins")
        return SeverityBins.from_dict(b) if b else None

    @property
    def score_scope(self) -> str:
        """``hand`` (one hand per image, 0-140) or ``patient`` (both hands in one image, 0-280)."""
        return str(self.manifest.get("score_scope", "hand"))

    @property
    def preprocess(self) -> dict[str, Any]:
        """The preprocessing settings (``PreprocessConfig.from_dict`` reads them)."""
        return PreprocessConfig.stored(self.manifest)

    @property
    def image_size(self) -> int:
        return int(self.preprocess["size"])

    @property
    def combine(self) -> dict[str, Any]:
        return dict(self.manifest.get("combine") or {"method": "mean"})

    @property
    def conformal(self) -> dict[str, Any] | None:
        c = self.manifest.get("conformal")
        return dict(c) if c else None

    @property
    def change(self) -> dict[str, Any] | None:
        """Change calibration (:class:`svdh.evaluate.change.ChangeCalibration` as a dict, with
        the model's SDC), where the run had visit pairs; else None."""
        c = self.manifest.get("change")
        return dict(c) if c else None

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.manifest.get("card") or {})

    @property
    def has_subscores(self) -> bool:
        """True when every member predicts erosion and JSN beside the total."""
        return all(bool(m["arch"].get("extra_heads")) for m in self.members)

    # ---------------------------------------------------------------- weights
    def state_dict(self, member: int, fold: int) -> dict[str, Any]:
        """The state dict of fold model ``fold`` of member ``member``."""
        prefix = f"m{member}.f{fold}."
        sd = {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        if not sd:
            raise BadBundleError(
                f"{self._where()}: no weights for member {member} fold model {fold}"
            )
        return sd

    def build_models(
        self,
        device: str | Any = "cpu",
        factory: Callable[..., Any] | None = None,
    ) -> list[list[Any]]:
        """Rebuild every fold model of every member in eval mode: ``models[member][fold]``.

        ``factory(**arch)`` builds an untrained network (default
        :func:`svdh.models.net.model_from_config`, i.e. ``SvdhNet`` from its ``config``); the bundle's weights are then loaded strictly, so an
        architecture that does not match its weights is a :class:`BadBundleError`.
        """
        from svdh.models.weights import WeightsMismatch, rebuild_model

        build = (lambda arch: factory(**arch)) if factory is not None else None
        out: list[list[Any]] = []
        for i, m in enumerate(self.members):
            models = []
            for k in range(int(m["n_models"])):
                try:
                    net = rebuild_model(m["arch"], self.state_dict(i, k), build=build)
                except WeightsMismatch as exc:
                    first = str(exc)
                    raise BadBundleError(
                        f"{self._where()}: member {m.get('name', i)!r} fold model {k} does not match "
                        f"its architecture {m['arch']} ({first}); re-export it with this svdh version"
                    ) from None
                net.eval()
                models.append(net.to(device))
            out.append(models)
        return out

    def _where(self) -> str:
        return str(self.path) if self.path else "bundle"

    def summary(self) -> dict[str, Any]:
        """A short description for logs, the web page and ``GET /api/v1/model``."""
        return {
            "format_version": self.manifest.get("format_version"),
            "sha256": self.sha256,
            "kind": self.manifest.get("kind"),
            "task": self.task,
            "unit": "months" if self.task == "boneage" else "SvdH score",
            "score_scope": self.score_scope,
            "image_size": self.image_size,
            "members": [
                {
                    "name": m.get("name"),
                    "backbone": m["arch"].get("backbone"),
                    "task": m["arch"].get("task"),
                    "n_models": m["n_models"],
                }
                for m in self.members
            ],
            "combine": self.combine.get("method"),
            "conformal": self.conformal,
            "bins": self.manifest.get("bins"),
            "card": self.card,
        }


# --------------------------------------------------------------------------- hashing
def _tensor_bytes(t: Any) -> memoryview:
    """Raw little-endian bytes of a tensor (any dtype, bf16 included) without copying twice."""
    import torch

    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.dtype == torch.uint8:
        return memoryview(flat.numpy())
    return memoryview(flat.view(torch.uint8).numpy())


def _digest(manifest_json: str, tensors: Mapping[str, Any]) -> str:
    """SHA-256 over the manifest and, in sorted name order, each tensor's name, dtype, shape, bytes."""
    h = hashlib.sha256()
    h.update(b"svdh-bundle\0")
    h.update(manifest_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(b"\0" + name.encode("utf-8") + b"\0")
        h.update(f"{str(t.dtype)}{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"svdh": __version__, "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "numpy", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover - always installed with svdh
            pass
    return out


# --------------------------------------------------------------------------- save
def _tensors(members: Sequence[Member]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every fold model's tensors under ``m{i}.f{k}.{name}``, and the members' manifest entries."""
    import torch

    if not members:
        raise BadBundleError("a bundle needs at least one member model")
    tensors: dict[str, torch.Tensor] = {}
    member_entries = []
    for i, m in enumerate(members):
        if not m.state_dicts:
            raise BadBundleError(f"member {m.name!r} has no fold models to export")
        for k, sd in enumerate(m.state_dicts):
            for name, value in sd.items():
                if not isinstance(value, torch.Tensor):
                    continue
                # clone: safetensors refuses tensors that share storage (tied weights, views)
                tensors[f"m{i}.f{k}.{name}"] = value.detach().cpu().contiguous().clone()
        member_entries.append(
            {
                "name": m.name,
                "arch": plain(dict(m.arch)),
                "n_models": len(m.state_dicts),
                "info": plain(dict(m.info)),
            }
        )
    return tensors, member_entries


def save_bundle(
    path: str | Path,
    members: Sequence[Member],
    *,
    task: str,
    bins: SeverityBins | None,
    preprocess: Mapping[str, Any],
    image_size: int | None = None,
    score_scope: str = "hand",
    combine: Mapping[str, Any] | None = None,
    conformal: Mapping[str, Any] | None = None,
    card: Mapping[str, Any] | None = None,
    kind: str = "run",
    extra: Mapping[str, Any] | None = None,
    sign_key: str | Path | None = None,
) -> Path:
    """Write a bundle file and return its path; with ``sign_key`` (a private key of
    ``svdh keygen``) sign it (:mod:`svdh.inference.signing`).

    ``combine`` says how member predictions become one: ``{"method": "mean"}`` or the ensemble's
    meta-learner (``{"method": "stacking", "meta_learner": {...}}``); ``conformal`` the interval
    quantiles (``{"level": 0.9, "quantile": q, ...}``); ``card`` the model card (training data,
    metrics...; versions and date are added here). ``extra`` adds further manifest keys
    (e.g. the ONNX companion file's name and hash). ``preprocess`` holds the input size
    (``image_size``, when given, must agree with it or fills it in).
    """
    from safetensors.torch import save_file

    pp = dict(preprocess)
    if image_size is not None and pp.setdefault("size", int(image_size)) != int(image_size):
        raise BadBundleError(f"image_size {image_size} differs from preprocess size {pp['size']}")
    tensors, member_entries = _tensors(members)
    card_d = dict(card or {})
    card_d.setdefault("created", _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    card_d.setdefault("versions", _versions())
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "task": task,
        "score_scope": score_scope,
        "bins": bins.to_dict() if bins is not None else None,
        "preprocess": plain(pp),
        "members": member_entries,
        "combine": plain(dict(combine or {"method": "mean"})),
        "conformal": plain(dict(conformal)) if conformal else None,
        "card": plain(card_d),
        **plain(dict(extra or {})),
    }
    manifest_json = json.dumps(manifest, sort_keys=True, allow_nan=False)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "manifest": manifest_json,
        "sha256": _digest(manifest_json, tensors),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    if sign_key is not None:
        metadata.update(signing.sign(signing.load_private_key(sign_key), metadata["sha256"]))

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as exc:  # safetensors' SafetensorError wraps the OS error as text
            if "No space left" in str(exc) or "os error 28" in str(exc):
                raise OSError(errno.ENOSPC, "No space left on device") from None
            raise
        _default_mode(tmp)

    return atomic_write_with(path, write)  # a reader never sees a half-written bundle


def _default_mode(path: Path) -> None:
    """Give a written file the permissions of an ordinary new file (safetensors writes 0600)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# --------------------------------------------------------------------------- load
def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a bundle without loading or verifying its weights (fast; for listings)."""
    meta = _read_metadata(Path(path))
    return _parse_manifest(Path(path), meta)


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.exists():
        raise BadBundleError(
            f"{path}: no such model bundle; make one with `svdh export RUN -o {path.name}`"
        )
    if path.is_dir():
        raise BadBundleError(
            f"{path} is a directory; pass a .svdh bundle file (make one with `svdh export {path} -o model.svdh`)"
        )
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadBundleError(
                f"{path}: file is empty or truncated ({size} bytes); not an svdh bundle"
            )
        n = int.from_bytes(head, "little")
        if n <= 1 or n > min(size - 8, 100 * 2**20):
            raise BadBundleError(
                f"{path}: not an svdh bundle (no valid safetensors header; truncated or another file "
                "type). Export one with `svdh export`"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadBundleError(
            f"{path}: bundle header is corrupt (not valid JSON); re-export or re-copy the file"
        ) from None
    entries = validate_header(str(path), header)  # every tensor entry and the metadata typed
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BadBundleError(
            f"{path}: a safetensors file but not an svdh bundle (no svdh manifest); export one with `svdh export`"
        )
    # the data section must be as long as the header promises: catches truncation early
    end = max((e.data_offsets[1] for e in entries.values()), default=0)
    if 8 + n + end != size:
        raise BadBundleError(
            f"{path}: bundle is truncated or has trailing bytes ({size} bytes, expected {8 + n + end}); "
            "re-copy or re-export it"
        )
    return meta


def _parse_manifest(path: Path, meta: Mapping[str, str]) -> dict[str, Any]:
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise BadBundleError(
            f"{path}: bundle format version {meta.get('format_version')!r} is not a number"
        ) from None
    if version > FORMAT_VERSION:
        raise BadBundleError(
            f"{path}: bundle format version {version} is newer than this svdh ({__version__}) reads "
            f"(<= {FORMAT_VERSION}); upgrade svdh to load it"
        )
    if version < 1:
        raise BadBundleError(
            f"{path}: bundle format version {version} is not supported; re-export it"
        )
    try:
        manifest = json.loads(meta["manifest"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise BadBundleError(
            f"{path}: bundle manifest is missing or corrupt; re-export the model"
        ) from None
    validate_manifest(str(path), manifest)  # one schema: crafted manifests refused in one line
    if int(manifest["format_version"]) != version:
        raise BadBundleError(
            f"{path}: bundle manifest does not match its header; the file was tampered with"
        )
    for key in ("members", "task", "bins"):
        if key not in manifest:
            raise BadBundleError(
                f"{path}: bundle manifest lacks {key!r}; re-export the model with svdh export"
            )
    try:
        PreprocessConfig.stored(manifest)  # bundles of 0.1 also kept a separate image_size
    except BadConfigError as exc:
        raise BadBundleError(f"{path}: bundle manifest: {exc}") from None
    return manifest


def load_bundle(
    path: str | Path, verify: bool = True, trusted_keys: Mapping[str, Any] | None = None
) -> Bundle:
    """Load and verify a bundle. Only JSON and raw tensors are read: no code runs from the file.

    Raises :class:`BadBundleError` for a missing, truncated, corrupt (checksum mismatch),
    malformed (schema) or newer-format file. With ``trusted_keys``
    (:func:`svdh.inference.signing.load_public_keys`), also for an unsigned bundle or one whose
    signature is not by a trusted key over its contents (tampering); the outcome is kept in
    ``Bundle.signature_status`` either way.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = _read_metadata(path)
    manifest = _parse_manifest(path, meta)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BadBundleError(
            f"{path}: bundle weights cannot be read ({str(exc)[:120]}); re-copy or re-export it"
        ) from None
    digest = _digest(meta["manifest"], tensors)
    if verify and digest != meta.get("sha256"):
        raise BadBundleError(
            f"{path}: bundle checksum mismatch (SHA-256 of weights and manifest differs from the one "
            "stored): the file is corrupt or was modified; re-copy or re-export it"
        )
    n_expected = sum(int(m["n_models"]) for m in manifest["members"])
    found = {tuple(k.split(".", 2)[:2]) for k in tensors}
    if len(found) != n_expected:
        raise BadBundleError(
            f"{path}: bundle holds weights of {len(found)} models, its manifest lists {n_expected}"
        )
    status = signing.check(str(path), meta, digest, trusted_keys)
    return Bundle(
        manifest=manifest, tensors=tensors, path=path, sha256=digest, signature_status=status
    )


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a whole file, read in chunks (for companion files such as the ONNX graph)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- export from runs
def _member_weights(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """State dicts of every fold model of a run (each fold's ``best.safetensors``) and the
    architecture stored with them (``SvdhNet.config``)."""
    from svdh.core.errors import BadRunError
    from svdh.models.net import read_weights_file

    files = [f.weights for f in RunDir(run_dir).weight_folds()]
    if not files:
        raise BadRunError(
            f"{run_dir}: no fold weights (fold_k/best.safetensors); is it a finished `svdh train` "
            "run? (rerun `svdh train ... --resume` to finish it)"
        )
    states, arch = [], None
    for f in files:
        state, cfg = read_weights_file(f)
        if not cfg:
            raise BadRunError(
                f"{f}: weights without their model description (svdh_model metadata); retrain with this svdh"
            )
        if arch is not None and cfg != arch:
            raise BadRunError(
                f"{f}: architecture differs from the run's other folds ({cfg} vs {arch})"
            )
        arch = cfg
        states.append(state)
    assert arch is not None
    return states, dict(arch)


def _training_summary(run: Any) -> dict[str, Any]:
    """What the model card says about the training data (from the run's oof.csv and config)."""
    oof = run.oof
    y = oof["y_true"].to_numpy(dtype=float)
    out: dict[str, Any] = {
        "source": run.config.get("source") or run.config.get("data"),
        "n_images": int(len(oof)),
        "n_patients": int(oof["patient_id"].nunique()),
        "n_folds": int(oof["fold"].nunique()),
        "phantom": bool(run.is_phantom),
        "score_scope": run.score_scope,
        "score_distribution": {
            "mean": float(np.mean(y)),
            "median": float(np.median(y)),
            "p90": float(np.percentile(y, 90)),
            "max": float(np.max(y)),
            "fraction_zero": float(np.mean(y == 0)),
        },
    }
    if run.test is not None:
        out["n_test_images"] = int(len(run.test))
    return out


def _combination(
    src: Path, run: Any
) -> tuple[list[Path], list[str], dict[str, Any], dict[str, Any]]:
    """Member run directories, their names, how they combine and the conformal quantiles:
    an ensemble's (its meta-learner and conformal.json), or a run's (the mean of its fold
    models, calibrated on its out-of-fold residuals)."""
    from svdh.core.errors import BadRunError
    from svdh.evaluate.metrics import DEFAULT_ALPHA, ConformalModel

    rd = RunDir(src)
    if not run.is_ensemble:
        cm = ConformalModel.fit(
            run.oof["y_true"], run.oof["y_pred"], alpha=DEFAULT_ALPHA, bins=run.bins
        )
        conformal = cm.to_dict()
        conformal["calibration"] = f"out-of-fold residuals of the run ({rd.oof.name})"
        return [src], [run.name], {"method": "mean"}, conformal
    if not rd.meta_learner.is_file():
        raise BadRunError(f"{src}: ensemble without {rd.meta_learner.name}; rerun `svdh ensemble`")
    meta = json.loads(rd.meta_learner.read_text())
    member_dirs = [Path(m["path"]) for m in run.config.get("members", [])]
    names = [str(m.get("name", Path(m["path"]).name)) for m in run.config.get("members", [])]
    if not member_dirs:
        raise BadRunError(f"{rd.config} lists no members")
    if not run.conformal:
        raise BadRunError(f"{src}: ensemble without {rd.conformal.name}; rerun `svdh ensemble`")
    combine = {"method": meta.get("method", "stacking"), "meta_learner": meta}
    return member_dirs, names, combine, run.conformal


def _members(
    src: Path, run: Any, member_dirs: list[Path], names: list[str]
) -> tuple[list[Member], dict[str, Any]]:
    """Every member's weights and description, and the preprocessing they all share."""
    from svdh.core.errors import BadRunError
    from svdh.evaluate.metrics import headline
    from svdh.runs.tables import read_run

    members, preprocess = [], None
    for d, name in zip(member_dirs, names, strict=True):
        if not d.is_dir():
            raise BadRunError(
                f"{src}: member run {d} is missing; the ensemble needs its members' weights"
            )
        mrun = read_run(d) if d != src else run
        cfg = mrun.config
        try:
            pp = PreprocessConfig.stored(cfg)
        except BadConfigError:
            raise BadRunError(
                f"{RunDir(d).config} has no 'preprocess' settings; retrain with this svdh"
            ) from None
        if preprocess is not None and pp != preprocess:
            raise BadRunError(
                f"{d}: preprocessing differs from the other members ({pp} vs {preprocess}); "
                "members of one bundle must see identically prepared images"
            )
        preprocess = pp
        states, arch = _member_weights(d)
        info = {k: cfg.get(k) for k in ("backbone", "init", "scheme", "task", "seed")}
        info["image_size"] = int(pp["size"])
        if mrun.metrics:
            info["metrics"] = headline(mrun.metrics)
        members.append(Member(name=name, arch=arch, state_dicts=states, info=info))
    assert preprocess is not None
    return members, preprocess


def _card(src: Path, out: Path, run: Any) -> dict[str, Any]:
    """The model card: what the model was trained on, how well it did, what it is for."""
    from svdh.evaluate.metrics import headline

    card: dict[str, Any] = {
        "name": out.stem,
        "source_dir": str(src.resolve()),
        "kind": "ensemble" if run.is_ensemble else "run",
        "training_data": _training_summary(run),
        "metrics": headline(run.metrics) if run.metrics else None,
        "interval_coverage": ((run.metrics or {}).get("interval") or {}).get("coverage"),
        "intended_use": "research software, not a medical device; not validated for clinical decisions",
    }
    if run.is_phantom:
        card["warning"] = "trained on phantom (synthetic) radiographs: not a clinical model"
    return card


def export_bundle(
    src: str | Path, out: str | Path, onnx: bool = False, sign_key: str | Path | None = None
) -> Path:
    """Make a bundle from a run directory (``svdh train``) or an ensemble directory
    (``svdh ensemble``); with ``onnx`` also write the ONNX graph beside it (``out`` with suffix
    ``.onnx``), recorded with its hash in the manifest.

    A single run becomes a one-member bundle whose prediction is the mean of its fold models, and
    whose 90% interval is calibrated on its out-of-fold residuals (split conformal).
    """
    from svdh.core.errors import BadRunError
    from svdh.runs.tables import read_run

    src, out = Path(src), Path(out)
    run = read_run(src)
    bins = run.bins  # None for bone age (months, no severity classes)
    if run.task != Task.BONEAGE and bins is None:
        raise BadRunError(f"{src}: the run has no severity bins; retrain with this svdh")
    member_dirs, names, combine, conformal = _combination(src, run)
    members, preprocess = _members(src, run, member_dirs, names)
    kwargs: dict[str, Any] = dict(
        task=str(run.config.get("task")),
        bins=bins,
        preprocess=preprocess,
        image_size=int(preprocess["size"]),
        score_scope=run.score_scope,
        combine=combine,
        conformal=conformal,
        card=_card(src, out, run),
        kind="ensemble" if run.is_ensemble else "run",
    )
    extra: dict[str, Any] = {}
    from svdh.evaluate.change import run_calibration  # change between visits (issue 15)

    change = run_calibration(run)
    if change:
        extra["change"] = change
    if onnx and any(m.arch.get("use_sex") for m in members):
        raise BadRunError(
            f"{src}: --onnx is not offered for a bone-age model that takes the child's sex "
            "(the graph has one image input); export without --onnx"
        )
    if onnx:
        onnx_path = out.with_suffix(".onnx")
        export_onnx(
            members,
            onnx_path,
            image_size=kwargs["image_size"],
            doc={k: v for k, v in kwargs.items() if k not in ("bins",)}
            | {"bins": bins.to_dict() if bins is not None else None},
        )
        extra["onnx"] = {
            "file": onnx_path.name,
            "sha256": file_sha256(onnx_path),
            "inputs": {"image": "float32 B x 1 x S x S in [0, 1] (preprocessed)"},
            "outputs": "m{member}_f{fold}: raw model outputs, combined as in svdh.inference.predictor",
        }
    return save_bundle(out, members, extra=extra, sign_key=sign_key, **kwargs)


# --------------------------------------------------------------------------- ONNX
def export_onnx(
    members: Sequence[Member],
    path: str | Path,
    *,
    image_size: int,
    doc: Mapping[str, Any] | None = None,
    opset: int = 17,
    factory: Callable[[Mapping[str, Any]], Any] | None = None,
    check: bool = True,
) -> Path:
    """Write one ONNX graph holding every fold model of every member.

    Input ``image``: float32 ``B x 1 x S x S`` in [0, 1] (dynamic batch). Outputs
    ``m{i}_f{k}``: each fold model's raw ``forward`` output; :class:`svdh.inference.predictor.Predictor`
    combines them exactly as it does torch outputs. The manifest is stored in the graph's
    metadata. With ``check``, onnxruntime re-runs a random batch and the export is refused if any
    output differs from torch by more than 1e-3.
    """
    import torch

    from svdh.models.weights import rebuild_model

    nets, names = [], []
    for i, m in enumerate(members):
        for k, sd in enumerate(m.state_dicts):
            nets.append(rebuild_model(m.arch, sd, build=factory))
            names.append(f"m{i}_f{k}")

    class AllModels(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nets = torch.nn.ModuleList(nets)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(n(x) for n in self.nets)

    graph = AllModels().eval()
    x = torch.rand(2, 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _write_onnx(graph, names, tmp, x, opset, doc, check, image_size)
    return path


def _write_onnx(
    graph: Any,
    names: list[str],
    tmp: Path,
    x: Any,
    opset: int,
    doc: Mapping[str, Any] | None,
    check: bool,
    image_size: int,
) -> None:
    import warnings

    import torch

    axes = {"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings():
        # torch's TorchScript-based exporter is deprecated in favour of the dynamo one, which
        # needs the extra onnxscript package; the legacy path works from torch 2.4 on.
        warnings.simplefilter("ignore")
        kw: dict[str, Any] = dict(
            input_names=["image"], output_names=names, dynamic_axes=axes, opset_version=opset
        )
        try:
            torch.onnx.export(graph, (x,), str(tmp), dynamo=False, **kw)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(graph, (x,), str(tmp), **kw)
    import onnx

    model = onnx.load(str(tmp))
    entry = model.metadata_props.add()
    entry.key, entry.value = "svdh_manifest", json.dumps(plain(dict(doc or {})), sort_keys=True)
    onnx.save(model, str(tmp))
    if check:
        diff, scale = onnx_parity(
            graph,
            tmp,
            torch.rand(3, 1, image_size, image_size, generator=torch.Generator().manual_seed(1)),
        )
        # float32 rounding grows with the magnitude of the outputs (logits of an untrained model
        # can reach 1e4 on noise): allow 1e-3 absolute plus 1e-5 of the largest output
        if diff > 1e-3 + 1e-5 * scale:
            raise BadBundleError(
                f"ONNX export differs from torch by {diff:.2e} (outputs up to {scale:.3g}); not written"
            )


def onnx_parity(module: Any, onnx_path: str | Path, x: Any) -> tuple[float, float]:
    """Largest absolute difference between ``module(x)`` (torch) and onnxruntime on the graph,
    and the largest absolute torch output."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = module(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    outs = sess.run(None, {"image": x.numpy().astype(np.float32)})
    diff = max(
        float(np.max(np.abs(np.asarray(o) - r.numpy()))) for o, r in zip(outs, ref, strict=True)
    )
    return diff, max(float(np.max(np.abs(r.numpy()))) for r in ref)
