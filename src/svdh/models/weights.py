"""Rebuilding models from their states: the one way to turn stored weights into a network.

:func:`rebuild_model` builds ``SvdhNet`` from its architecture (``SvdhNet.config``) and loads a
state dict strictly; run directories (:func:`load_run`) and model bundles
(``svdh.inference.bundle.Bundle.build_models``) both go through it, so a mismatch between an
architecture and its weights reads the same everywhere. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from svdh.core.errors import BadRunError
from svdh.core.files import atomic_write_bytes, plain
from svdh.core.scoring import SeverityBins
from svdh.core.tasks import Task
from svdh.models.net import SvdhNet, model_from_config, read_weights_file
from svdh.runs.layout import RunDir


def save_weights(
    path: Path,
    state: Mapping[str, Any],
    arch: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """``best.safetensors``: the model's state dict plus its architecture as metadata
    (written atomically)."""
    from safetensors.torch import save

    meta = {
        "svdh_model": json.dumps(plain(dict(arch))),
        **{k: json.dumps(plain(v)) for k, v in (extra or {}).items()},
    }
    data = save({k: v.detach().contiguous().cpu() for k, v in state.items()}, metadata=meta)
    atomic_write_bytes(path, data)


class WeightsMismatch(ValueError):
    """A state dict that does not fit the architecture it is stored with (first line of the
    reason in the message); callers turn it into the error type of their file kind."""


def rebuild_model(
    arch: Mapping[str, Any],
    state: Mapping[str, Any],
    build: Callable[[Mapping[str, Any]], Any] | None = None,
) -> Any:
    """``SvdhNet`` of architecture ``arch`` (or ``build(arch)``'s network) with ``state``
    loaded strictly, in eval mode; :class:`WeightsMismatch` when they do not fit."""
    try:
        net = (build or model_from_config)(arch)
        net.load_state_dict(dict(state), strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsMismatch(first) from None
    return net.eval()


@dataclass
class RunInfo:
    """A training run: ``config`` (config.yaml), ``arch`` (``build_model`` arguments),
    ``folds`` (fold ids with weights), ``weights`` (their ``best.safetensors``) and
    ``models`` (the fold models in eval mode, when loaded)."""

    path: Path
    config: dict[str, Any]
    arch: dict[str, Any]
    folds: list[int]
    weights: list[Path]
    models: list[SvdhNet] = field(default_factory=list)

    @property
    def task(self) -> Task:
        return Task(self.config["task"])

    @property
    def bins(self) -> SeverityBins | None:
        b = self.config.get("bins")
        return SeverityBins.from_dict(b) if b else None

    @property
    def preprocess(self) -> dict[str, Any]:
        from svdh.core.preprocess import PreprocessConfig

        return PreprocessConfig.stored(self.config)

    @property
    def image_size(self) -> int:
        return int(self.preprocess["size"])

    def load_model(self, i: int, device: str = "cpu") -> SvdhNet:
        """Rebuild fold model ``i`` (index into ``folds``) from its safetensors weights."""
        state, _ = read_weights_file(self.weights[i])
        try:
            net = rebuild_model(self.arch, state)
        except WeightsMismatch as exc:
            raise BadRunError(
                f"{self.weights[i]}: weights do not match the run's architecture ({exc})"
            ) from None
        return net.to(device)


def load_run(run_dir: str | Path, device: str = "cpu", load_models: bool = True) -> RunInfo:
    """Read ``RUN/config.yaml`` and rebuild each finished fold's model from its
    ``best.safetensors`` (never unpickling anything)."""
    rd = RunDir(run_dir)
    cfg_path = rd.require_config("give a run directory written by `svdh train` or `svdh pretrain`")
    try:
        config = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise BadRunError(f"{cfg_path}: not valid YAML ({exc})") from None
    if not isinstance(config, dict) or "model" not in config:
        raise BadRunError(
            f"{cfg_path}: has no 'model' section; is this a training run (not an ensemble)?"
        )
    finished = rd.finished_folds()
    if not finished:
        raise BadRunError(
            f"{rd.path}: no finished fold (fold_k/best.safetensors with done.json); "
            "finish the run with `svdh train ... --resume`"
        )
    info = RunInfo(
        rd.path,
        config,
        dict(config["model"]),
        [f.k for f in finished],
        [f.weights for f in finished],
    )
    if load_models:
        info.models = [info.load_model(i, device) for i in range(len(finished))]
    return info
