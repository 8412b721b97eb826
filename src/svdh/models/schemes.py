"""Fine-tuning schemes over the backbone stages defined in ``svdh.models.backbones``.

* ``full``: every layer trains at the base learning rate.
* ``head``: the backbone is frozen; only the head trains.
* ``partial:K``: the last K backbone stages and the head train (``partial:0`` = ``head``).
* ``gradual``: the head trains first, then one more stage unfreezes, from the top down,
  every ``unfreeze_every`` epochs (ULMFiT-style gradual unfreezing).
* ``discriminative``: everything trains, stage ``i`` of ``S`` (0 = stem) at
  ``lr * decay ** (S - i)``; the head at ``lr`` (layer-wise learning-rate decay).

Frozen parameters get ``requires_grad = False`` (no gradients, no optimizer updates) and
their BatchNorm layers are held in eval mode, so running statistics learnt during
pretraining are not overwritten by a few batches of the new data.

Every parameter is in the optimizer from the start, one group per stage; freezing only
toggles gradients. That keeps the learning-rate schedule and the optimizer state
consistent across unfreezing and across ``--resume`` (Lightning's ``BaseFinetuning`` adds
groups on the fly, which a per-step scheduler built at the start does not cover).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from svdh.core.errors import BadConfigError
from svdh.models.backbones import stage_of

SCHEMES = ("full", "head", "partial:K", "gradual", "discriminative")


@dataclass(frozen=True)
class Scheme:
    kind: str  # full | head | partial | gradual | discriminative
    k: int = 0  # partial:K

    @classmethod
    def parse(cls, text: str) -> Scheme:
        t = (text or "full").strip().lower()
        if t in ("full", "head", "gradual", "discriminative"):
            return cls(t)
        if t.startswith("partial:"):
            try:
                k = int(t.split(":", 1)[1])
            except ValueError:
                k = -1
            if k < 0:
                raise BadConfigError(f"--scheme {text!r}: K in partial:K must be an integer >= 0")
            return cls("partial", k)
        raise BadConfigError(f"unknown --scheme {text!r}; choose one of: {', '.join(SCHEMES)}")

    def __str__(self) -> str:
        return f"partial:{self.k}" if self.kind == "partial" else self.kind

    @property
    def dynamic(self) -> bool:
        """Whether the set of trainable parameters changes during training."""
        return self.kind == "gradual"

    def trainable_stages(self, n_stages: int, epoch: int = 0, unfreeze_every: int = 1) -> set[int]:
        """Indices of the backbone stages that train in ``epoch`` (the head always trains)."""
        if self.kind in ("full", "discriminative"):
            return set(range(n_stages))
        if self.kind == "head":
            return set()
        if self.kind == "partial":
            k = min(self.k, n_stages)
            return set(range(n_stages - k, n_stages))
        n = min(n_stages, max(0, epoch) // max(1, unfreeze_every))
        return set(range(n_stages - n, n_stages))

    def stage_lr_factors(self, n_stages: int, decay: float = 0.5) -> list[float]:
        """Learning-rate multiplier per stage (stem first)."""
        if self.kind != "discriminative":
            return [1.0] * n_stages
        if not 0.0 < decay <= 1.0:
            raise BadConfigError(f"--lr-decay must be in (0, 1], got {decay}")
        return [decay ** (n_stages - i) for i in range(n_stages)]


def default_unfreeze_every(epochs: int, n_stages: int) -> int:
    """Spread gradual unfreezing so that every stage trains for the last part of the run."""
    return max(1, epochs // (n_stages + 1))


def stage_parameters(model: nn.Module) -> tuple[list[list[nn.Parameter]], list[nn.Parameter]]:
    """The parameters of each backbone stage and those of everything else (the head).

    Raises if a backbone parameter belongs to no stage: each family's stage list must
    cover its architecture completely (tested for every registered backbone).
    """
    spec = model.spec  # type: ignore[attr-defined]
    stages: list[list[nn.Parameter]] = [[] for _ in spec.stages]
    head: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            i = stage_of(spec, name.removeprefix("backbone."))
            if i is None:
                raise RuntimeError(f"backbone parameter {name} belongs to no stage of {spec.name}")
            stages[i].append(p)
        else:
            head.append(p)
    return stages, head


def param_groups(
    model: nn.Module, scheme: Scheme, lr: float, lr_decay: float = 0.5, weight_decay: float = 1e-4
) -> list[dict]:
    """Optimizer parameter groups: one per backbone stage (with its lr) plus the head."""
    stages, head = stage_parameters(model)
    factors = scheme.stage_lr_factors(len(stages), lr_decay)
    groups = [
        {"params": ps, "lr": lr * f, "weight_decay": weight_decay, "name": f"stage{i}"}
        for i, (ps, f) in enumerate(zip(stages, factors, strict=True))
        if ps
    ]
    groups.append({"params": head, "lr": lr, "weight_decay": weight_decay, "name": "head"})
    return groups


def apply_scheme(
    model: nn.Module, scheme: Scheme, epoch: int = 0, unfreeze_every: int = 1
) -> set[int]:
    """Set ``requires_grad`` per stage for ``epoch``; returns the trainable stage indices."""
    stages, head = stage_parameters(model)
    train = scheme.trainable_stages(len(stages), epoch, unfreeze_every)
    for i, ps in enumerate(stages):
        for p in ps:
            p.requires_grad_(i in train)
    for p in head:
        p.requires_grad_(True)
    return train


def hold_frozen_batchnorm(model: nn.Module) -> int:
    """Put BatchNorm layers whose parameters are all frozen into eval mode; returns how many.

    Call after ``model.train()`` (Lightning sets train mode at each epoch start).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()
                n += 1
    return n
