"""Training runs (``svdh train``, ``svdh pretrain``): folds, Lightning, run directories.

``train_run(cfg, out)`` trains; ``load_run(run_dir)`` rebuilds a finished run's fold models.
Lightning is imported only when training starts, so ``load_run`` stays light.
"""

from svdh.train.config import TrainConfig
from svdh.train.load import RunInfo, load_run

__all__ = ["RunData", "RunInfo", "TrainConfig", "load_run", "train_run"]


def __getattr__(name: str):  # lazy: the training loop pulls in Lightning
    if name in ("train_run", "RunData"):
        from svdh.train import run

        return getattr(run, name)
    raise AttributeError(name)
