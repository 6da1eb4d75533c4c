"""The training tasks: how to draw a batch, convert it to a model's units, and score the model.

A task turns data from `pipeline.training.data` into (input, target) batches in the model's own units:
- `SuperResolution`: LR -> HR patches, on Y in [0, 1] (1 channel) or RGB in [0, rgb_range] (3 channels).
- `Translation`: photo -> one of the styles of `pipeline.training.styles`, RGB in [-1, 1] (CycleGAN's convention).
- `FlatColumns`: a `Translation` whose loss also asks the linear interpreter's columns to vanish in flat areas.
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
    else). With `noise` > 0, Gaussian noise of that standard deviation ([-1, 1] units, drawn from the step's
    generator after the crops) is added to the inputs only: the target stays that of the clean crop, so the
    loss sees how much the output moves with small input changes that should not move it."""

    style: str
    patch: int = 96
    batch: int = 8
    photos: tuple[str, ...] = data.TRAIN_PHOTOS
    noise: float = 0.0

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
        x = self.to_model(x)
        if self.noise:
            x = x + torch.from_numpy(rng.normal(0, self.noise, x.shape).astype(np.float32))
        return x, self.to_model(y)

    def loss(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 in [-1, 1] units (pix2pix's reconstruction loss, without the adversarial term)."""
        return F.l1_loss(model(x), target)


def label_edges(target: torch.Tensor) -> torch.Tensor:
    """Boolean (N, H, W): pixels of a target (N, C, H, W) whose colour differs from a 4-neighbour's."""
    differs = torch.zeros(target.shape[0], *target.shape[2:], dtype=torch.bool)
    dy = (target.diff(dim=-2) != 0).any(1)
    dx = (target.diff(dim=-1) != 0).any(1)
    differs[:, 1:] |= dy
    differs[:, :-1] |= dy
    differs[:, :, 1:] |= dx
    differs[:, :, :-1] |= dx
    return differs


@dataclass(frozen=True)
class FlatColumns:
    """`base`'s batches and L1 loss, plus `weight` × the mean over probed crops of log(flat mass / edge mass).

    Masses are exact L1 masses of columns of the linear interpreter (`pipeline.interpreter`) at each crop, its
    state (ReLU masks, instance-norm statistics, tanh secant gains) frozen. Flat and edge pixels are those of
    the measured figure (`pipeline.geometry.flat_edge_classes`) on the model's own output at the crop,
    recomputed at every step; edge probes only where such an edge lies within `true_edges` pixels of one of
    the target's label edges (`label_edges`), so that an edge the model invents (along the crop's border, say)
    cannot lower the term by its own mass; no probe within `border` pixels of the crop's border (the figure
    samples interior pixels only). The first `crops` crops of a batch each get `probes` unit impulses (a
    random mix of the channels) at flat pixels, one per cell of a 2×2 grid of the crop so that their columns
    rarely overlap and the L1 of their sum is the sum of their L1s, and `probes` more at edge pixels.
    A scale-free term: it does not fall when every column shrinks, only when flat columns weaken or edge
    columns strengthen (against a fine-tune without it, i2i-label's mostly strengthen: docs/models.md).
    """

    base: Translation
    weight: float
    crops: int = 2
    probes: int = 4
    border: int = 8
    true_edges: int = 1

    def impulses(self, y0: np.ndarray, target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor | None:
        """(2, C, H, W) impulse sums at flat and at edge pixels of a model output y0 (C, H, W) whose target is
        `target` (C, H, W); None if a class has no pixel."""
        from pipeline.geometry import flat_edge_classes

        flat, edge = flat_edge_classes(y0, 1)
        c, h, w = y0.shape
        near = F.max_pool2d(label_edges(target[None]).float()[None], 2 * self.true_edges + 1, 1,
                            self.true_edges)[0, 0].numpy() > 0
        inside = np.zeros((h, w), dtype=bool)
        inside[self.border:h - self.border, self.border:w - self.border] = True
        v = torch.zeros(2, c, h, w)
        for k, where in enumerate((flat & inside, edge & near & inside)):
            cells = [(where[i:i + h // 2, j:j + w // 2], (i, j)) for i in (0, h // 2) for j in (0, w // 2)]
            usable = [(cell, corner) for cell, corner in cells if cell.any()]
            if not usable:
                return None
            for n in range(self.probes):
                cell, (i, j) = usable[n % len(usable)]
                ys, xs = np.nonzero(cell)
                pick = int(rng.integers(0, len(ys)))
                mix = rng.normal(size=c)
                v[k, :, i + ys[pick], j + xs[pick]] += torch.from_numpy(mix / np.linalg.norm(mix)).float()
        return v

    def draw(self, rng: np.random.Generator):
        """(x, (target, seeds)): `base`'s batch, and a seed for each probed crop's impulses."""
        x, y = self.base.draw(rng)
        return x, (y, [int(s) for s in rng.integers(0, 2**31, min(self.crops, len(y)))])

    def loss(self, model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
        from pipeline.interpreter import interpret

        y, seeds = target
        loss = self.base.loss(model, x, y)
        logs = []
        for i, seed in enumerate(seeds):
            interpreter = interpret(model, x[i:i + 1])
            v = self.impulses(interpreter.output[0].numpy(), y[i], np.random.default_rng(seed))
            if v is not None:
                mass = interpreter.forward(v, differentiable=True).abs().sum(dim=(1, 2, 3))
                logs.append(torch.log(mass[0] / mass[1]))
        return loss + self.weight * torch.stack(logs).mean() if logs else loss


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
