"""Learning-rate scaling across processes and the channels-last layout (issue 12, the recipe)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
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


def _datasets(n: int = 64, size: int = 32):
    from svdh.train.callbacks import FoldData
    from svdh.train.data import CacheDataset, LazyImages, Targets

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    t = Targets(y=rng.uniform(0, 140, (n, 1)))
    rows = np.arange(n)

    def brighter(x: torch.Tensor) -> torch.Tensor:  # an exposure augmentation, exaggerated
        return x * 3.0 + 1.0

    train = CacheDataset(LazyImages(images), rows, rows, t, augment=brighter)
    clean = CacheDataset(LazyImages(images), rows, rows, t)
    cfg = TrainConfig(batch_size=16, num_workers=0)
    return images, FoldData(train, clean, cfg, calib_ds=clean), FoldData(train, clean, cfg)


def test_precise_batchnorm_takes_statistics_of_the_images_as_validation_sees_them():
    """BatchNorm statistics are re-estimated on the training images without augmentation:
    statistics of augmented batches shift every eval-mode output (bone age: +15 months)."""
    import contextlib

    images, dm, dm_old = _datasets()
    clean = torch.cat([b["x"] for b in dm.calibration_dataloader()])
    assert torch.allclose(clean.mean(), torch.from_numpy(images).float().div(255).mean(), atol=0.02)
    assert dm_old.calibration_dataloader() is None  # without a clean copy: the training batches

    def stats(datamodule) -> torch.Tensor:
        torch.manual_seed(0)  # the same initial weights for both
        m = _module(precise_bn_batches=4)
        m._trainer = SimpleNamespace(
            datamodule=datamodule,
            train_dataloader=datamodule.train_dataloader(),
            precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
            world_size=1,
        )
        m._precise_batchnorm(4)
        bn = next(x for x in m.model.modules() if isinstance(x, torch.nn.BatchNorm2d))
        return bn.running_mean.clone()

    with_clean, with_augmented = stats(dm), stats(dm_old)
    # the first BatchNorm's mean follows the input's brightness: the augmented batches' is far off
    assert not torch.allclose(with_clean, with_augmented, atol=1e-3)
    state = torch.get_rng_state()
    list(dm.calibration_dataloader())
    assert torch.equal(state, torch.get_rng_state())  # the training's random stream is untouched
