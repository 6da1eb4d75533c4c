"""How each offline default model is trained: task, steps, learning rate, seed.

The architectures are the registry's (`pipeline.models.registry.spec(name).factory`); a recipe only adds the
training choices.
"""
from __future__ import annotations

from dataclasses import dataclass
from torch import nn

from pipeline.training import data
from pipeline.training.tasks import Digits, FlatColumns, SuperResolution, Translation


@dataclass(frozen=True)
class Stage:
    """`steps` Adam steps on `task` (one batch of `task.draw` each), the learning rate cosine-decayed from
    `lr` to 0; gradients clipped to norm `clip` (None: not clipped); a step whose loss is not finite is skipped."""

    task: object
    steps: int
    lr: float
    clip: float | None = None


@dataclass(frozen=True)
class Recipe:
    """Adam with a learning rate cosine-decayed from `lr` to 0 over `steps`, one batch of `task.draw` per
    step, from torch seed `seed`, then the `finetune` stage (if any) from the weights reached; the
    architecture is the registry's for `name`."""

    name: str
    task: object
    steps: int
    lr: float
    seed: int = 0
    finetune: Stage | None = None
    #: the held-out quality the model must reach: (metric of `evaluate`, minimum value).
    target: tuple[str, float] | None = None
    #: registry names (with their default weights) this model must beat on the metric of `target`.
    beats: tuple[str, ...] = ()

    def stages(self) -> list[Stage]:
        """The training stages, in order."""
        return [Stage(self.task, self.steps, self.lr), *([self.finetune] if self.finetune else [])]

    def make_model(self) -> nn.Module:
        """The untrained network (its family's own initialisation; seed torch before calling)."""
        from pipeline.models.registry import spec

        return spec(self.name).factory()


#: Training photos of i2i-paint and i2i-label: the photo models' own and OpenCV's colour photographs (their targets
#: map colours, and the other photos have few; i2i-woodcut keeps the photo models' own).
COLOUR_PHOTOS = data.TRAIN_PHOTOS + data.OPENCV_COLOUR_PHOTOS
#: i2i-label's task (noise of standard deviation 0.02 on its inputs, [-1, 1] units), and its fine-tune stage's
#: weight of the flat-column term and step count (docs/models.md).
LABEL_TASK, FLAT_WEIGHT, FLAT_STEPS = Translation("label", noise=0.02, photos=COLOUR_PHOTOS), 0.05, 1200

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("pixelshuffle-x4", SuperResolution(scale=4, channels=1, patch=32, batch=16,
                                              photos=data.SKIMAGE_TRAIN_PHOTOS), steps=3000, lr=1e-3,
           target=("gain", 0.3)),
    Recipe("edsr-small-x4", SuperResolution(scale=4, channels=3, rgb_range=255.0, patch=48, batch=8,
                                            edge_weight=4.0),
           steps=5000, lr=6e-4, target=("gain", 0.6), beats=("pixelshuffle-x4",)),
    Recipe("i2i-paint", Translation("paint", photos=COLOUR_PHOTOS), steps=5400, lr=5e-4, target=("reduction", 0.3)),
    Recipe("i2i-woodcut", Translation("woodcut"), steps=3000, lr=5e-4, target=("reduction", 0.3)),
    Recipe("i2i-label", LABEL_TASK, steps=3000, lr=5e-4, target=("reduction", 0.3),
           finetune=Stage(FlatColumns(LABEL_TASK, weight=FLAT_WEIGHT), steps=FLAT_STEPS, lr=5e-5, clip=1.0)),
    Recipe("digits-vgg", Digits(batch=64, augment=True), steps=2000, lr=1e-3, target=("worst", 0.97)),
    Recipe("digits-vgg-bn", Digits(batch=64, augment=True), steps=2000, lr=1e-3, target=("worst", 0.97)),
)}


def recipe(name: str) -> Recipe:
    """The recipe of a trainable default; ValueError naming the trainable ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"no training recipe for '{name}' (trainable: {', '.join(RECIPES)})") from None
