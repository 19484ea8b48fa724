"""Seeded image augmentation for the training input pipeline.

``Augment`` works on a batch ``(N, C, H, W)`` as a torch tensor or a numpy array and
returns the same kind. Every random draw comes from the augmenter's own generator, so
the same seed gives the same augmented batches, run after run.

>>> aug = Augment(rotation=10, crop=2, brightness=0.1, contrast=0.1, noise=0.05, seed=0)
>>> import numpy as np
>>> aug(np.zeros((2, 1, 8, 8), np.float32)).shape
(2, 1, 8, 8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from stratum.errors import DataError

T = TypeVar("T", torch.Tensor, np.ndarray)


@dataclass
class Augment:
    """Random rotation (degrees), crop (pixels of shift), brightness/contrast jitter
    (fractions) and gaussian noise (std, in input units); 0 turns a transform off."""

    rotation: float = 0.0
    crop: int = 0
    brightness: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0
    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if min(self.rotation, self.crop, self.brightness, self.contrast, self.noise) < 0:
            raise DataError("augmentation strengths must be >= 0")
        self._gen = torch.Generator().manual_seed(self.seed)

    def __call__(self, batch: T) -> T:
        if isinstance(batch, np.ndarray):
            return self.apply(self._check(torch.from_numpy(np.ascontiguousarray(batch))).float(),
                              ).numpy()
        x = self._check(batch)
        return self.apply(x.float()).to(x.dtype)

    @staticmethod
    def _check(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise DataError(f"augmentation needs images (N, C, H, W), got shape {list(x.shape)}")
        return x

    def _uniform(self, n: int, scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=self._gen) * 2 - 1) * scale

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.rotation:
            x = rotate(x, self._uniform(n, self.rotation))
        if self.crop:
            shifts = torch.randint(-self.crop, self.crop + 1, (n, 2), generator=self._gen)
            x = shift_crop(x, shifts, self.crop)
        if self.contrast:
            factor = (1 + self._uniform(n, self.contrast)).view(n, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor + mean
        if self.brightness:
            x = x + self._uniform(n, self.brightness).view(n, 1, 1, 1)
        if self.noise:
            x = x + torch.randn(x.shape, generator=self._gen) * self.noise
        return x


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its own angle about the centre (bilinear, zero fill)."""
    rad = degrees * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def shift_crop(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crop: zero-pad by ``pad`` and cut each image back at its own offset."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return out


__all__ = ["Augment", "rotate", "shift_crop"]
