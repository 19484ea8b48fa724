"""Seeded image augmentation for the training input pipeline.

``Augment`` works on a batch ``(N, C, H, W)`` as a torch tensor or a numpy array and
returns the same kind. Every random draw comes from the augmenter's own generator, so
the same seed gives the same augmented batches, run after run; ``reseed(*key)`` puts it
at a position named by numbers (the training loop uses seed, epoch, step and rank), so a
run resumed from a checkpoint draws exactly what the uninterrupted run would have.

Rotation and crop fill the uncovered pixels with each image's minimum: inputs are
standardised, so the background is not 0.

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

    @classmethod
    def from_config(cls, strengths: dict[str, float], seed: int = 0) -> Augment:
        """From a training config's ``augment: {rotate: 15, crop: 2, ...}``."""
        s = strengths
        return cls(rotation=float(s.get("rotate", 0)), crop=int(s.get("crop", 0)),
                   brightness=float(s.get("brightness", 0)),
                   contrast=float(s.get("contrast", 0)), noise=float(s.get("noise", 0)),
                   seed=seed)

    def reseed(self, *key: int) -> None:
        """Restart the random draws at the position ``(seed, *key)``."""
        h = self.seed
        for k in key:
            h = (h * 1_000_003 + k) % (2**63 - 1)
        self._gen.manual_seed(h)

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

    def _uniform(self, n: int, scale: float, device: torch.device) -> torch.Tensor:
        # drawn on the CPU generator, so a GPU run draws the same numbers as a CPU run
        return ((torch.rand(n, generator=self._gen) * 2 - 1) * scale).to(device)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        if self.rotation or self.crop:
            floor = x.amin(dim=(1, 2, 3), keepdim=True)  # each image's background
            x = x - floor
            if self.rotation:
                x = rotate(x, self._uniform(n, self.rotation, dev))
            if self.crop:
                shifts = torch.randint(-self.crop, self.crop + 1, (n, 2), generator=self._gen)
                x = shift_crop(x, shifts, self.crop)
            x = x + floor
        if self.contrast:
            factor = (1 + self._uniform(n, self.contrast, dev)).view(n, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor + mean
        if self.brightness:
            x = x + self._uniform(n, self.brightness, dev).view(n, 1, 1, 1)
        if self.noise:
            x = x + torch.randn(x.shape, generator=self._gen).to(dev) * self.noise
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
