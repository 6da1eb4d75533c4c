"""The training tasks: how to draw a batch, convert it to a model's units, and score the model.

A task turns data from `pipeline.training.data` into (input, target) batches in the model's own units:
- `SuperResolution`: LR -> HR patches, on Y in [0, 1] (1 channel) or RGB in [0, rgb_range] (3 channels).
- `Translation`: photo -> one of the styles of `pipeline.training.styles`, RGB in [-1, 1] (CycleGAN's convention).
- `Digits`: (N, 1, 32, 32) images in [0, 1] (8×8 digits rendered by `render`) -> class indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training import data, render


@dataclass(frozen=True)
class SuperResolution:
    """LR -> HR patches of `photos`; `channels` 1 = Y in [0, 1], 3 = RGB in [0, rgb_range]."""

    scale: int
    channels: int
    rgb_range: float = 1.0
    patch: int = 32          # LR patch side, pixels
    batch: int = 16
    photos: tuple[str, ...] = data.TRAIN_PHOTOS
    #: weight of the edge term (0: none): the L1 distance between the horizontal and vertical differences of
    #: neighbouring pixels of output and target, which rewards edges as sharp as the target's
    edge_weight: float = 0.0

    def to_model(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB (N, 3, H, W) in [0, 1] -> the model's input/output units."""
        return data.luma(rgb) if self.channels == 1 else rgb * self.rgb_range

    def to_y(self, out: torch.Tensor) -> torch.Tensor:
        """A model output (or target) -> Y (N, 1, H, W) in [0, 1], clamped as a saved image would be."""
        y = out if self.channels == 1 else data.luma(out / self.rgb_range)
        return y.clamp(0, 1)

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [data.sr_pair(name, self.scale) for name in self.photos]
        lr, hr = data.random_crops(pairs, self.batch, self.patch, self.scale, rng)
        return self.to_model(lr), self.to_model(hr)

    def loss(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean absolute error in [0, 1] units (EDSR's L1 loss), plus ``edge_weight`` × that of the
        differences between neighbouring pixels."""
        scale = 1.0 if self.channels == 1 else self.rgb_range
        out = model(x)
        loss = F.l1_loss(out, target)
        if self.edge_weight:
            loss = loss + self.edge_weight * (F.l1_loss(out.diff(dim=-1), target.diff(dim=-1))
                                              + F.l1_loss(out.diff(dim=-2), target.diff(dim=-2)))
        return loss / scale


@dataclass(frozen=True)
class Translation:
    """Photo -> `styles.STYLES[style]` of that photo, RGB in [-1, 1] (CycleGAN's convention): random crops
    (with flips and turns) of `photos`, each crop's target made from the crop alone (the model sees nothing
    else)."""

    style: str
    patch: int = 96
    batch: int = 8
    photos: tuple[str, ...] = data.TRAIN_PHOTOS

    @staticmethod
    def to_model(rgb: torch.Tensor) -> torch.Tensor:
        return rgb * 2 - 1

    def target(self, photo: torch.Tensor) -> torch.Tensor:
        """The style of a photo (1, 3, H, W) in [0, 1] -> (1, 3, H, W) in [0, 1]."""
        from pipeline.training.styles import STYLES

        return data.to_tensor(STYLES[self.style](photo[0].permute(1, 2, 0).numpy().astype(np.float64)))

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        photos = [data.to_tensor(data.load_photo(name)) for name in self.photos]
        x, _ = data.random_crops([(p, p) for p in photos], self.batch, self.patch, 1, rng)
        y = torch.cat([self.target(crop[None]) for crop in x])
        return self.to_model(x), self.to_model(y)

    def loss(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 in [-1, 1] units (pix2pix's reconstruction loss, without the adversarial term)."""
        return F.l1_loss(model(x), target)


@dataclass(frozen=True)
class Digits:
    """scikit-learn digits, cross-entropy on the 10 logits.

    Batches of `batch` training images drawn without replacement; with `augment`, each 8×8 digit is rendered
    by `render.augment` (upsampling method, size, stroke thickness, rotation, shift, 8 bits, levels), else it
    is the bilinear 32×32 image of `data.digits_split`. With `validation`, only the training images outside
    `data.digits_validation_split`'s validation part are drawn (to choose settings without the test split).
    """

    batch: int = 64
    augment: bool = False
    validation: bool = False

    def images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 8×8 digits (N, 1, 8, 8) and labels this task trains on."""
        return data.digits_validation_split()[0] if self.validation else data.digits_8x8()[0]

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x8, y = self.images()
        idx = torch.from_numpy(rng.choice(len(y), size=self.batch, replace=False))
        if self.augment:
            return render.augment(x8[idx], rng), y[idx]
        return render.upsample(x8[idx], render.SIDE, "bilinear"), y[idx]

    def loss(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), target)
