"""``load_run``: a finished run's configuration and its fold models, rebuilt without pickle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from svdh.core.errors import BadRunError
from svdh.core.scoring import SeverityBins
from svdh.models.net import SvdhNet, model_from_config, read_weights_file


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
    def task(self) -> str:
        return str(self.config["task"])

    @property
    def bins(self) -> SeverityBins | None:
        b = self.config.get("bins")
        return SeverityBins.from_dict(b) if b else None

    @property
    def preprocess(self) -> dict[str, Any]:
        return dict(self.config.get("preprocess") or {})

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    def load_model(self, i: int, device: str = "cpu") -> SvdhNet:
        """Rebuild fold model ``i`` (index into ``folds``) from its safetensors weights."""
        state, _ = read_weights_file(self.weights[i])
        net = model_from_config(self.arch)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise BadRunError(
                f"{self.weights[i]}: weights do not match the run's architecture ({first})"
            ) from None
        return net.eval().to(device)


def load_run(run_dir: str | Path, device: str = "cpu", load_models: bool = True) -> RunInfo:
    """Read ``RUN/config.yaml`` and rebuild each finished fold's model from
    ``fold_k/best.safetensors`` (never unpickling anything)."""
    d = Path(run_dir)
    cfg_path = d / "config.yaml"
    if not cfg_path.is_file():
        raise BadRunError(
            f"{d}: no config.yaml; give a run directory written by `svdh train` or `svdh pretrain`"
        )
    try:
        config = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise BadRunError(f"{cfg_path}: not valid YAML ({exc})") from None
    if not isinstance(config, dict) or "model" not in config:
        raise BadRunError(
            f"{cfg_path}: has no 'model' section; is this a training run (not an ensemble)?"
        )
    folds, weights = [], []
    for p in sorted(
        d.glob("fold_*/best.safetensors"), key=lambda q: int(q.parent.name.split("_")[1])
    ):
        if (p.parent / "done.json").exists():
            folds.append(int(p.parent.name.split("_")[1]))
            weights.append(p)
    if not folds:
        raise BadRunError(
            f"{d}: no finished fold (fold_k/best.safetensors with done.json); "
            "finish the run with `svdh train ... --resume`"
        )
    info = RunInfo(d, config, dict(config["model"]), folds, weights)
    if load_models:
        info.models = [info.load_model(i, device) for i in range(len(folds))]
    return info
