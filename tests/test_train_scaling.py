"""Learning-rate scaling across processes and the channels-last layout (issue 12, the recipe)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from svdh.core.errors import BadConfigError
from svdh.models.net import build_model
from svdh.train.config import TrainConfig
from svdh.train.module import SvdhModule


def _module(**cfg) -> SvdhModule:
    model = build_model("mobilenet_v2_050", "regression")
    return SvdhModule(model, TrainConfig(**cfg).to_dict())


@pytest.mark.parametrize(
    ("scaling", "world", "factor"),
    [("sqrt", 1, 1.0), ("sqrt", 4, 2.0), ("linear", 4, 4.0), ("none", 8, 1.0)],
)
def test_lr_grows_with_the_processes_that_share_a_step(scaling, world, factor):
    m = _module(lr=1e-3, lr_scaling=scaling)
    m._trainer = SimpleNamespace(world_size=world)  # what Lightning attaches in fit
    assert math.isclose(m.effective_lr(), 1e-3 * factor)


def test_one_process_keeps_the_given_lr_without_a_trainer():
    assert math.isclose(_module(lr=3e-3).effective_lr(), 3e-3)


def test_unknown_lr_scaling_is_refused_by_name():
    with pytest.raises(BadConfigError, match="--lr-scaling"):
        TrainConfig(lr_scaling="cubic").validate()


def test_channels_last_batches_only_on_cuda():
    m = _module()
    x = torch.rand(2, 1, 32, 32)
    assert m._images({"x": x}) is x  # a CPU batch keeps the default layout
