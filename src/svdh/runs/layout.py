"""Where things are in a run, an ensemble and a study directory: the only code that spells
their file names.

A **run directory** (``svdh train``, ``svdh pretrain``) and an **ensemble directory**
(``svdh ensemble``) share one layout, :class:`RunDir`; an ensemble has no fold folders and adds
``meta_learner.json`` and ``conformal.json``::

    RUN/config.yaml  folds.csv  oof.csv  test.csv  metrics.json  logs/{csv,tensorboard}/fold_k/
    RUN/fold_k/best.ckpt  last.ckpt  best.safetensors  predictions.npz  done.json
    RUN/meta_learner.json  conformal.json  localisation.json  cam_gallery/*.png

A **study directory** (``svdh run EXPERIMENT.yaml``) is :class:`StudyDir`. Every writer goes
through :mod:`svdh.core.files` (temporary file, then rename).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from svdh.core.errors import BadRunError


@dataclass(frozen=True)
class FoldDir:
    """``RUN/fold_k/``: one fold model's checkpoints, weights and predictions."""

    path: Path
    k: int

    @property
    def best_ckpt(self) -> Path:
        return self.path / "best.ckpt"

    @property
    def last_ckpt(self) -> Path:
        return self.path / "last.ckpt"

    @property
    def ckpt_stem(self) -> str:
        """The file stem Lightning's ModelCheckpoint is given for the best checkpoint."""
        return self.best_ckpt.stem

    @property
    def resume_candidates(self) -> tuple[Path, ...]:
        """Checkpoints an unfinished fold may continue from, preferred first."""
        return (self.last_ckpt, self.best_ckpt)

    @property
    def weights(self) -> Path:
        """``best.safetensors``: the best epoch's state dict and architecture (no pickle)."""
        return self.path / "best.safetensors"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.npz"

    @property
    def done(self) -> Path:
        """Written last: the fold is finished."""
        return self.path / "done.json"

    @property
    def finished(self) -> bool:
        return self.done.exists() and self.weights.is_file()


FOLD_PREFIX = "fold_"


def fold_name(k: int) -> str:
    """``fold_k``: the folder of fold ``k`` and its log name."""
    return f"{FOLD_PREFIX}{k}"


@dataclass(frozen=True)
class RunDir:
    """A run or ensemble directory; ``RunDir(path).oof`` is ``path/oof.csv`` and so on."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # -- files of every run and ensemble
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def folds_csv(self) -> Path:
        return self.path / "folds.csv"

    @property
    def oof(self) -> Path:
        return self.path / "oof.csv"

    @property
    def test(self) -> Path:
        return self.path / "test.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def localisation(self) -> Path:
        return self.path / "localisation.json"

    @property
    def cam_gallery(self) -> Path:
        return self.path / "cam_gallery"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    # -- ensembles
    @property
    def meta_learner(self) -> Path:
        return self.path / "meta_learner.json"

    @property
    def conformal(self) -> Path:
        return self.path / "conformal.json"

    # -- folds
    def fold(self, k: int) -> FoldDir:
        return FoldDir(self.path / fold_name(k), int(k))

    def fold_dirs(self) -> list[FoldDir]:
        """Every ``fold_k`` folder present, by ``k``."""
        out = []
        for p in self.path.glob(f"{FOLD_PREFIX}*"):
            suffix = p.name[len(FOLD_PREFIX) :]
            if p.is_dir() and suffix.isdigit():
                out.append(FoldDir(p, int(suffix)))
        return sorted(out, key=lambda f: f.k)

    def weight_folds(self) -> list[FoldDir]:
        """Folds with ``best.safetensors`` (finished or not), by ``k``."""
        return [f for f in self.fold_dirs() if f.weights.is_file()]

    def finished_folds(self) -> list[FoldDir]:
        """Folds whose ``done.json`` says they finished, by ``k``."""
        return [f for f in self.fold_dirs() if f.finished]

    # -- states
    @property
    def is_started(self) -> bool:
        return self.config.exists()

    @property
    def is_trained(self) -> bool:
        """``svdh train`` finished: its tables and metrics exist."""
        return self.metrics.exists() and self.oof.exists()

    @property
    def is_ensembled(self) -> bool:
        """``svdh ensemble`` finished."""
        return self.meta_learner.exists() and self.metrics.exists()

    def require_config(self, hint: str) -> Path:
        if not self.config.is_file():
            raise BadRunError(f"{self.path}: no {self.config.name}; {hint}")
        return self.config


@dataclass(frozen=True)
class StudyDir:
    """The output folder of ``svdh run EXPERIMENT.yaml`` (and ``svdh demo``)::

    OUT/experiment.yaml  data/<name>/  pretrain/<backbone>/  members/<name>/  ensemble/
    OUT/model.svdh  report.html
    """

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def experiment(self) -> Path:
        return self.path / "experiment.yaml"

    def data(self, key: str) -> Path:
        return self.path / "data" / key

    @staticmethod
    def data_complete(folder: Path) -> Path:
        """Marker written once a generated cohort is complete."""
        return folder / ".complete"

    def pretrain(self, backbone: str) -> RunDir:
        return RunDir(self.path / "pretrain" / backbone)

    @property
    def members(self) -> Path:
        return self.path / "members"

    def member(self, name: str) -> RunDir:
        return RunDir(self.members / name)

    @property
    def ensemble(self) -> RunDir:
        return RunDir(self.path / "ensemble")

    @property
    def bundle(self) -> Path:
        return self.path / "model.svdh"

    @property
    def report(self) -> Path:
        return self.path / "report.html"
