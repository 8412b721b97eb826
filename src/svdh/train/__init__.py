"""Training (``svdh train``, ``svdh pretrain``): folds, Lightning, run directories.

``train_run(cfg, out)`` trains (``svdh.train.loop``); ``load_run(run_dir)`` rebuilds a finished
run's fold models (``svdh.models.weights``). Lightning is imported only when training starts,
so ``load_run`` stays light.
"""

from svdh.models.weights import RunInfo, load_run
from svdh.train.config import TrainConfig

__all__ = ["RunData", "RunInfo", "TrainConfig", "load_run", "train_run"]


def __getattr__(name: str):  # lazy: the training loop pulls in Lightning
    if name in ("train_run", "RunData"):
        from svdh.train import loop

        return getattr(loop, name)
    raise AttributeError(name)
