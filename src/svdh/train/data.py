"""Datasets over the preprocessed-image cache, and augmentation fit for radiographs.

Images come from the cache (``uint8 N x S x S``, memory-mapped); each sample becomes a
float tensor ``1 x S x S`` in [0, 1], the model's input contract. Augmentation runs on
tensors with ``torchvision.transforms.v2`` in the loader workers, only for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


class RandomGamma(torch.nn.Module):
    """Random gamma (exposure curve) on a [0, 1] tensor; torchvision has only the functional."""

    def __init__(self, gamma: tuple[float, float] = (0.8, 1.25)) -> None:
        super().__init__()
        self.lo, self.hi = np.log(gamma[0]), np.log(gamma[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = float(np.exp(torch.empty(1).uniform_(self.lo, self.hi).item()))
        return v2.functional.adjust_gamma(x, g)


class RandomStretch(torch.nn.Module):
    """Random aspect-ratio change of a ``C x H x W`` tensor: width times ``sqrt(a)``, height
    divided by it, ``a`` log-uniform in ``[1 / (1 + amount), 1 + amount]``, about the centre.

    A hand's proportions differ with the film and with how it was resized (a copy squashed to
    a square, a crop padded to one); this keeps the model from learning one of them."""

    def __init__(self, amount: float) -> None:
        super().__init__()
        self.log_hi = float(np.log1p(amount))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_hi <= 0:
            return x
        a = float(np.exp(torch.empty(1).uniform_(-self.log_hi, self.log_hi).item()))
        # affine_grid maps output to input coordinates: divide by the output scale
        theta = torch.tensor([[[a**-0.5, 0.0, 0.0], [0.0, a**0.5, 0.0]]], dtype=x.dtype)
        grid = torch.nn.functional.affine_grid(theta, [1, *x.shape], align_corners=False)
        out = torch.nn.functional.grid_sample(x[None], grid, align_corners=False)
        return out[0]


def radiograph_augmentation(
    strength: float = 1.0, *, flip: bool = True, stretch: float = 0.0
) -> v2.Compose:
    """Small rotation, scale and shift, left-right flip, brightness, contrast, gamma, noise.

    Ranges are those a re-positioned hand and another exposure give; a left-right flip turns
    a left hand into a right-hand-looking one, which carries the same score. ``flip=False``
    for canonical inputs (``PreprocessConfig.canonical``): every hand, in training and in
    prediction, is shown as a left-hand PA view, so a flipped one is a view the model never
    scores. ``strength`` scales every range (1: the ranges above); ``stretch``, when
    positive, adds a random aspect-ratio change of up to that fraction (:class:`RandomStretch`).
    """
    s = float(strength)
    steps: list[Any] = [v2.RandomHorizontalFlip()] if flip else []
    if stretch > 0:
        steps.append(RandomStretch(stretch))
    return v2.Compose(
        [
            *steps,
            v2.RandomAffine(
                degrees=10 * s, translate=(0.05 * s, 0.05 * s), scale=(1 - 0.1 * s, 1 + 0.1 * s)
            ),
            v2.ColorJitter(brightness=0.2 * s, contrast=0.2 * s),
            RandomGamma((1 - 0.2 * s, 1 + 0.25 * s)),
            v2.GaussianNoise(sigma=0.02 * s, clip=True),
        ]
    )


class LazyImages:
    """An ``N x S x S`` uint8 array given as an array or as a ``.npy`` path.

    A path is memory-mapped on first use in each process, so loader workers share the page
    cache instead of receiving a pickled copy of the whole array.
    """

    def __init__(self, images: np.ndarray | str | Path) -> None:
        self._array = (
            images if isinstance(images, np.ndarray) and not isinstance(images, np.memmap) else None
        )
        self.path = str(getattr(images, "filename", "") or images) if self._array is None else None
        self._mm: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is not None:
            return self._array
        if self._mm is None:
            self._mm = np.load(self.path, mmap_mode="r")
        return self._mm

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_mm"] = None
        return d

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


@dataclass
class Targets:
    """Per-sample targets, aligned with the dataset's rows."""

    y: np.ndarray | None = None  # float, N x n (score scale: total, or erosion+JSN; months)
    label: np.ndarray | None = None  # int class, N
    sex: np.ndarray | None = None  # float +1 male / -1 female / 0 unknown, N


class CacheDataset(Dataset):
    """Rows of the cache with their targets; yields dicts with ``x``, ``idx`` and targets.

    ``idx`` is the row's position in the run's manifest; validation gathers predictions by
    it, so duplicates from distributed-sampler padding can be dropped.
    """

    def __init__(
        self,
        images: LazyImages,
        cache_index: np.ndarray,
        row_index: np.ndarray,
        targets: Targets,
        augment: v2.Compose | None = None,
    ) -> None:
        self.images = images
        self.cache_index = np.asarray(cache_index, dtype=np.int64)
        self.row_index = np.asarray(row_index, dtype=np.int64)
        self.targets = targets
        self.augment = augment

    def __len__(self) -> int:
        return len(self.cache_index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = np.asarray(self.images.array[self.cache_index[i]])
        x = torch.from_numpy(img.astype(np.float32) / 255.0).unsqueeze(0)
        if self.augment is not None:
            x = self.augment(x)
        out: dict[str, torch.Tensor] = {"x": x, "idx": torch.tensor(self.row_index[i])}
        t = self.targets
        if t.y is not None:
            out["y"] = torch.as_tensor(t.y[i], dtype=torch.float32).reshape(-1)
        if t.label is not None:
            out["label"] = torch.tensor(int(t.label[i]), dtype=torch.long)
        if t.sex is not None:
            out["sex"] = torch.tensor(float(t.sex[i]), dtype=torch.float32)
        return out
